"""Restart backoff for formation jobs that end on their own (Flynn's policy).

The first 5 restarts of a dyno happen at once, the next 10 after 10 s, every later one after 30 s. A dyno that
stayed up for 5 minutes before ending starts counting from zero again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMMEDIATE_RESTARTS = 5
SHORT_DELAY_RESTARTS = 10
SHORT_DELAY = 10.0
LONG_DELAY = 30.0
RESET_AFTER_UP = 300.0


@dataclass(frozen=True)
class DynoSlot:
    """One dyno of an app, across releases: `web.2` of app X."""

    app_id: str
    type: str
    index: int


def restart_delay(previous_restarts: int) -> float:
    """The wait before the next restart of a dyno that has already been restarted `previous_restarts` times."""
    if previous_restarts < IMMEDIATE_RESTARTS:
        return 0.0
    if previous_restarts < IMMEDIATE_RESTARTS + SHORT_DELAY_RESTARTS:
        return SHORT_DELAY
    return LONG_DELAY


@dataclass
class RestartTracker:
    counts: dict[DynoSlot, int] = field(default_factory=dict)

    def count(self, slot: DynoSlot) -> int:
        return self.counts.get(slot, 0)

    def set_count(self, slot: DynoSlot, restarts: int) -> None:
        """Seed a count learnt from elsewhere (the controller's record, after a scheduler restart)."""
        if restarts > self.count(slot):
            self.counts[slot] = restarts

    def on_exit(self, slot: DynoSlot, uptime: float) -> float:
        """Record that the dyno's job ended after `uptime` seconds and will be restarted; return the delay."""
        previous = 0 if uptime >= RESET_AFTER_UP else self.count(slot)
        self.counts[slot] = previous + 1
        return restart_delay(previous)

    def forget_app(self, app_id: str) -> None:
        for slot in [s for s in self.counts if s.app_id == app_id]:
            del self.counts[slot]
