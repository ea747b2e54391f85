"""The deployer: carries out pending deployments, one per app, in the controller process.

A deployment runs the release phase (the Procfile's `release:` command, once, as a one-off job on a host),
then makes the release current and moves the formation by the deployment's strategy:

  one-by-one   per process type (web types first): start one new job, wait until it is up (health check
               passed, registered, so routed), then retire one old job (the host drains it before SIGTERM);
               repeat until the new counts run and the old ones are gone.
  all-at-once  start every new job, wait until all are up, then retire the old ones.

Progress comes from the job records the scheduler reports (`job` events). A new job that crashes, fails or
does not come up in time fails the deployment: the old formation and current release are restored and the
deployment ends `failed` with the reason. A deployment found `running` when the controller starts was cut
short by a restart: it is rolled back the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.orm import Session

from encom.api.aio import wait_for
from encom.api.errors import ApiError
from encom.api.jobspec import one_off_spec, stop_grace
from encom.api.settings import Settings
from encom.api.types import (
    ACTIVE_JOB_STATES,
    ENDED_JOB_STATES,
    RELEASE_TYPE,
    App,
    Artifact,
    Deployment,
    HealthCheck,
    HostJobSpec,
    Job,
    Release,
    is_web_type,
)
from encom.controller import convert, deployments, events, jobs
from encom.controller.db import Database
from encom.controller.events import EventHub
from encom.controller.models import AppRow, ArtifactRow, ReleaseRow
from encom.discoverd.client import DiscoverdClient
from encom.host.client import HostClient, pick_host

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_SECONDS = 5.0  # also look for pending deployments this often (another controller may have made one)
START_SLACK = 30.0  # on top of a job's health-check start timeout: placement, slug fetch, container start
RETIRE_TIMEOUT = 30.0  # for an old job to leave the router once its formation shrank
DRAIN_SLACK = 15.0  # on top of stop_grace when waiting for the old jobs to be gone at the end
RELEASE_TIMEOUT = 30 * 60.0
RELEASE_DYNO = "release.1"


class DeployFailed(Exception):
    """A deployment cannot go on; the message says why (it becomes the deployment's error)."""


@dataclass
class Plan:
    """One claimed deployment, with what the rollout needs to know."""

    deployment: Deployment
    app: App
    release: Release
    artifact: Artifact | None

    @property
    def id(self) -> str:
        return self.deployment.id

    def start_timeout(self, process_type: str) -> float:
        process = self.release.processes.get(process_type)
        check = (process.check if process else None) or HealthCheck()
        return check.start_timeout + START_SLACK


class JobWatch:
    """The app's jobs as the scheduler reports them: a snapshot, then the `job` events after it, read from
    the event table whenever the hub says something was committed."""

    def __init__(self, hub: EventHub, changed: asyncio.Event, app_id: str, snapshot: list[Job], after: int) -> None:
        self.hub = hub
        self.changed = changed  # a hub waiter
        self.app_id = app_id
        self.after = after
        self.jobs = {job.id: job for job in snapshot}

    async def refresh(self) -> None:
        self.changed.clear()
        for event in await self.hub.fetch(self.after, self.app_id, ["job"]):
            job = Job.model_validate(event.data)
            self.jobs[job.id] = job
            self.after = event.id

    def count(self, release_id: str | None, process_type: str | None, states: tuple[str, ...]) -> int:
        """Jobs of a release (and a type; None: any) in one of `states`."""
        return sum(
            1
            for j in self.jobs.values()
            if j.release_id == release_id and process_type in (None, j.type) and j.state in states
        )

    async def until(self, done: Callable[[], bool], within: float, check: Callable[[], None]) -> bool:
        """Wait until `done()` (True) or `within` seconds (False); `check()` raises DeployFailed as soon as
        something went wrong."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            await self.refresh()
            check()
            if done():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await wait_for(self.changed.wait(), min(remaining, POLL_SECONDS))


class Deployer:
    def __init__(self, settings: Settings, db: Database, hub: EventHub) -> None:
        self.settings = settings
        self.db = db
        self.hub = hub
        self.wake = asyncio.Event()
        self.running: dict[str, asyncio.Task[None]] = {}

    def kick(self) -> None:
        """A deployment was created: look now rather than at the next poll. Callable from any thread."""
        self.hub.loop.call_soon_threadsafe(self.wake.set)

    async def _db(self, work: Callable[[Session], T], write: bool = True) -> T:
        def run() -> T:
            with self.db.write() if write else self.db.read() as session:
                return work(session)

        return await asyncio.to_thread(run)

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        await self._recover()
        try:
            while True:
                self.wake.clear()
                for deployment_id in await self._db(lambda s: deployments.ids_with_status(s, "pending"), False):
                    if deployment_id not in self.running:
                        self._start(deployment_id)
                with contextlib.suppress(TimeoutError):
                    await wait_for(self.wake.wait(), POLL_SECONDS)
        finally:
            tasks = list(self.running.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _recover(self) -> None:
        """Deployments left running by a controller that stopped: roll them back."""
        for deployment_id in await self._db(lambda s: deployments.ids_with_status(s, "running"), False):
            log.warning("deployment %s was interrupted by a controller restart: rolling back", deployment_id)
            await self._fail(deployment_id, "interrupted: the controller restarted during the deployment")

    def _start(self, deployment_id: str) -> None:
        task = asyncio.create_task(self._carry_out(deployment_id), name=f"deploy-{deployment_id}")
        self.running[deployment_id] = task
        task.add_done_callback(lambda _: self.running.pop(deployment_id, None))

    async def _carry_out(self, deployment_id: str) -> None:
        try:
            await self._attempt(deployment_id)
        except LookupError as exc:  # the app was deleted, and its deployments with it
            log.info("deployment %s stopped: %s", deployment_id, exc)

    async def _attempt(self, deployment_id: str) -> None:
        deployment = await self._db(lambda s: deployments.claim(s, deployment_id))
        if deployment is None:
            return  # another deployer took it
        try:
            plan = await self._db(lambda s: _plan(s, deployment), False)
            await self._deploy(plan)
        except asyncio.CancelledError:
            raise  # the controller is stopping: the next one rolls it back
        except DeployFailed as exc:
            log.info("deployment %s failed: %s", deployment_id, exc)
            await self._fail(deployment_id, str(exc))
        except Exception as exc:
            log.exception("deployment %s failed", deployment_id)
            await self._fail(deployment_id, f"internal error: {exc}")
        else:
            await self._db(lambda s: deployments.finish(s, deployment_id, "complete"))

    async def _fail(self, deployment_id: str, reason: str) -> None:
        def work(session: Session) -> None:
            deployments.roll_back(session, deployment_id)
            deployments.finish(session, deployment_id, "failed", reason)

        await self._db(work)

    # ------------------------------------------------------------ one deployment

    async def _deploy(self, plan: Plan) -> None:
        if RELEASE_TYPE in plan.release.processes:
            await self._release_phase(plan)

        def snapshot(session: Session) -> tuple[list[Job], int]:
            return jobs.list_jobs(session, plan.app.id, include_ended=False), events.last_id(session)

        await self._db(lambda s: _make_current(s, plan))
        current, after = await self._db(snapshot, False)
        with self.hub.waiter() as changed:
            rollout = Rollout(self, plan, JobWatch(self.hub, changed, plan.app.id, current, after))
            if plan.deployment.strategy == "all-at-once":
                await rollout.all_at_once()
            else:
                await rollout.one_by_one()
            await rollout.wait_old_gone()

    async def scale(self, plan: Plan, release_id: str, counts: dict[str, int]) -> None:
        await self._db(lambda s: deployments.scale(s, plan.app.id, release_id, dict(counts)))

    async def _release_phase(self, plan: Plan) -> None:
        """Run the release command once; a non-zero exit (or no exit in time) fails the deployment."""
        spec = one_off_spec(plan.app, plan.release, plan.artifact, RELEASE_TYPE, RELEASE_DYNO)
        await self._db(lambda s: deployments.set_release_job(s, plan.id, spec.id))
        settings = self.settings
        async with DiscoverdClient(settings.discoverd_url, settings.internal_secret) as discoverd:
            try:
                host = await pick_host(discoverd, settings.internal_secret, prefer=settings.host_id)
            except ApiError as exc:
                raise DeployFailed(f"cannot run the release command: {exc.message}") from None
        async with host:
            await self._run_release_job(host, spec)

    async def _run_release_job(self, host: HostClient, spec: HostJobSpec) -> None:
        job_id = spec.id
        try:
            await host.add_job(spec)
            async with asyncio.timeout(RELEASE_TIMEOUT):
                job = await host.wait_ended(job_id)
        except TimeoutError:
            with contextlib.suppress(ApiError):
                await host.stop_job(job_id)
            minutes = RELEASE_TIMEOUT / 60
            raise DeployFailed(f"the release command did not finish within {minutes:.0f} minutes") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ApiError):
                await host.stop_job(job_id)
            raise
        except ApiError as exc:
            raise DeployFailed(f"cannot run the release command: {exc.message}") from None
        if job.state == "failed":
            raise DeployFailed(f"the release command could not start: {job.error or 'unknown error'}")
        if job.exit_status not in (0, None) or job.state != "down":
            status = job.exit_status if job.exit_status is not None else job.error or job.state
            raise DeployFailed(f"the release command failed (exit status {status})")


class Rollout:
    """Moving the counts from the old release to the new one, step by step, watching the jobs."""

    def __init__(self, deployer: Deployer, plan: Plan, watch: JobWatch) -> None:
        d = plan.deployment
        self.deployer = deployer
        self.plan = plan
        self.watch = watch
        self.new_id = d.new_release_id
        self.old_id = d.old_release_id
        self.target = {t: n for t, n in d.processes.items() if t != RELEASE_TYPE}
        self.new = dict.fromkeys(self.target, 0)
        self.old = dict(d.old_processes) if self.old_id else {}

    def types(self) -> list[str]:
        """Web types first (they carry traffic), then the others; types the new release dropped last."""
        names = set(self.target) | set(self.old)
        return sorted(names, key=lambda t: (not is_web_type(t), t not in self.target, t))

    def check(self) -> None:
        """Fails the deployment when a job of the new release ended: nothing asked any of them to stop."""
        for job in self.watch.jobs.values():
            if job.release_id == self.new_id and job.type in self.target and job.state in ENDED_JOB_STATES:
                raise DeployFailed(f"{job.type} job {job.id} {describe_end(job)}")

    def up(self, process_type: str) -> int:
        return self.watch.count(self.new_id, process_type, ("up",))

    def waiting(self) -> str:
        """Why a job of the new release is still pending (no host could take it), for a timeout's message."""
        for job in self.watch.jobs.values():
            if job.release_id == self.new_id and job.state == "pending" and job.error:
                return f" ({job.type} job {job.id} is pending: {job.error})"
        return ""

    def serving_old(self, process_type: str) -> int:
        return self.watch.count(self.old_id, process_type, ("pending", "starting", "up"))

    async def _grow(self, process_type: str, count: int) -> None:
        self.new[process_type] = count
        await self.deployer.scale(self.plan, self.new_id, self.new)
        within = self.plan.start_timeout(process_type)
        if not await self.watch.until(lambda: self.up(process_type) >= count, within, self.check):
            raise DeployFailed(f"the new {process_type} job did not come up within {within:.0f}s{self.waiting()}")

    async def _shrink(self, process_type: str, count: int) -> None:
        assert self.old_id is not None
        self.old[process_type] = count
        await self.deployer.scale(self.plan, self.old_id, self.old)
        # An old job slow to leave is not the new release's fault: go on after a while.
        await self.watch.until(lambda: self.serving_old(process_type) <= count, RETIRE_TIMEOUT, self.check)

    async def one_by_one(self) -> None:
        for process_type in self.types():
            target, old = self.target.get(process_type, 0), self.old.get(process_type, 0)
            started = 0
            while started < target or old > 0:
                if started < target:
                    started += 1
                    await self._grow(process_type, started)
                if old > 0 and self.old_id is not None:
                    old -= 1
                    await self._shrink(process_type, old)

    async def all_at_once(self) -> None:
        self.new = dict(self.target)
        await self.deployer.scale(self.plan, self.new_id, self.new)
        within = max((self.plan.start_timeout(t) for t in self.target), default=START_SLACK)

        def all_up() -> bool:
            return all(self.up(t) >= n for t, n in self.target.items())

        if not await self.watch.until(all_up, within, self.check):
            raise DeployFailed(f"the new release's jobs did not all come up within {within:.0f}s{self.waiting()}")
        if self.old_id is not None and self.old:
            self.old = dict.fromkeys(self.old, 0)
            await self.deployer.scale(self.plan, self.old_id, self.old)

    async def wait_old_gone(self) -> None:
        """The old release's jobs have stopped (drained, then SIGTERM/SIGKILL); a straggler is only logged."""
        if self.old_id is None:
            return
        within = stop_grace(self.plan.app) + DRAIN_SLACK
        if not await self.watch.until(
            lambda: self.watch.count(self.old_id, None, ACTIVE_JOB_STATES) == 0, within, self.check
        ):
            log.warning("deployment %s: old jobs still running after %.0fs", self.plan.id, within)


def describe_end(job: Job) -> str:
    if job.state == "failed":
        return f"failed to start: {job.error or 'unknown error'}"
    if job.state == "down":
        return "exited with status 0 during the deploy (a web process must keep running)"
    return f"crashed: {job.error or f'exit status {job.exit_status}'}"


def _plan(session: Session, deployment: Deployment) -> Plan:
    app = session.get(AppRow, deployment.app_id)
    release = session.get(ReleaseRow, deployment.new_release_id)
    if app is None or release is None:
        raise DeployFailed("the app or the release was deleted")
    artifact = session.get(ArtifactRow, release.artifact_id) if release.artifact_id else None
    wire = convert.release(release)
    return Plan(deployment, convert.app(app), wire, convert.artifact(artifact) if artifact else None)


def _make_current(session: Session, plan: Plan) -> None:
    app = session.get(AppRow, plan.app.id)
    if app is None:
        raise DeployFailed("the app was deleted")
    deployments.set_current_release(session, app, plan.release.id)
