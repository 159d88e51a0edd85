"""The operator console at /console: sign-in, session, and the page\x27s static files."""
