"""What every component shares: wire types, settings, auth, errors, SSE, HTTP client and server helpers."""
