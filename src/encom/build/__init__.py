"""encom build."""
