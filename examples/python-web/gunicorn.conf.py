"""Read by gunicorn from the app directory: one "Listening on" line once the workers accept connections."""

import os
from typing import Any


def when_ready(server: Any) -> None:
    server.log.info("Listening on %s", os.environ.get("PORT", "?"))
