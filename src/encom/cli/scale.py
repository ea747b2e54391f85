"""`encom scale`: set the formation of the current release and follow the jobs until it is reached."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import click
from pydantic import ValidationError

from encom.api.aio import wait_for
from encom.api.types import Event, Formation, Job, Release
from encom.cli.context import app_options, call, current_target
from encom.cli.output import CliError, clock, duration
from encom.cli.releases import require_release
from encom.controller.client import ControllerClient

DEFAULT_TIMEOUT = 60.0
POLL_INTERVAL = 2.0  # when no event came for this long, the job list is read (events may have been missed)
SHOWN_STATES = ("up", "down", "crashed", "failed")
BUSY_STATES = ("pending", "starting", "stopping")
MAX_DIGITS = 40  # enough for the cluster to answer (its max_processes_per_type refuses big counts)

Echo = Callable[[str], None]


def parse_counts(args: tuple[str, ...] | list[str]) -> dict[str, int]:
    """`web=3 worker=0` -> {"web": 3, "worker": 0}."""
    counts: dict[str, int] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        if not sep or not name or not (value.isascii() and value.isdigit()) or len(value) > MAX_DIGITS:
            raise CliError(f'invalid argument "{arg}": expected TYPE=COUNT, e.g. web=3')
        counts[name] = int(value)
    return counts


def current_counts(release: Release, formation: Formation | None) -> dict[str, int]:
    """The count of every process type of the release (0 when the formation does not mention it)."""
    processes = formation.processes if formation else {}
    return {t: processes.get(t, 0) for t in sorted(release.processes)}


def format_counts(counts: dict[str, int]) -> str:
    return " ".join(f"{t}={n}" for t, n in sorted(counts.items()))


def changes(current: dict[str, int], wanted: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {t: (current.get(t, 0), n) for t, n in wanted.items() if current.get(t, 0) != n}


@dataclass
class JobTracker:
    """The latest known state of the release's jobs, and whether the changed types reached their counts."""

    release_id: str
    targets: dict[str, int]  # only the types being scaled
    growing: set[str]  # types being scaled up: a crash there fails the scale
    jobs: dict[str, Job] = field(default_factory=dict)

    def apply(self, job: Job) -> bool:
        """Record a job's state; True when it is news (another release's jobs and stale reports are not)."""
        if job.release_id != self.release_id:
            return False
        known = self.jobs.get(job.id)
        if known is not None and (job.updated_at < known.updated_at or job.state == known.state):
            return False
        self.jobs[job.id] = job
        return True

    def count(self, process_type: str, states: tuple[str, ...]) -> int:
        return sum(1 for j in self.jobs.values() if j.type == process_type and j.state in states)

    def reached(self, process_type: str) -> bool:
        target = self.targets[process_type]
        return self.count(process_type, ("up",)) == target and self.count(process_type, BUSY_STATES) == 0

    def done(self) -> bool:
        return all(self.reached(t) for t in self.targets)

    def failure(self, job: Job) -> str | None:
        if job.type not in self.growing or job.state not in ("crashed", "failed"):
            return None
        reason = job.error or (f"exit status {job.exit_status}" if job.exit_status is not None else "no reason given")
        return f"{job.type} job {job.id} {job.state}: {reason}"

    def missing(self) -> str:
        return ", ".join(self._progress(t, n) for t, n in sorted(self.targets.items()) if not self.reached(t))

    def _progress(self, process_type: str, target: int) -> str:
        """`web=100 (40 up, 60 pending: waiting for a host: ... no free job port ...)`."""
        text = f"{process_type}={target} ({self.count(process_type, ('up',))} up"
        waiting = [j for j in self.jobs.values() if j.type == process_type and j.state == "pending" and j.error]
        if waiting:
            text += f", {len(waiting)} pending: {waiting[-1].error}"
        return text + ")"


def job_line(when: datetime, job: Job) -> str:
    return f"{clock(when)} ==> {job.type} {job.id} {job.state}"


class JobWatcher:
    """Job events of one app after a known event id, with the job list as a fallback."""

    def __init__(self, client: ControllerClient, app_id: str, tracker: JobTracker, echo: Echo) -> None:
        self.client = client
        self.app_id = app_id
        self.tracker = tracker
        self.echo = echo
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    async def _pump(self, last_event_id: int) -> None:
        # A broken stream is not fatal: the poll of the job list keeps the wait going.
        with contextlib.suppress(Exception):
            async for event in self.client.events(self.app_id, ["job"], last_event_id):
                await self.queue.put(event)

    def _see(self, when: datetime, job: Job) -> None:
        if not self.tracker.apply(job):
            return
        if job.state in SHOWN_STATES:
            self.echo(job_line(when, job))
        elif job.state == "pending" and job.error:
            self.echo(f"{job_line(when, job)} ({job.error})")
        if (problem := self.tracker.failure(job)) is not None:
            raise CliError(problem)

    def _on_event(self, event: Event) -> None:
        try:
            job = Job.model_validate(event.data)
        except ValidationError:
            return
        self._see(event.created_at, job)

    async def _poll(self) -> None:
        for job in await self.client.list_jobs(self.app_id, include_ended=True):
            self._see(job.updated_at, job)

    async def wait(self, last_event_id: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        pump = asyncio.create_task(self._pump(last_event_id))
        try:
            while not self.tracker.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CliError(f"timed out after {seconds:g}s waiting for {self.tracker.missing()}")
                try:
                    event = await wait_for(self.queue.get(), min(POLL_INTERVAL, remaining))
                except TimeoutError:
                    await self._poll()
                    continue
                self._on_event(event)
        finally:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump


async def show_counts(client: ControllerClient, app: str) -> str:
    found = await client.get_app(app)
    release = await require_release(client, found.id)
    return format_counts(current_counts(release, await client.get_formation(found.id, release.id)))


async def scale_app(
    client: ControllerClient, app: str, wanted: dict[str, int], wait: bool, seconds: float, echo: Echo
) -> None:
    started = time.monotonic()
    found = await client.get_app(app)
    release = await require_release(client, found.id)
    current = current_counts(release, await client.get_formation(found.id, release.id))
    changed = changes(current, wanted)
    # Read before the PUT: the events of the jobs it starts come after this id.
    last_event_id = await client.last_event_id() if wait else 0
    jobs = await client.list_jobs(found.id, include_ended=True) if wait else []
    await client.put_formation(found.id, release.id, {**current, **wanted})
    for process_type, (old, new) in changed.items():
        echo(f"scaling {process_type}: {old}=>{new}")
    if not wait:
        return
    tracker = JobTracker(
        release.id,
        targets={t: new for t, (_, new) in changed.items()},
        growing={t for t, (old, new) in changed.items() if new > old},
    )
    for job in jobs:
        tracker.apply(job)
    await JobWatcher(client, found.id, tracker, echo).wait(last_event_id, seconds)
    echo(f"scale completed in {duration(time.monotonic() - started)}")


@click.command("scale")
@app_options
@click.option("-n", "--no-wait", is_flag=True, help="do not wait for the jobs")
@click.option(
    "-t", "--timeout", type=click.FloatRange(min=0), default=DEFAULT_TIMEOUT, show_default=True, help="seconds to wait"
)
@click.argument("counts", nargs=-1, metavar="[TYPE=COUNT]...")
def scale(no_wait: bool, timeout: float, counts: tuple[str, ...]) -> None:
    """Show the process counts, or change them (web=3 worker=1) and wait until the jobs are up or down."""
    wanted = parse_counts(counts)
    target = current_target()
    if not wanted:
        click.echo(call(target.cluster, lambda c: show_counts(c, target.app)))
        return
    call(target.cluster, lambda c: scale_app(c, target.app, wanted, not no_wait, timeout, click.echo))
