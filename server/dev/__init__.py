"""Development only: throwaway PostgreSQL and Redis, the demo page and its helper routes."""

from pathlib import Path

CLIENT_JS = Path(__file__).resolve().parent.parent.parent / "client_js"
"""The browser client and the demo pages that `dev` serves."""
