"""The HTTP API (docs/api.md): FastAPI routes over the bridge. Signing itself is `mqttpush.signing`."""
