"""The scheduler role: follow formations (controller) and jobs (hosts), reconcile, report job states.

Only the discoverd leader of `encom-scheduler` acts and reports; the others follow the same state so they can
take over at once. Nothing is stored: the state is rebuilt from the controller and the hosts at start, after
any broken stream, and every RESYNC_INTERVAL seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from encom.api.aio import wait_for
from encom.api.client import ca_context
from encom.api.errors import ApiError
from encom.api.role import RoleContext
from encom.api.settings import Settings
from encom.api.types import (
    ACTIVE_JOB_STATES,
    Event,
    HostJob,
    InstanceRegistration,
    Job,
    JobState,
    ServiceEvent,
    utcnow,
)
from encom.controller.client import ControllerClient
from encom.discoverd.client import HOST_SERVICE, DiscoverdClient, Heartbeat
from encom.host.client import HostClient
from encom.scheduler.hosts import HostLink, host_of
from encom.scheduler.reconcile import FormationKey, StartJob, reconcile
from encom.scheduler.reporter import JobReporter
from encom.scheduler.specs import controller_job, job_spec, unplaced_job
from encom.scheduler.state import Change, SchedulerState, TrackedJob

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEDULER_SERVICE = "encom-scheduler"
CONTROLLER_EVENT_TYPES = ["formation", "app_deletion"]
DEBOUNCE = 0.02
SETTLE_MAX = 1.0
RESYNC_INTERVAL = 10.0
RETRY_MIN = 0.5
RETRY_MAX = 10.0
NEW_HOST_OFFER = 1.0  # seconds after a host appears before waiting jobs are offered (it is synced first)
HOST_PROBES = 3  # a host that left discoverd is dropped once this many status probes, 1 s apart, fail


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close a stream's generator in the task that iterated it, so a cancelled follower leaves no open response."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class Scheduler:
    def __init__(self, settings: Settings, controller: ControllerClient, discoverd: DiscoverdClient) -> None:
        self.settings = settings
        self.controller = controller
        self.discoverd = discoverd
        self.instance_id = f"scheduler-{settings.host_id}"
        self.state = SchedulerState(max_count=settings.max_processes_per_type)
        self.hosts: dict[str, HostLink] = {}
        self.reporter = JobReporter(controller)
        self.changed = asyncio.Event()
        self.is_leader = False
        self.formations_synced = False
        self.hosts_listed = False
        self.last_event_id: int | None = None
        self.wake_at: float | None = None
        self.events_idle = asyncio.Event()  # cleared while a controller event is applied (formation fetched)
        self.events_idle.set()
        self.heartbeat: Heartbeat | None = None
        self.resync_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ lifecycle

    async def run(self, ready: asyncio.Event) -> None:
        loops = {
            "register": self._register(),
            "leader": self._follow_leader(),
            "hosts": self._follow_hosts(),
            "controller": self._follow_controller(),
            "resync": self._resync_loop(),
            "reconcile": self._reconcile_loop(),
            "report": self.reporter.run(),
        }
        tasks = [asyncio.create_task(coro, name=f"scheduler-{name}") for name, coro in loops.items()]
        ready.set()
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for link in list(self.hosts.values()):
            await link.close()
        self.hosts.clear()
        if self.heartbeat is not None:
            with contextlib.suppress(Exception):
                await wait_for(self.heartbeat.stop(), 2.0)

    def trigger(self) -> None:
        self.changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------ leadership

    async def _register(self) -> None:
        reg = InstanceRegistration(addr=f"{self.settings.bind}:0", meta={"host_id": self.settings.host_id})
        heartbeat = self.discoverd.heartbeat(SCHEDULER_SERVICE, self.instance_id, reg)
        delay = RETRY_MIN
        while True:
            try:
                await heartbeat.start()
                break
            except ApiError as exc:
                log.info("cannot register in discoverd yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        self.heartbeat = heartbeat
        await self._check_leader()

    async def _follow_leader(self) -> None:
        while True:
            try:
                async with closing(self.discoverd.watch_forever(SCHEDULER_SERVICE)) as events:
                    async for _ in events:
                        await self._check_leader()
            except Exception as exc:
                log.warning("scheduler leader watch: %s", exc)
            await asyncio.sleep(RETRY_MIN)

    async def _check_leader(self) -> None:
        if self.heartbeat is None:
            return
        try:
            leader = await self.discoverd.leader(SCHEDULER_SERVICE)
        except ApiError as exc:
            log.info("cannot read the scheduler leader: %s", exc)
            return
        leading = leader is not None and leader.id == self.instance_id
        if leading == self.is_leader:
            return
        self.is_leader = leading
        log.info("scheduler %s is %s", self.instance_id, "the leader" if leading else "a follower")
        if leading:
            self._spawn(self._resync_quietly())

    # ------------------------------------------------------------ controller: formations

    async def _follow_controller(self) -> None:
        delay = RETRY_MIN
        while True:
            try:
                if self.last_event_id is None:
                    self.last_event_id = await self.controller.last_event_id()
                await self.full_resync()
                events = self.controller.events(object_types=CONTROLLER_EVENT_TYPES, last_event_id=self.last_event_id)
                async with closing(events):
                    async for event in events:
                        self.events_idle.clear()
                        try:
                            await self._on_controller_event(event)
                        finally:
                            self.events_idle.set()
                        self.last_event_id = event.id
                        delay = RETRY_MIN
            except Exception as exc:
                log.warning("controller events: %s; resyncing in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _on_controller_event(self, event: Event) -> None:
        if event.object_type == "app_deletion":
            app_id = event.app_id or event.object_id
            self.state.remove_app(app_id)
            log.info("app %s deleted: stopping its jobs", app_id)
        elif event.object_type == "formation":
            formation_app = event.data.get("app_id") or event.app_id
            release_id = event.data.get("release_id")
            if isinstance(formation_app, str) and isinstance(release_id, str):
                await self._refresh_formation(formation_app, release_id)
            else:
                await self._sync_formations()
        self.trigger()

    async def _refresh_formation(self, app_id: str, release_id: str) -> None:
        try:
            formation = await self.controller.expanded_formation(app_id, release_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.state.remove_formation(app_id, release_id)
            return
        self.state.set_formation(formation)

    async def _sync_formations(self) -> None:
        self.state.replace_formations(await self.controller.active_formations())
        self.formations_synced = True

    # ------------------------------------------------------------ full resync

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            await self._check_leader()
            await self._resync_quietly()

    async def _resync_quietly(self) -> None:
        try:
            await self.full_resync()
        except Exception as exc:
            log.warning("resync failed: %s", exc)

    async def full_resync(self) -> None:
        """Hosts from discoverd, formations from the controller, jobs from every host; then reconcile."""
        async with self.resync_lock:
            await self._sync_hosts()
            await self._sync_formations()
            await asyncio.gather(*(self._sync_host(link) for link in list(self.hosts.values())))
            if self.is_leader:
                await self._sync_controller_jobs()
            self.state.prune(time.monotonic())
        self.trigger()

    async def _sync_hosts(self) -> None:
        asked_at = time.monotonic()
        try:
            instances = await self.discoverd.instances(HOST_SERVICE)
        except ApiError as exc:
            log.warning("cannot list hosts: %s", exc)
            return
        present = {found[0]: found[1] for found in map(host_of, instances) if found is not None}
        for host_id, url in present.items():
            self._add_host(host_id, url)
        for host_id, link in list(self.hosts.items()):
            if host_id not in present and link.added_at < asked_at:
                self._spawn(self._host_down(host_id))
        self.hosts_listed = True

    async def _sync_host(self, link: HostLink) -> None:
        """Adopt what a host runs, and settle the jobs we thought it ran that it no longer lists."""
        asked_at, asked_wall = time.monotonic(), time.time()
        try:
            jobs = await link.client.list_jobs()
        except ApiError as exc:
            log.info("cannot list jobs of host %s: %s", link.id, exc)
            return
        if self.hosts.get(link.id) is not link:
            return
        for host_job in jobs:
            self._apply(host_job)
        for job in self.state.missing_from(link.id, {j.id for j in jobs}, asked_at):
            await self._settle_missing(link, job.id)
        link.synced, link.synced_wall = True, asked_wall

    async def _settle_missing(self, link: HostLink, job_id: str) -> None:
        """A job its host no longer lists as active: learn how it ended (or that the host forgot it)."""
        try:
            final = await link.client.get_job(job_id)
        except ApiError as exc:
            if exc.status == 404:
                self._report(self.state.lose(job_id, time.monotonic(), "job is gone from its host"))
            return
        self._apply(final)

    async def _sync_controller_jobs(self) -> None:
        """Make the controller's records match: states it missed, and active jobs that no longer exist."""
        try:
            records = await self.controller.all_jobs()
        except ApiError as exc:
            log.warning("cannot list the controller's jobs: %s", exc)
            return
        by_id = {record.id: record for record in records}
        for job in list(self.state.jobs.values()):
            record = by_id.get(job.id)
            if not job.is_formation_job or job.host_job is None:
                continue
            if record is not None:
                self.state.tracker.set_count(job.slot, record.restarts)
                job.restarts = max(job.restarts, record.restarts)
            if record is None or (record.state, record.port) != (job.state, job.host_job.port):
                self.reporter.report(controller_job(job.host_job, job.restarts))
        for record in records:
            if record.type and record.state in ACTIVE_JOB_STATES and self._is_gone(record):
                update = {"state": "down", "error": "job no longer runs on its host", "updated_at": utcnow()}
                self.reporter.report(record.model_copy(update=update))

    def _is_gone(self, record: Job) -> bool:
        if record.id in self.state.jobs or record.id in self.state.ended:
            return False
        if record.host_id is None or record.host_id not in self.hosts:
            return self.hosts_listed
        link = self.hosts[record.host_id]
        return link.synced and record.created_at.timestamp() < link.synced_wall

    # ------------------------------------------------------------ hosts

    async def _follow_hosts(self) -> None:
        """Hosts come and go with discoverd's `encom-host` service."""
        delay = RETRY_MIN
        while True:
            connected_at = time.monotonic()
            seen: set[str] = set()  # hosts announced on this connection
            try:
                async with closing(self.discoverd.watch(HOST_SERVICE)) as events:
                    async for event in events:
                        delay = RETRY_MIN
                        self._on_host_event(event, seen, connected_at)
            except Exception as exc:
                log.warning("host watch: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _on_host_event(self, event: ServiceEvent, seen: set[str], connected_at: float) -> None:
        if event.kind == "current":  # the set announced so far is complete: hosts missing from it left
            self.hosts_listed = True
            for host_id, link in list(self.hosts.items()):
                if host_id not in seen and link.added_at < connected_at:
                    self._spawn(self._host_down(host_id))
            return
        found = host_of(event.instance) if event.instance else None
        if found is None:
            return
        if event.kind in ("up", "update"):
            seen.add(found[0])
            self._add_host(*found)
        elif event.kind == "down":
            seen.discard(found[0])
            self._spawn(self._host_down(found[0]))

    def _add_host(self, host_id: str, url: str) -> None:
        link = self.hosts.get(host_id)
        if link is not None and link.url == url:
            return
        if link is not None:
            self._spawn(link.close())
        link = HostLink(host_id, url, HostClient(url, self.settings.internal_secret))
        self.state.offer_soon(time.monotonic() + NEW_HOST_OFFER)
        link.task = asyncio.create_task(self._follow_host(link), name=f"scheduler-host-{host_id}")
        self.hosts[host_id] = link
        log.info("following host %s at %s", host_id, url)
        self.trigger()

    async def _follow_host(self, link: HostLink) -> None:
        delay = RETRY_MIN
        while True:
            try:
                await self._sync_host(link)
                async with closing(link.client.events()) as events:
                    async for event in events:
                        self._apply(event.job)
                        delay = RETRY_MIN
            except Exception as exc:
                link.synced = False  # no placement there until it answers again
                log.info("events of host %s: %s", link.id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _host_down(self, host_id: str) -> None:
        """A host left discoverd: unless it still answers, its jobs are down and get replaced elsewhere."""
        link = self.hosts.get(host_id)
        if link is None or await self._answers(link) or self.hosts.get(host_id) is not link:
            return
        del self.hosts[host_id]
        log.warning("host %s is gone: rescheduling its jobs", host_id)
        for change in self.state.remove_host(host_id, time.monotonic()):
            self._report(change)
        await link.close()
        self.trigger()

    async def _answers(self, link: HostLink) -> bool:
        for attempt in range(HOST_PROBES):
            if attempt:
                await asyncio.sleep(1.0)
            try:
                status = await link.client.status()
            except ApiError:
                continue
            return status.id == link.id
        return False

    # ------------------------------------------------------------ job states

    def _apply(self, host_job: HostJob) -> None:
        change = self.state.apply(host_job, time.monotonic())
        if change is not None:
            self._report(change)
            self.trigger()

    def _report(self, change: Change | None) -> None:
        """Formation jobs and one-off jobs of a release (`encom run`, the release phase); not builds."""
        if change is None or not self.is_leader:
            return
        spec = change.host_job.spec
        if not spec.builder and spec.release_id:
            self.reporter.report(controller_job(change.host_job, change.restarts))

    # ------------------------------------------------------------ reconcile

    def can_act(self) -> bool:
        return (
            self.is_leader
            and self.formations_synced
            and self.hosts_listed
            and all(link.settled for link in self.hosts.values())
        )

    async def _reconcile_loop(self) -> None:
        while True:
            timeout = RESYNC_INTERVAL
            if self.wake_at is not None:
                timeout = min(timeout, max(self.wake_at - time.monotonic(), 0.0))
            with contextlib.suppress(TimeoutError):
                await wait_for(self.changed.wait(), timeout)
            await self._settle()
            self.changed.clear()
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile failed")

    async def _settle(self) -> None:
        """Coalesce a burst of changes into one pass (formation events often arrive back to back)."""
        await asyncio.sleep(DEBOUNCE)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_MAX):
                while not self.events_idle.is_set():
                    await self.events_idle.wait()
                    await asyncio.sleep(DEBOUNCE)  # the next event already received starts meanwhile

    def reconcile_once(self) -> None:
        self.wake_at = None
        if not self.can_act():
            return
        now = time.monotonic()
        jobs, slots = self.state.views()
        hosts = sorted(host_id for host_id, link in self.hosts.items() if link.synced)
        plan = reconcile(self.state.desired(), jobs, slots, hosts, now)
        for slot in plan.drop:
            self.state.take_slot(slot)
        for job_id in plan.stop:
            self._stop(job_id)
        for start in plan.start:
            self._start(start, now)
        for key, index in plan.unplaced:
            self._hold(key, index, now)
        self._offer_waiting(hosts, now)
        wakes = [at for at in (plan.wake_at, self.state.placement_wake()) if at is not None]
        self.wake_at = min(wakes, default=None)

    def _hold(self, key: FormationKey, index: int, now: float) -> None:
        """A new dyno while no host is available: pending with the reason, offered once a host is there."""
        formation = self.state.formation(key)
        if formation is None:
            return
        job = self.state.add_pending(job_spec(formation, key.type, index), "", now)
        reason = "waiting for a host: no host is available"
        self.state.defer(job.id, reason, now)
        log.warning("%s %s (%s) is pending: %s", formation.app.name, job.spec.dyno, job.id, reason)
        self._report_unplaced(job, "pending", reason)

    def _offer_waiting(self, hosts: list[str], now: float) -> None:
        """Offer the jobs no host could take, whose backoff is over, to the host with the fewest jobs."""
        due = self.state.due_for_placement(now)
        if not due or not hosts:
            return
        load = {host_id: 0 for host_id in hosts}
        for job in self.state.jobs.values():
            if job.host_id in load and job.waiting is None:
                load[job.host_id] += 1
        for job in due:
            host_id = min(hosts, key=lambda h: (load[h], h))
            load[host_id] += 1
            job.host_id, job.retry_at = host_id, None
            self._spawn(self._add_job(self.hosts[host_id], job.id))

    def _start(self, start: StartJob, now: float) -> None:
        formation = self.state.formation(start.key)
        link = self.hosts.get(start.host_id)
        if formation is None or link is None:
            return
        if start.restart is not None:
            self.state.take_slot(start.restart)
        spec = job_spec(formation, start.key.type, start.index)
        self.state.add_pending(spec, link.id, now)
        log.info("starting %s %s (%s) on host %s", formation.app.name, spec.dyno, spec.id, link.id)
        self._spawn(self._add_job(link, spec.id))

    async def _add_job(self, link: HostLink, job_id: str) -> None:
        job = self.state.jobs.get(job_id)
        if job is None:
            return
        try:
            host_job = await link.client.add_job(job.spec)
        except ApiError as exc:
            if exc.status == 409 and not await self._exists_on(link, job_id):
                self._refused(link, job, exc.message)
                return
            if exc.status == 409:  # it exists already; its events tell the rest
                return
            log.warning("host %s refused job %s: %s", link.id, job_id, exc)
            if exc.status == 503:
                link.synced = False  # unreachable: no placement there until it answers again
            self._report(self.state.fail_start(job_id, f"host {link.id}: {exc.message}", time.monotonic()))
            self.trigger()
            return
        self._apply(host_job)
        if job.stop_requested:  # scaled down while the host was starting it
            await self._stop_on_host(link, job_id)

    async def _exists_on(self, link: HostLink, job_id: str) -> bool:
        """After a 409: whether the host has the job (a retried add) or refused it (no room: no free port...)."""
        try:
            await link.client.get_job(job_id)
        except ApiError as exc:
            return exc.status != 404
        return True

    def _refused(self, link: HostLink, job: TrackedJob, message: str) -> None:
        """No room on the host: the job waits as `pending` with the reason, offered again after a backoff."""
        reason = f"waiting for a host: host {link.id}: {message}"
        changed = job.waiting != reason
        if self.state.defer(job.id, reason, time.monotonic()) is None:
            return
        if job.stop_requested:  # scaled down while it was being offered
            self._stop(job.id)
            return
        if changed:
            log.warning("%s %s (%s) is pending: %s", job.spec.app_name, job.spec.dyno, job.id, reason)
            self._report_unplaced(job, "pending", reason)
        self.trigger()

    def _report_unplaced(self, job: TrackedJob, state: JobState, reason: str) -> None:
        if self.is_leader:
            self.reporter.report(unplaced_job(job.spec, job.created, job.restarts, state, reason))

    def _stop(self, job_id: str) -> None:
        job = self.state.request_stop(job_id)
        if job is not None and job.waiting is not None and job.retry_at is not None:
            self.state.drop_waiting(job_id, time.monotonic())
            self._report_unplaced(job, "down", f"scaled down before a host took it ({job.waiting})")
            return
        if job is None or job.state == "pending":
            return  # a pending job is stopped as soon as its host acknowledges it
        link = self.hosts.get(job.host_id)
        if link is None:
            self._report(self.state.lose(job_id, time.monotonic(), "its host is gone"))
            return
        log.info("stopping %s %s (%s) on host %s", job.spec.app_name, job.spec.dyno, job_id, link.id)
        self._spawn(self._stop_on_host(link, job_id))

    async def _stop_on_host(self, link: HostLink, job_id: str) -> None:
        try:
            host_job = await link.client.stop_job(job_id)
        except ApiError as exc:
            if exc.status == 404:
                self._report(self.state.lose(job_id, time.monotonic(), "job is gone from its host"))
                return
            log.warning("cannot stop job %s on host %s: %s", job_id, link.id, exc)
            job = self.state.jobs.get(job_id)
            if job is not None:
                job.stop_requested = False  # the next pass decides again
            return
        self._apply(host_job)


async def run(ctx: RoleContext) -> None:
    settings = ctx.settings
    controller = ControllerClient(
        settings.controller_url, settings.cluster_key, verify=ca_context(settings.ca_cert_path)
    )
    discoverd = DiscoverdClient(settings.discoverd_url, settings.internal_secret)
    scheduler = Scheduler(settings, controller, discoverd)
    try:
        await scheduler.run(ctx.ready)
    finally:
        await scheduler.close()
        await controller.aclose()
        await discoverd.aclose()
