"""Waiting for container inits: our children (encomd is a child subreaper) through pidfds, adopted ones by
polling /proc. Zombies are never left behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from encom.api.procs import process_alive

log = logging.getLogger(__name__)

ADOPTED_POLL = 0.5
REAP_INTERVAL = 5.0

alive = process_alive  # what the host's modules call


async def wait_child(pid: int) -> int | None:
    """Wait for our child `pid` to exit and reap it: its exit code (128+N when killed by signal N), or None when
    it is not our child (someone else reaped it or we are not its subreaper)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return _reap(pid)
    exited = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return _reap(pid)


def _reap(pid: int) -> int | None:
    try:
        got, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return _exit_code(status) if got == pid else None


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


async def wait_adopted(pid: int) -> None:
    """Wait for a process that is not our child (started by a previous encomd) to end."""
    while alive(pid):  # noqa: ASYNC110 - not our child: no pidfd wake-up to wait on
        await asyncio.sleep(ADOPTED_POLL)


def zombie_children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == me and fields.get("State", "").strip().startswith("Z"):
            found.add(int(entry))
    return found


async def reap_orphans(tracked: Callable[[], set[int]]) -> None:
    """Reap zombies re-parented to us that nobody waits for. A zombie is only taken once it has stayed one for a
    whole interval, so processes whose owners reap them promptly (asyncio subprocesses) are left alone."""
    seen: set[int] = set()
    while True:
        await asyncio.sleep(REAP_INTERVAL)
        zombies = zombie_children() - tracked()
        _reap_now(zombies & seen)
        seen = zombies


def _reap_now(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
            log.debug("reaped orphan %d", pid)
