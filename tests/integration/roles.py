"""Running encom roles in the test's event loop on loopback ports, as encomd runs them (`encom.<role>.service.run`).

Each test file keeps its own port range, so that files run side by side do not take each other's ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from encom.api.role import RoleContext
from encom.api.settings import Ports, Settings
from encom.bootstrap.local import ports_from_base

WAIT = 10.0
START_TIMEOUT = 20.0
T = TypeVar("T")
RoleRun = Callable[[RoleContext], Coroutine[Any, Any, None]]


def is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(low: int, high: int, count: int) -> list[int]:
    """`count` distinct free loopback ports in low-high (inclusive)."""
    found: list[int] = []
    for port in random.sample(range(low, high + 1), high + 1 - low):
        if is_free(port):
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError(f"no {count} free ports in {low}-{high}")


def free_port(low: int, high: int) -> int:
    """A free loopback port in low-high (inclusive)."""
    return free_ports(low, high, 1)[0]


def cluster_ports(base: int) -> Ports:
    """`ports_from_base(base)` with the TCP routes (base+100..199) and job ports (base+500..599) inside base..base+999,
    so that a whole cluster fits in one test file's range."""
    tcp = {"tcp_route_start": base + 100, "tcp_route_end": base + 199}
    jobs = {"job_start": base + 500, "job_end": base + 599}
    return ports_from_base(base).model_copy(update=tcp | jobs)


async def within(awaitable: Awaitable[T], what: str, seconds: float = WAIT) -> T:
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        pytest.fail(f"timed out after {seconds}s waiting for {what}")


async def eventually(check: Callable[[], Awaitable[T]], what: str, seconds: float = WAIT, poll: float = 0.05) -> T:
    """The first truthy result of `check`, polled."""

    async def first() -> T:
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(poll)

    return await within(first(), what, seconds)


def role_run(name: str) -> RoleRun:
    """`encom.<name>.service.run`."""
    run: RoleRun = importlib.import_module(f"encom.{name}.service").run
    return run


@dataclass
class Role:
    name: str
    ctx: RoleContext
    task: asyncio.Task[None]

    async def stop(self, seconds: float = WAIT) -> None:
        self.task.cancel()
        await asyncio.wait({self.task}, timeout=seconds)
        assert self.task.done(), f"the {self.name} role did not stop within {seconds:.0f}s"
        if not self.task.cancelled() and (error := self.task.exception()) is not None:
            raise AssertionError(f"the {self.name} role failed while stopping: {error!r}") from error


async def start_role(run: RoleRun, settings: Settings, name: str, seconds: float = START_TIMEOUT) -> Role:
    """Run a role as a task until it is ready; fails the test when it ends or times out first."""
    ctx = RoleContext(settings)
    task = asyncio.create_task(run(ctx), name=f"role-{name}")
    ready = asyncio.create_task(ctx.ready.wait())
    done, _ = await asyncio.wait({ready, task}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        error = task.exception() if task.done() and not task.cancelled() else f"timeout after {seconds:.0f}s"
        task.cancel()
        await asyncio.wait({task}, timeout=WAIT)
        pytest.fail(f"the {name} role did not become ready: {error}")
    return Role(name, ctx, task)


@contextlib.asynccontextmanager
async def running_role(
    run: RoleRun,
    settings: Settings,
    name: str,
    start_timeout: float = START_TIMEOUT,
    stop_timeout: float = WAIT,
) -> AsyncIterator[RoleContext]:
    """A role running from ready until the block ends, then cancelled (and checked to have stopped)."""
    role = await start_role(run, settings, name, start_timeout)
    try:
        yield role.ctx
    finally:
        await role.stop(stop_timeout)
