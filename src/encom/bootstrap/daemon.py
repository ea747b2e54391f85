"""`encomd`: one daemon per machine running the roles its flags choose, each in the same event loop.

A role that crashes is logged and restarted with backoff; it does not take the others down. SIGTERM/SIGINT
stop everything encomd started (containers, HAProxy). SIGUSR1 exits but leaves them running, for a restart
that re-adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from encom.api.files import PRIVATE_UMASK, tighten_state_dir, write_private
from encom.api.memory import fix_mmap_threshold, trim_periodically
from encom.api.role import RoleContext
from encom.api.settings import ALL_ROLES, Settings

log = logging.getLogger("encomd")

READY_FILE = "encomd.ready"
PID_FILE = "encomd.pid"
ROLE_START_TIMEOUT = 60.0
PR_SET_CHILD_SUBREAPER = 36

RoleRun = Callable[[RoleContext], Awaitable[None]]


def become_subreaper() -> None:
    """Orphaned container processes re-parent to us, so we can reap them (these machines have no real init)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())


def load_role(name: str) -> RoleRun:
    module = importlib.import_module(f"encom.{name}.service")
    run: RoleRun = module.run
    return run


async def supervise(name: str, run: RoleRun, ctx: RoleContext) -> None:
    """Run a role forever, restarting it after a crash (1 s, doubling up to 30 s)."""
    delay = 1.0
    while True:
        try:
            await run(ctx)
            log.warning("role %s returned; restarting", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("role %s crashed; restarting in %.0fs", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tasks: list[asyncio.Task[None]] = []
        self.contexts: list[RoleContext] = []
        self.stopping = asyncio.Event()

    async def start_roles(self) -> None:
        for name in (r for r in ALL_ROLES if r in self.settings.roles):
            ctx = RoleContext(self.settings)
            task = asyncio.create_task(supervise(name, load_role(name), ctx), name=f"role-{name}")
            self.tasks.append(task)
            self.contexts.append(ctx)
            ready = asyncio.create_task(ctx.ready.wait())
            done, _ = await asyncio.wait({ready, task}, timeout=ROLE_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
                raise RuntimeError(f"role {name} did not become ready within {ROLE_START_TIMEOUT:.0f}s")
            log.info("role %s ready", name)

    async def stop(self, detach: bool) -> None:
        for ctx in self.contexts:
            ctx.detach = detach
        for task in reversed(self.tasks):  # clients first, then the servers they talk to
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        detach = False

        def on_signal(sig: signal.Signals) -> None:
            nonlocal detach
            detach = sig == signal.SIGUSR1
            log.info("received %s; stopping (%s)", sig.name, "leaving jobs running" if detach else "all")
            self.stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.add_signal_handler(sig, on_signal, sig)
        ready_file = self.settings.data_dir / READY_FILE
        trimmer = asyncio.create_task(trim_periodically(), name="malloc-trim")
        try:
            starting = asyncio.create_task(self.start_roles())
            stop_wait = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if starting in done:
                starting.result()
                write_private(ready_file, str(os.getpid()))
                log.info("encomd ready: roles %s", ", ".join(self.settings.roles))
                await stop_wait
            else:
                starting.cancel()
        finally:
            ready_file.unlink(missing_ok=True)
            trimmer.cancel()
            await self.stop(detach)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="encomd", description="encom daemon: runs this machine's roles")
    parser.add_argument("--data-dir", type=Path, default=Path("/var/lib/encom"))
    parser.add_argument("--roles", help=f"comma-separated subset of {','.join(ALL_ROLES)}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Before any role starts: every file encomd and its children (git, the receiver hook, HAProxy, runc) create is
    # owner-only from the first byte. What a job needs to read gets an explicit mode where it is written.
    os.umask(PRIVATE_UMASK)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = Settings.load(args.data_dir)
    if args.roles:
        settings.roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    tighten_state_dir(settings.data_dir)
    become_subreaper()
    fix_mmap_threshold()  # before the roles' threads start: see encom.api.memory
    write_private(settings.data_dir / PID_FILE, str(os.getpid()))
    try:
        asyncio.run(Daemon(settings).run())
    finally:
        (settings.data_dir / PID_FILE).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
