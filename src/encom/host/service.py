"""The host role: serve the host API, register this host in discoverd, supervise jobs (see encom.api.role)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

import encom.build
from encom.api.netports import reserve_ports
from encom.api.role import RoleContext
from encom.api.server import embedded_server, run_server
from encom.api.settings import Settings
from encom.api.types import InstanceRegistration
from encom.blobstore.client import BlobstoreClient
from encom.discoverd.client import HOST_SERVICE, DiscoverdClient
from encom.host import process
from encom.host.api import build_app
from encom.host.events import EventHub
from encom.host.jobs import JobManager
from encom.host.ports import PortAllocator
from encom.host.registry import Registration
from encom.host.runner import HostDeps
from encom.host.runtime import Runc
from encom.host.slugs import SlugCache
from encom.host.uids import UidAllocator

log = logging.getLogger(__name__)


def find_uv() -> Path | None:
    """The real uv binary (not a pyenv shim script, which would not run inside a container)."""
    found = shutil.which("uv")
    if found is None:
        return None
    path = Path(found).resolve()
    with contextlib.suppress(OSError):
        if path.read_bytes()[:4] == b"\x7fELF":
            return path
    import sys

    candidate = Path(sys.base_prefix) / "bin" / "uv"
    return candidate if candidate.is_file() else None


def make_deps(settings: Settings, discoverd: DiscoverdClient, blobstore: BlobstoreClient) -> HostDeps:
    host_dir = settings.dir("host")
    return HostDeps(
        host_id=settings.host_id,
        runc=Runc(host_dir / "runc", binary=settings.container_runtime),
        ports=PortAllocator(settings.ports.job_start, settings.ports.job_end),
        discoverd=discoverd,
        slugs=SlugCache(host_dir / "slugs", blobstore),
        events=EventHub(),
        uids=UidAllocator(host_dir / "uids.json"),
        build_dir=Path(encom.build.__file__).parent,
        uv_binary=find_uv(),
    )


async def run(ctx: RoleContext) -> None:
    settings = ctx.settings
    discoverd = DiscoverdClient(settings.discoverd_url, settings.internal_secret)
    blobstore = BlobstoreClient(settings.blobstore_url, settings.internal_secret)
    deps = make_deps(settings, discoverd, blobstore)
    jobs = JobManager(deps, settings.dir("host") / "jobs")
    registration = Registration(
        discoverd,
        HOST_SERVICE,
        settings.host_id,
        InstanceRegistration(
            addr=f"{settings.bind}:{settings.ports.host}", meta={"id": settings.host_id, "url": settings.host_url}
        ),
    )
    reserve_ports(settings.ports.job_start, settings.ports.job_end)
    reaper = asyncio.create_task(process.reap_orphans(jobs.container_pids), name="host-reaper")
    serving: asyncio.Task[None] | None = None
    try:
        await jobs.adopt()
        app = build_app(jobs, settings.internal_secret, settings.host_url)
        server = embedded_server(app, settings.bind, settings.ports.host)
        serving = asyncio.create_task(run_server(server, ctx.ready), name="host-api")
        registration.start()
        await asyncio.shield(serving)
    finally:
        deps.events.close()  # open event and log streams end first, so the server shuts down at once
        for task in (serving, reaper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await jobs.shutdown(detach=ctx.detach)
        await registration.stop(deregister=not ctx.detach)
        await discoverd.aclose()
        await blobstore.aclose()
