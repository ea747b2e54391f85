"""What no host can place waits as `pending` with the reason, and is not retried in a tight loop.

Real roles (discoverd, blobstore, host with runc, controller, scheduler) on ports 28000-28999, with a job port
range of only two ports, so the third web job has nowhere to go.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from encom.api.types import Job
from tests.integration.roles import cluster_ports
from tests.integration.test_scheduler import (
    Cluster,
    deploy_app,
    running_roles,
    start_role,
    wait_for,
)

pytestmark = pytest.mark.integration

PORTS = cluster_ports(28000).model_copy(update={"job_start": 28500, "job_end": 28501})


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_roles(tmp_path, PORTS) as cluster:
        yield cluster


def by_state(jobs: list[Job], state: str) -> list[Job]:
    return [j for j in jobs if j.type == "web" and j.state == state]


async def test_a_job_without_a_free_port_is_pending_with_the_reason(cluster: Cluster) -> None:
    controller = cluster.controller
    app, release = await deploy_app(cluster)
    await controller.put_formation(app.id, release.id, {"web": 3})

    async def two_up_one_waiting() -> Job | None:
        jobs = await controller.list_jobs(app.id)
        waiting = [j for j in by_state(jobs, "pending") if j.error]
        return waiting[0] if len(by_state(jobs, "up")) == 2 and waiting else None

    waiting = await wait_for("2 web jobs up and the third pending", two_up_one_waiting)
    assert waiting.error is not None and "no free job port in 28500-28501" in waiting.error
    assert waiting.host_id is None and waiting.port is None

    # Offered again with a backoff (1 s, 2 s, 4 s...), and reported only when the reason changes.
    first = await controller.last_event_id()
    await asyncio.sleep(4.0)
    events: list[str] = []

    async def read() -> None:
        async for event in controller.events(app.id, ["job"], first):
            events.append(event.object_id)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read(), 1.0)
    assert events.count(waiting.id) == 0, events
    assert len(await cluster.host.list_jobs()) == 2

    # Scaled down: the waiting job is the one that goes, reported down with why.
    await controller.put_formation(app.id, release.id, {"web": 2})

    async def gone() -> Job | None:
        jobs = {j.id: j for j in await controller.list_jobs(app.id, include_ended=True)}
        job = jobs.get(waiting.id)
        return job if job is not None and job.state == "down" else None

    down = await wait_for("the waiting job to be dropped", gone)
    assert down.error is not None and "scaled down before a host took it" in down.error
    assert len(by_state(await controller.list_jobs(app.id), "up")) == 2


@pytest.fixture
async def hostless(tmp_path: Path) -> AsyncIterator[Cluster]:
    """The same roles but the host, which the test starts itself."""
    async with running_roles(tmp_path, PORTS, without="host") as cluster:
        yield cluster


async def test_with_no_host_the_job_waits_and_starts_when_one_comes(hostless: Cluster) -> None:
    controller = hostless.controller
    app, release = await deploy_app(hostless)
    await controller.put_formation(app.id, release.id, {"web": 1})

    async def waiting() -> Job | None:
        jobs = by_state(await controller.list_jobs(app.id), "pending")
        return jobs[0] if jobs and jobs[0].error else None

    job = await wait_for("the web job pending", waiting)
    assert job.error == "waiting for a host: no host is available"

    hostless.tasks.append(await start_role("host", hostless.settings))

    async def up() -> Job | None:
        jobs = by_state(await controller.list_jobs(app.id), "up")
        return jobs[0] if jobs else None

    started = await wait_for("the waiting job up on the new host", up)
    assert started.id == job.id and started.error is None
