"""After `encom delete`: what the other components keep of the app goes too, each removed by its owner.

The `app_deletion` events are the durable to-do list. The Purger, a task of the controller role, follows them from
a cursor (the id of the last deletion fully carried out, kept in `<data>/controller/purged`) and for each one asks
- every host registered in discoverd to stop the app's jobs and remove its job records, logs, cached slugs and uid
  entry (`DELETE /host/apps/{id}`),
- the blobstore to remove its sources, slugs, build results and build cache (`DELETE /blobs/...?recursive=true`),
then removes the job rows and events that its jobs' last reports added after the deletion, and truncates SQLite's
WAL so that no old page version (the app's env) is left in it. Every step is idempotent: a deletion is retried with
backoff until all of them succeed, and one interrupted by a restart is carried out again from the cursor.
gitreceive removes the app's repository itself on the same event (see `encom.gitreceive.service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from encom.api.errors import ApiError
from encom.api.files import write_private
from encom.api.settings import Settings
from encom.blobstore.client import BlobstoreClient, app_blob_paths
from encom.controller.apps import scrub_app_records
from encom.controller.db import Database
from encom.controller.events import EventHub
from encom.controller.logs import host_urls
from encom.host.client import HostClient

log = logging.getLogger(__name__)

CURSOR_FILE = "purged"
RETRY_MIN = 1.0
RETRY_MAX = 30.0


class PurgeIncomplete(Exception):
    """A step of a purge could not be carried out yet; the whole purge is tried again."""


class Purger:
    def __init__(self, settings: Settings, db: Database, hub: EventHub) -> None:
        self.settings = settings
        self.db = db
        self.hub = hub
        self.cursor_path = settings.dir("controller") / CURSOR_FILE
        self.blobstore = BlobstoreClient(settings.blobstore_url, settings.internal_secret)

    def cursor(self) -> int:
        try:
            return int(self.cursor_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("unreadable purge cursor %s: purging every deleted app again", self.cursor_path)
            return 0

    def _save_cursor(self, event_id: int) -> None:
        write_private(self.cursor_path, str(event_id))

    async def run(self) -> None:
        delay = RETRY_MIN
        try:
            while not self.hub.closed:
                try:
                    async for event in self.hub.stream(self.cursor(), object_types=["app_deletion"]):
                        await self.purge_until_done(event.app_id or event.object_id)
                        await asyncio.to_thread(self._save_cursor, event.id)
                        delay = RETRY_MIN
                except Exception:
                    log.exception("following app deletions; again in %.0fs", delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            await self.blobstore.aclose()

    async def purge_until_done(self, app_id: str) -> None:
        delay = RETRY_MIN
        while True:
            try:
                await self.purge(app_id)
                log.info("deleted app %s: removed from every host, the blobstore and the database", app_id)
                return
            except (ApiError, PurgeIncomplete) as exc:
                log.warning("removing deleted app %s: %s; again in %.0fs", app_id, exc, delay)
            except Exception:
                log.exception("removing deleted app %s; again in %.0fs", app_id, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def purge(self, app_id: str) -> None:
        await self._purge_hosts(app_id)
        for path in app_blob_paths(app_id):
            await self.blobstore.delete(path, recursive=True)
        await asyncio.to_thread(self._scrub, app_id)

    async def _purge_hosts(self, app_id: str) -> None:
        urls = await host_urls(self.settings)
        if not urls:
            raise PurgeIncomplete("no host is registered in discoverd yet")
        for url in urls:
            host = HostClient(url, self.settings.internal_secret)
            try:
                await host.purge_app(app_id)
            finally:
                with contextlib.suppress(Exception):
                    await host.aclose()

    def _scrub(self, app_id: str) -> None:
        with self.db.write() as session:
            scrub_app_records(session, app_id)
        if not self.db.truncate_wal():
            raise PurgeIncomplete("readers kept the database's WAL from being truncated")
