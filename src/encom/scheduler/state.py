"""The scheduler's view of the cluster, rebuilt from the controller and the hosts (never stored).

No I/O here either: the service feeds it formations and host jobs, reads views for `reconcile`, and reports
what `apply` says changed. Times are passed in (`now`, monotonic seconds) so the logic stays testable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from encom.api.types import ENDED_JOB_STATES, ExpandedFormation, HostJob, HostJobSpec, utcnow
from encom.scheduler.backoff import DynoSlot, RestartTracker
from encom.scheduler.reconcile import FormationKey, JobView, RestartSlot
from encom.scheduler.specs import parse_dyno

# States only move forward; a late or replayed event carrying an earlier state is ignored.
STATE_RANK = {"pending": 0, "starting": 1, "up": 2, "stopping": 3, "down": 4, "crashed": 4, "failed": 4}
ENDED_MEMORY = 600.0  # how long an ended job id is remembered, so its replayed events are ignored
PLACE_RETRY_MIN = 1.0  # a job no host could take is offered again after this, doubling...
PLACE_RETRY_MAX = 30.0  # ...up to this
DEFAULT_MAX_COUNT = 100  # the cluster's max_processes_per_type, unless the scheduler is told otherwise


def place_retry_delay(attempts: int) -> float:
    """The wait before offering a job to a host again after `attempts` refusals."""
    return min(PLACE_RETRY_MIN * 2.0 ** min(max(attempts - 1, 0), 16), PLACE_RETRY_MAX)


@dataclass
class TrackedJob:
    spec: HostJobSpec
    host_id: str
    state: str  # "pending" until the host has acknowledged the job
    created: float  # wall-clock seconds, for "newest first"
    seen_at: float  # monotonic: when this scheduler first learnt of the job
    host_job: HostJob | None = None
    restarts: int = 0
    stop_requested: bool = False
    up_since: float | None = None  # monotonic
    waiting: str | None = None  # why no host has taken it yet (it stays "pending" meanwhile)
    retry_at: float | None = None  # monotonic: when to offer it to a host again (None: being offered)
    refusals: int = 0

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def key(self) -> FormationKey:
        return FormationKey(self.spec.app_id, self.spec.release_id, self.spec.process_type)

    @property
    def index(self) -> int:
        return parse_dyno(self.spec.dyno) or 0

    @property
    def slot(self) -> DynoSlot:
        return DynoSlot(self.spec.app_id, self.spec.process_type, self.index)

    @property
    def is_formation_job(self) -> bool:
        return bool(self.spec.process_type)

    def as_host_job(self, state: str | None = None, error: str | None = None) -> HostJob:
        """The host's record, or one made up from the spec (for jobs a host never acknowledged or lost)."""
        base = self.host_job or HostJob(spec=self.spec, host_id=self.host_id, state="starting", created_at=utcnow())
        if state is None:
            return base
        update: dict[str, object] = {"state": state, "ended_at": base.ended_at or utcnow()}
        if error is not None:
            update["error"] = error
        return base.model_copy(update=update)


@dataclass
class Change:
    """A job whose state changed: what to report to the controller."""

    host_job: HostJob
    restarts: int


@dataclass
class SchedulerState:
    formations: dict[tuple[str, str], ExpandedFormation] = field(default_factory=dict)
    jobs: dict[str, TrackedJob] = field(default_factory=dict)
    slots: dict[tuple[FormationKey, int], RestartSlot] = field(default_factory=dict)
    tracker: RestartTracker = field(default_factory=RestartTracker)
    ended: dict[str, float] = field(default_factory=dict)  # job id -> monotonic time it ended
    max_count: int = DEFAULT_MAX_COUNT  # counts above it (stored before the API bounded them) are capped

    # ------------------------------------------------------------ desired state

    def desired(self) -> dict[FormationKey, int]:
        out: dict[FormationKey, int] = {}
        for formation in self.formations.values():
            for type_, count in formation.processes.items():
                if count > 0 and type_ in formation.release.processes:
                    out[FormationKey(formation.app.id, formation.release.id, type_)] = min(count, self.max_count)
        return out

    def set_formation(self, formation: ExpandedFormation) -> None:
        key = (formation.app.id, formation.release.id)
        if any(count > 0 for count in formation.processes.values()):
            self.formations[key] = formation
        else:
            self.formations.pop(key, None)

    def remove_formation(self, app_id: str, release_id: str) -> None:
        self.formations.pop((app_id, release_id), None)

    def replace_formations(self, formations: list[ExpandedFormation]) -> None:
        self.formations = {}
        for formation in formations:
            self.set_formation(formation)

    def remove_app(self, app_id: str) -> None:
        for key in [k for k in self.formations if k[0] == app_id]:
            del self.formations[key]
        self.tracker.forget_app(app_id)

    def formation(self, key: FormationKey) -> ExpandedFormation | None:
        return self.formations.get((key.app_id, key.release_id))

    # ------------------------------------------------------------ actual state

    def views(self) -> tuple[list[JobView], list[RestartSlot]]:
        """What `reconcile` sees: active jobs we have not decided to stop, and the restarts still owed."""
        views = [
            JobView(job.id, job.key, job.host_id, job.state, job.index, job.created)
            for job in self.jobs.values()
            if not job.stop_requested and job.state not in ENDED_JOB_STATES
        ]
        return views, list(self.slots.values())

    def add_pending(self, spec: HostJobSpec, host_id: str, now: float) -> TrackedJob:
        job = TrackedJob(spec=spec, host_id=host_id, state="pending", created=time.time(), seen_at=now)
        job.restarts = self.tracker.count(job.slot)
        self.jobs[job.id] = job
        return job

    def defer(self, job_id: str, reason: str, now: float) -> TrackedJob | None:
        """A host refused the job for lack of room: it stays pending, with the reason, and is offered again
        after a backoff (never in a tight loop)."""
        job = self.jobs.get(job_id)
        if job is None or job.host_job is not None:
            return None
        job.refusals += 1
        job.waiting = reason
        job.retry_at = now + place_retry_delay(job.refusals)
        return job

    def due_for_placement(self, now: float) -> list[TrackedJob]:
        return [
            job
            for job in self.jobs.values()
            if job.waiting is not None and job.retry_at is not None and job.retry_at <= now and not job.stop_requested
        ]

    def offer_soon(self, at: float) -> None:
        """Room may have appeared (a new host): offer every waiting job again at `at` at the latest."""
        for job in self.jobs.values():
            if job.waiting is not None and job.retry_at is not None:
                job.retry_at = min(job.retry_at, at)

    def placement_wake(self) -> float | None:
        return min((job.retry_at for job in self.jobs.values() if job.waiting and job.retry_at), default=None)

    def drop_waiting(self, job_id: str, now: float) -> TrackedJob | None:
        """Forget a job no host ever took (scaled down meanwhile)."""
        job = self.jobs.pop(job_id, None)
        if job is not None:
            self.ended[job_id] = now
        return job

    def take_slot(self, slot: RestartSlot) -> None:
        self.slots.pop((slot.key, slot.index), None)

    def apply(self, host_job: HostJob, now: float) -> Change | None:
        """Take in a host's word on a job. Returns the change to report, or None when nothing changed."""
        if host_job.id in self.ended:
            return None
        job = self.jobs.get(host_job.id)
        if job is None:
            job = self._adopt(host_job, now)
        elif _stale(job, host_job):
            return None
        job.host_job = host_job
        job.host_id = host_job.host_id
        job.state = host_job.state
        job.waiting = job.retry_at = None
        if host_job.state == "up" and job.up_since is None:
            job.up_since = now
        if host_job.state in ENDED_JOB_STATES:
            self._end(job, now)
        return Change(host_job, job.restarts)

    def fail_start(self, job_id: str, error: str, now: float) -> Change | None:
        """The host refused the job or could not be reached: it counts as a failed start (and is retried)."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        return self.apply(job.as_host_job("failed", error), now)

    def lose(self, job_id: str, now: float, error: str) -> Change | None:
        """A job that vanished without an end state (its host is gone): down, and replaced without backoff."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        job.stop_requested = True  # not a crash of the job: no restart slot, reconcile simply replaces it
        change = self.apply(job.as_host_job("down", error), now)
        self.ended.pop(job_id, None)  # should it turn up again (its host comes back), it is adopted again
        return change

    def remove_host(self, host_id: str, now: float) -> list[Change]:
        lost = [job.id for job in self.jobs.values() if job.host_id == host_id]
        changes = [self.lose(job_id, now, f"host {host_id} is gone") for job_id in lost]
        return [c for c in changes if c is not None]

    def missing_from(self, host_id: str, listed: set[str], listed_since: float) -> list[TrackedJob]:
        """Jobs we think run on a host that its job list (requested at `listed_since`) did not show."""
        return [
            job
            for job in self.jobs.values()
            if job.host_id == host_id and job.id not in listed and job.state != "pending" and job.seen_at < listed_since
        ]

    def request_stop(self, job_id: str) -> TrackedJob | None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.stop_requested = True
        return job

    def restart_wake(self) -> float | None:
        return min((slot.due for slot in self.slots.values()), default=None)

    def prune(self, now: float) -> None:
        for job_id in [j for j, at in self.ended.items() if now - at > ENDED_MEMORY]:
            del self.ended[job_id]

    def _adopt(self, host_job: HostJob, now: float) -> TrackedJob:
        job = TrackedJob(
            spec=host_job.spec,
            host_id=host_job.host_id,
            state=host_job.state,
            created=host_job.created_at.timestamp(),
            seen_at=now,
        )
        job.restarts = self.tracker.count(job.slot)
        self.jobs[job.id] = job
        return job

    def _end(self, job: TrackedJob, now: float) -> None:
        del self.jobs[job.id]
        self.ended[job.id] = now
        if job.stop_requested or not job.is_formation_job or job.index == 0:
            return
        if self.desired().get(job.key, 0) <= 0:
            return
        delay = self.tracker.on_exit(job.slot, _uptime(job, now))
        self.slots[job.key, job.index] = RestartSlot(job.key, job.index, now + delay)


def _stale(job: TrackedJob, update: HostJob) -> bool:
    """True when an update says nothing new: an earlier state, or the same record again."""
    if STATE_RANK.get(update.state, 0) < STATE_RANK.get(job.state, 0):
        return True
    known = job.host_job
    if known is None:
        return False
    return (known.state, known.port, known.exit_status, known.error) == (
        update.state,
        update.port,
        update.exit_status,
        update.error,
    )


def _uptime(job: TrackedJob, now: float) -> float:
    """How long the job ran before ending: the host's timestamps when it has them, else what we saw."""
    hj = job.host_job
    if hj is not None and hj.started_at is not None:
        end: datetime = hj.ended_at or utcnow()
        return max((end - hj.started_at).total_seconds(), 0.0)
    return now - job.up_since if job.up_since is not None else 0.0
