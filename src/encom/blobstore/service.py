"""The blobstore role: blobs as files under the data dir, served over HTTP."""

from __future__ import annotations

from encom.api.role import RoleContext
from encom.api.server import embedded_server, run_server
from encom.blobstore.api import BlobDir, create_app


async def run(ctx: RoleContext) -> None:
    """Serve until cancelled; a PUT interrupted by cancellation leaves only its temp file, removed on the way out."""
    settings = ctx.settings
    app = create_app(BlobDir(settings.dir("blobstore")), settings.internal_secret)
    await run_server(embedded_server(app, settings.bind, settings.ports.blobstore), ctx.ready)
