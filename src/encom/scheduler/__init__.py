"""encom scheduler."""
