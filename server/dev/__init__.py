"""Development only: throwaway PostgreSQL and Redis, the demo page and its helper routes."""

from server import shipped

CLIENT_JS = shipped.path("client_js")
"""The browser client and the demo pages that `dev` serves."""
