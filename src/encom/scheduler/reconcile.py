"""The scheduler's pure core: desired formations + actual jobs -> the jobs to start and to stop.

No I/O and no clock: the caller passes `now` and applies the plan. One-off jobs (type "") only weigh on
placement; they are never started or stopped here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Which jobs go first when a formation shrinks: the ones doing the least useful work.
STOP_PREFERENCE = {"pending": 0, "stopping": 1, "starting": 2, "up": 3}


@dataclass(frozen=True, order=True)
class FormationKey:
    app_id: str
    release_id: str
    type: str


@dataclass(frozen=True)
class JobView:
    """An active job (pending, starting, up, or stopping without us asking), as far as placement is concerned."""

    id: str
    key: FormationKey
    host_id: str
    state: str
    index: int  # the n of `web.n`; 0 when unknown
    created_at: float  # any monotonic ordering: newer jobs have larger values


@dataclass(frozen=True)
class RestartSlot:
    """The place of a job that ended on its own, held (index included) until its restart is due."""

    key: FormationKey
    index: int
    due: float


@dataclass(frozen=True)
class StartJob:
    key: FormationKey
    index: int
    host_id: str
    restart: RestartSlot | None = None  # the slot this start fills, if it is a restart


@dataclass
class Plan:
    start: list[StartJob] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # job ids
    drop: list[RestartSlot] = field(default_factory=list)  # restart slots no longer wanted
    wake_at: float | None = None  # the earliest restart still waiting for its backoff
    unplaced: list[tuple[FormationKey, int]] = field(default_factory=list)  # new dynos with no host to go to

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop or self.drop)


@dataclass
class _Occupants:
    jobs: list[JobView] = field(default_factory=list)
    slots: list[RestartSlot] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.jobs) + len(self.slots)


def reconcile(
    desired: Mapping[FormationKey, int],
    jobs: Iterable[JobView],
    slots: Iterable[RestartSlot],
    hosts: Sequence[str],
    now: float,
) -> Plan:
    """Bring every formation to its count. `hosts` are the hosts jobs may be placed on, in a stable order."""
    plan = Plan()
    all_jobs = list(jobs)
    groups = _group(all_jobs, slots)
    for key in sorted(set(groups) | set(desired)):
        occupants = groups.get(key, _Occupants())
        surplus = len(occupants) - max(desired.get(key, 0), 0)
        if surplus > 0:
            _shrink(occupants, surplus, plan)
    stopped = set(plan.stop)
    remaining = [j for j in all_jobs if j.id not in stopped]
    kept_slots = [s for g in groups.values() for s in g.slots if s not in plan.drop]
    wanted = _wanted_starts(desired, groups, remaining, kept_slots, now, plan)
    _place(wanted, remaining, hosts, plan)
    return plan


def _group(jobs: Iterable[JobView], slots: Iterable[RestartSlot]) -> dict[FormationKey, _Occupants]:
    groups: dict[FormationKey, _Occupants] = defaultdict(_Occupants)
    for job in jobs:
        if job.key.type:
            groups[job.key].jobs.append(job)
    for slot in slots:
        if slot.key.type:
            groups[slot.key].slots.append(slot)
    return dict(groups)


def _shrink(occupants: _Occupants, surplus: int, plan: Plan) -> None:
    """Drop waiting restarts first, then stop pending/starting jobs before up ones, newest first."""
    slots = sorted(occupants.slots, key=lambda s: (-s.due, -s.index))
    dropped = slots[:surplus]
    plan.drop.extend(dropped)
    surplus -= len(dropped)
    victims = sorted(occupants.jobs, key=lambda j: (STOP_PREFERENCE.get(j.state, 0), -j.created_at, -j.index))
    plan.stop.extend(j.id for j in victims[:surplus])


def _wanted_starts(
    desired: Mapping[FormationKey, int],
    groups: Mapping[FormationKey, _Occupants],
    remaining: Sequence[JobView],
    kept_slots: Sequence[RestartSlot],
    now: float,
    plan: Plan,
) -> list[tuple[FormationKey, int, RestartSlot | None]]:
    """(key, index, slot) of each job to start: due restarts first, then new dynos on the lowest free indices of
    their release, so a deploy's new jobs are `web.1..n` again while the old ones drain (as Heroku's preboot)."""
    used: dict[FormationKey, set[int]] = defaultdict(set)
    for job in remaining:
        used[job.key].add(job.index)
    for slot in kept_slots:
        used[slot.key].add(slot.index)
    wanted: list[tuple[FormationKey, int, RestartSlot | None]] = []
    for slot in sorted(kept_slots, key=lambda s: (s.key, s.index)):
        if slot.due <= now:
            wanted.append((slot.key, slot.index, slot))
        elif plan.wake_at is None or slot.due < plan.wake_at:
            plan.wake_at = slot.due
    for key in sorted(desired):
        if not key.type:
            continue
        missing = desired[key] - len(groups.get(key, _Occupants()))
        wanted.extend((key, index, None) for index in _lowest_free(used[key], missing))
    return wanted


def _lowest_free(taken: set[int], count: int) -> list[int]:
    """The `count` lowest indices from 1 not in `taken`, in one pass (linear in count + taken)."""
    free: list[int] = []
    index = 0
    while len(free) < count:
        index += 1
        if index not in taken:
            free.append(index)
    return free


def _place(
    wanted: Sequence[tuple[FormationKey, int, RestartSlot | None]],
    remaining: Sequence[JobView],
    hosts: Sequence[str],
    plan: Plan,
) -> None:
    """Each start goes to the host with the fewest jobs of its formation type, then the fewest jobs overall.
    With no host, new dynos are `unplaced` (they wait as pending); restarts keep their slots."""
    if not hosts:
        plan.unplaced.extend((key, index) for key, index, slot in wanted if slot is None)
        return
    total: Counter[str] = Counter(j.host_id for j in remaining)
    same: Counter[tuple[FormationKey, str]] = Counter((j.key, j.host_id) for j in remaining)
    order = {host: i for i, host in enumerate(hosts)}
    for key, index, slot in wanted:
        host = min(hosts, key=lambda h: (same[key, h], total[h], order[h]))
        same[key, host] += 1
        total[host] += 1
        plan.start.append(StartJob(key, index, host, slot))
