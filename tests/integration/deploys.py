"""Deployments against a controller alone: the test plays the scheduler's part."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from encom.api.types import Deployment, Event, Job, utcnow
from encom.controller.client import ControllerClient

DEPLOY_TIMEOUT = 20.0


@dataclass
class PlaysScheduler:
    """Keeps every formation's jobs at its counts by reporting job records; jobs of `crash_release` crash
    when they start, jobs of `stall_release` never come up. `log` is what happened, in order."""

    client: ControllerClient
    crash_release: str | None = None
    stall_release: str | None = None
    jobs: dict[tuple[str, str], list[Job]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)

    async def follow(self, since: int) -> None:
        async for event in self.client.events(object_types=["formation"], last_event_id=since):
            await self.apply(event)

    async def apply(self, event: Event) -> None:
        app_id, release_id = event.data["app_id"], event.data["release_id"]
        if release_id not in self.versions:
            self.versions[release_id] = (await self.client.get_release(release_id)).version
        for process_type, count in event.data["processes"].items():
            running = self.jobs.setdefault((release_id, process_type), [])
            while len(running) < count:
                running.append(await self.start(app_id, release_id, process_type))
            while len(running) > count:
                await self.report(await self.report(running.pop(), "stopping"), "down")

    async def start(self, app_id: str, release_id: str, process_type: str) -> Job:
        now = utcnow()
        job = Job(id=uuid.uuid4().hex, app_id=app_id, release_id=release_id, type=process_type, host_id="h1",
                  state="starting", created_at=now, updated_at=now)  # fmt: skip
        await self.report(job, "starting")
        if release_id == self.crash_release:
            return await self.report(
                job.model_copy(update={"exit_status": 1, "error": "exited with status 1"}), "crashed"
            )
        if release_id != self.stall_release:
            return await self.report(job, "up")
        return job

    async def report(self, job: Job, state: str) -> Job:
        job = job.model_copy(update={"state": state, "updated_at": utcnow()})
        if state in ("up", "stopping", "crashed"):  # logged first: the deployer may act on the report at once
            self.log.append(f"v{self.versions[job.release_id]} {job.type} {state}")
        await self.client.put_job(job)
        return job


@contextlib.asynccontextmanager
async def scheduler(
    client: ControllerClient, crash_release: str | None = None, stall_release: str | None = None
) -> AsyncIterator[PlaysScheduler]:
    player = PlaysScheduler(client, crash_release, stall_release)
    task = asyncio.create_task(player.follow(await client.last_event_id()))
    try:
        yield player
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def deploy(
    client: ControllerClient, app: str, release_id: str, processes: dict[str, int] | None = None
) -> Deployment:
    try:
        return await asyncio.wait_for(client.deploy_and_wait(app, release_id, processes), DEPLOY_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"the deployment of {release_id} did not end within {DEPLOY_TIMEOUT:.0f}s")
