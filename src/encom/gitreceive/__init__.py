"""encom gitreceive."""
