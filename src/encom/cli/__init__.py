"""encom cli."""
