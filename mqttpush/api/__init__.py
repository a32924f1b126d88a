"""The HTTP API (DESIGN §3.1): FastAPI routes and request signing."""
