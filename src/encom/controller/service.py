"""The controller role: migrate the database, then serve the API over HTTPS with the cluster's certificate.

The database is SQLite under the data dir unless ENCOM_CONTROLLER_DATABASE_URL names another SQLAlchemy URL
(e.g. `postgresql+psycopg://encom@db/encom`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from encom.api.role import RoleContext
from encom.api.server import embedded_server, run_server
from encom.bootstrap.tls import controller_cert_paths, ensure_tls
from encom.controller.api import Controller, create_api
from encom.controller.db import Database, default_url
from encom.controller.deployer import Deployer
from encom.controller.drains import Drainer
from encom.controller.events import EventHub
from encom.controller.purge import Purger

DATABASE_URL_ENV = "ENCOM_CONTROLLER_DATABASE_URL"
log = logging.getLogger(__name__)


async def run(ctx: RoleContext, database_url: str | None = None) -> None:
    settings = ctx.settings
    url = database_url or os.environ.get(DATABASE_URL_ENV) or default_url(settings)
    db = Database(url)
    try:
        await asyncio.to_thread(db.migrate)
        await asyncio.to_thread(ensure_tls, settings)
        hub = EventHub(db)
        deployer = Deployer(settings, db, hub)
        drainer = Drainer(settings, db, hub)
        purger = Purger(settings, db, hub)
        certfile, keyfile = controller_cert_paths(settings)
        server = embedded_server(
            create_api(Controller(settings, db, hub, deployer.kick)),
            settings.bind,
            settings.ports.controller,
            certfile=certfile,
            keyfile=keyfile,
        )
        task = asyncio.create_task(run_server(server, ctx.ready))
        deploying = asyncio.create_task(deployer.run(), name="controller-deployer")
        draining = asyncio.create_task(drainer.run(), name="controller-drainer")
        purging = asyncio.create_task(purger.run(), name="controller-purger")
        try:
            await asyncio.shield(task)
        finally:
            deploying.cancel()
            draining.cancel()
            purging.cancel()
            hub.close()  # end the SSE streams first so the graceful shutdown does not wait on them
            task.cancel()
            for running in (deploying, draining, purging, task):
                with contextlib.suppress(BaseException):
                    await running
    finally:
        db.close()
