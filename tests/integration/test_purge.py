"""Deleting an app: each owner removes its own data (a host's jobs, records, logs, slugs and uid entry; the
blobstore's blobs; the controller's rows, events and WAL), driven by the controller's Purger from `app_deletion`
events, and carried out again after a restart (real runc jobs, real discoverd, blobstore and host roles)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from encom.api.settings import Settings
from encom.api.types import AppCreate, HostJob, ReleaseCreate
from encom.blobstore.client import app_blob_paths
from encom.controller import apps, releases
from encom.controller.db import Database
from encom.controller.events import EventHub
from encom.controller.purge import Purger
from tests.integration.roles import eventually
from tests.integration.test_host import Cluster, host_cluster, pick_ports, slug_tarball, spec

pytestmark = [pytest.mark.integration]

WAIT = 30.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with host_cluster(Settings(data_dir=tmp_path, ports=pick_ports())) as c:
        yield c


def uid_table(settings: Settings) -> dict[str, object]:
    data: dict[str, object] = json.loads((settings.data_dir / "host" / "uids.json").read_text())
    return data


async def start_slug_job(cluster: Cluster, app_id: str, cmd: str) -> HostJob:
    path = f"slugs/{app_id}/{uuid.uuid4().hex}.tgz"
    await cluster.blobstore.put(path, slug_tarball({"./hello.txt": f"slug of {app_id}\n"}))
    return await cluster.host.add_job(spec(app_id=app_id, artifact_url=f"/{path}", cmd=cmd))


async def test_a_host_removes_everything_of_a_deleted_app(cluster: Cluster) -> None:
    running = await start_slug_job(cluster, "doomed", "exec sleep 300")
    ended = await start_slug_job(cluster, "doomed", "echo secret-output; exit 3")
    other = await start_slug_job(cluster, "other", "exec sleep 300")
    await cluster.wait_job(ended.id, "crashed")
    await cluster.wait_job(running.id, "up")
    await cluster.wait_job(other.id, "up")
    jobs_dir = cluster.settings.data_dir / "host" / "jobs"
    doomed_uid = uid_table(cluster.settings)["apps"]["doomed"]  # type: ignore[index]
    assert len(list((cluster.settings.data_dir / "host" / "slugs").glob("*.tgz"))) == 3

    await cluster.host.purge_app("doomed")

    remaining = {job.id for job in await cluster.host.list_jobs(include_ended=True)}
    assert remaining == {other.id}
    assert sorted(p.name for p in jobs_dir.iterdir()) == [other.id]
    assert len(list((cluster.settings.data_dir / "host" / "slugs").glob("*.tgz"))) == 1  # the other app's
    table = uid_table(cluster.settings)
    assert "doomed" not in json.dumps(table)
    assert table["next"] == doomed_uid + 2  # type: ignore[operator]
    await cluster.host.purge_app("doomed")  # idempotent
    newcomer = await cluster.host.add_job(spec(app_id="newcomer", cmd="exit 0"))
    await cluster.wait_job(newcomer.id, "down")
    assert uid_table(cluster.settings)["apps"]["newcomer"] == doomed_uid + 2  # type: ignore[index]
    await cluster.host.stop_job(other.id)


def create_app_with_secret(db: Database, settings: Settings, name: str, secret: str) -> str:
    with db.write() as session:
        app = apps.create_app(session, settings, AppCreate(name=name))
        row = apps.find_app(session, app.id)
        releases.create_release(session, row, ReleaseCreate(app_id=app.id, env={"TOKEN": secret}))
    return app.id


def delete_app(db: Database, app_id: str) -> None:
    with db.write() as session:
        apps.delete_app(session, app_id)


def database_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def test_the_purger_removes_a_deleted_app_everywhere_and_resumes_after_a_restart(cluster: Cluster) -> None:
    settings = cluster.settings
    db_path = settings.dir("controller") / "controller.db"
    db = Database(f"sqlite:///{db_path}")
    await asyncio.to_thread(db.migrate)
    hub = EventHub(db)
    secrets = {name: f"secret-of-{name}-{uuid.uuid4().hex}" for name in ("first", "second")}
    try:
        first = create_app_with_secret(db, settings, "first", secrets["first"])
        job = await start_slug_job(cluster, first, "exec sleep 300")
        await cluster.wait_job(job.id, "up")
        assert secrets["first"].encode() in database_bytes(db_path)
        delete_app(db, first)

        purging = asyncio.create_task(Purger(settings, db, hub).run())
        await eventually(lambda: _cursor_past(settings, 0), "the first deletion to be carried out", seconds=WAIT)
        assert await _gone(cluster, first)
        assert secrets["first"].encode() not in database_bytes(db_path)
        cursor = _cursor(settings)
        purging.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purging

        # Deleted while no purger runs (encomd restarting): the next one carries it out from its cursor.
        second = create_app_with_secret(db, settings, "second", secrets["second"])
        await cluster.blobstore.put(f"caches/{second}.tar", b"a build cache")
        delete_app(db, second)
        purging = asyncio.create_task(Purger(settings, db, hub).run())
        await eventually(lambda: _cursor_past(settings, cursor), "the second deletion to be carried out", seconds=WAIT)
        assert await _gone(cluster, second)
        assert secrets["second"].encode() not in database_bytes(db_path)
        purging.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purging
    finally:
        hub.close()
        db.close()


def _cursor(settings: Settings) -> int:
    """The id of the last deletion the purger carried out fully (0: none yet)."""
    with contextlib.suppress(FileNotFoundError):
        return int((settings.data_dir / "controller" / "purged").read_text())
    return 0


async def _cursor_past(settings: Settings, previous: int) -> bool:
    return _cursor(settings) > previous


async def _gone(cluster: Cluster, app_id: str) -> bool:
    if any(job.spec.app_id == app_id for job in await cluster.host.list_jobs(include_ended=True)):
        return False
    for path in app_blob_paths(app_id):
        if (cluster.settings.data_dir / "blobstore" / path).exists():
            return False
    return app_id not in json.dumps(uid_table(cluster.settings))
