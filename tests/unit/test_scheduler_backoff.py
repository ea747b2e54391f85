"""Restart backoff: 5 immediate restarts, then 10 at 10 s, then every 30 s; back to zero after 5 minutes up."""

from __future__ import annotations

from encom.scheduler.backoff import DynoSlot, RestartTracker, restart_delay

SLOT = DynoSlot("app", "web", 1)


def test_schedule() -> None:
    assert [restart_delay(n) for n in range(5)] == [0.0] * 5
    assert [restart_delay(n) for n in range(5, 15)] == [10.0] * 10
    assert [restart_delay(n) for n in (15, 16, 100)] == [30.0] * 3


def test_tracker_counts_and_delays() -> None:
    tracker = RestartTracker()
    delays = [tracker.on_exit(SLOT, uptime=1.0) for _ in range(17)]
    assert delays[:5] == [0.0] * 5
    assert delays[5:15] == [10.0] * 10
    assert delays[15:] == [30.0, 30.0]
    assert tracker.count(SLOT) == 17


def test_counter_resets_after_five_minutes_up() -> None:
    tracker = RestartTracker()
    for _ in range(8):
        tracker.on_exit(SLOT, uptime=1.0)
    assert tracker.on_exit(SLOT, uptime=299.0) == 10.0
    assert tracker.on_exit(SLOT, uptime=300.0) == 0.0
    assert tracker.count(SLOT) == 1


def test_slots_are_independent_and_forgotten_with_their_app() -> None:
    tracker = RestartTracker()
    other = DynoSlot("app", "web", 2)
    elsewhere = DynoSlot("other-app", "web", 1)
    for _ in range(6):
        tracker.on_exit(SLOT, uptime=0.0)
    assert tracker.on_exit(other, uptime=0.0) == 0.0
    tracker.on_exit(elsewhere, uptime=0.0)
    tracker.forget_app("app")
    assert tracker.count(SLOT) == 0 and tracker.count(other) == 0
    assert tracker.count(elsewhere) == 1


def test_seeded_counts_only_grow() -> None:
    tracker = RestartTracker()
    tracker.set_count(SLOT, 7)
    tracker.set_count(SLOT, 2)
    assert tracker.count(SLOT) == 7
    assert tracker.on_exit(SLOT, uptime=0.0) == 10.0
