"""encom router."""
