"""Development only: throwaway PostgreSQL and Redis, the demo page and its helper routes."""
