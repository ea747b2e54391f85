"""Attached jobs: the host's attach websocket with real runc containers (stdin pipes, pseudo-terminals, signals),
and the controller's proxy of it. Ports 14000-14999 only."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from encom.api import attach
from encom.api.attach import AttachExit, Kind
from encom.api.client import ca_context
from encom.api.errors import ApiError
from encom.api.settings import Ports, Settings
from encom.api.types import ReleaseCreate
from encom.bootstrap.tls import ensure_tls
from encom.controller.client import ControllerClient
from encom.host import runner
from encom.host.client import HostClient
from tests.integration import roles
from tests.integration.conftest import running_controller
from tests.integration.roles import free_ports
from tests.integration.test_host import Cluster, host_cluster, spec

pytestmark = [
    pytest.mark.integration,
]

WAIT = 10.0
within = partial(roles.within, seconds=WAIT)


def pick_ports() -> Ports:
    """Roles in 14000-14499, a block of job ports in 14500-14999."""
    free = free_ports(14000, 14499, 4)
    job_start = random.randrange(14500, 14990, 10)
    return Ports(
        discoverd=free[0],
        blobstore=free[1],
        host=free[2],
        controller=free[3],
        job_start=job_start,
        job_end=job_start + 9,
    )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with host_cluster(Settings(data_dir=tmp_path, ports=pick_ports())) as c:
        yield c


@dataclass
class Seen:
    """What an attacher received so far."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    errors: list[str] = field(default_factory=list)
    exit: AttachExit | None = None
    closed: bool = False

    def add(self, message: bytes | str) -> None:
        frame = attach.decode(message)
        if frame.kind == Kind.STDOUT:
            self.stdout += frame.data
        elif frame.kind == Kind.STDERR:
            self.stderr += frame.data
        elif frame.kind == Kind.ERROR:
            self.errors.append(frame.text())
        elif frame.kind == Kind.EXIT:
            self.exit = attach.parse_exit(frame)
        else:
            raise AssertionError(f"unexpected frame {frame}")


async def read_until(conn: ClientConnection, seen: Seen, done: Callable[[Seen], bool], what: str) -> Seen:
    async def go() -> Seen:
        while not done(seen):
            try:
                seen.add(await conn.recv())
            except Exception:
                seen.closed = True
                if done(seen):
                    break
                raise
        return seen

    try:
        return await asyncio.wait_for(go(), WAIT)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}; so far: {seen}")


def ended(seen: Seen) -> bool:
    return seen.exit is not None


def stdin(data: bytes) -> bytes:
    return attach.Frame(Kind.STDIN, data).encode()


def attached_spec(**changes: Any) -> Any:
    return spec(process_type="", dyno="run.1", stdin=True, **changes)


async def test_stdin_piped_to_cat_comes_back_byte_exact(cluster: Cluster) -> None:
    job = await cluster.host.add_job(attached_spec(cmd="cat"))
    sent = b"first line\n" + bytes(range(256)) + b"\nno newline at the end"
    async with cluster.host.attach(job.id) as conn:
        for i in range(0, len(sent), 7):
            await conn.send(stdin(sent[i : i + 7]))
        await conn.send(attach.eof())
        seen = await read_until(conn, Seen(), ended, "cat to echo its stdin and exit")
    assert bytes(seen.stdout) == sent
    assert seen.exit == AttachExit(state="down", exit_status=0)
    assert seen.errors == []
    lines = [line.msg for line in await cluster.log_lines(job.id)]
    assert lines[0] == "first line" and lines[-1] == "no newline at the end"  # the app log still gets it


async def test_exit_status_stderr_and_a_late_attacher(cluster: Cluster) -> None:
    job = await cluster.host.add_job(attached_spec(cmd="printf 'out'; printf 'err\\n' >&2; exit 42"))
    await cluster.wait_job(job.id, "crashed")
    async with cluster.host.attach(job.id) as conn:
        seen = await read_until(conn, Seen(), ended, "the ended job's output and exit")
    assert (bytes(seen.stdout), bytes(seen.stderr)) == (b"out", b"err\n")
    assert seen.exit is not None and (seen.exit.state, seen.exit.exit_status) == ("crashed", 42)


async def test_interrupt_reaches_a_trap(cluster: Cluster) -> None:
    script = "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.05; done"
    job = await cluster.host.add_job(attached_spec(cmd=script))
    async with cluster.host.attach(job.id) as conn:
        seen = await read_until(conn, Seen(), lambda s: b"ready\n" in s.stdout, "the trap to be set")
        await conn.send(attach.signal("STOP"))  # not one a client may send
        await conn.send(bytes([99]) + b"junk")  # an unknown kind
        await conn.send(stdin(b"x" * (attach.MAX_DATA + 1)))  # too large
        await conn.send(attach.Frame(Kind.EXIT, b"{}").encode())  # a job-to-client kind
        await conn.send(attach.resize(10, 10))  # no terminal
        await read_until(conn, seen, lambda s: len(s.errors) == 5, "an error frame for each bad frame")
        await conn.send(attach.signal("INT"))
        await read_until(conn, seen, ended, "the job to exit from its trap")
    assert seen.stdout == b"ready\ngot-int\n"
    assert seen.exit is not None and seen.exit.exit_status == 7
    assert "signal must be one of" in seen.errors[0]
    assert "unknown frame kind 99" in seen.errors[1]
    assert "larger than" in seen.errors[2]
    assert "go from the job to the client" in seen.errors[3]
    assert "has no terminal" in seen.errors[4]


async def test_tty_job_is_interactive(cluster: Cluster) -> None:
    job = await cluster.host.add_job(attached_spec(cmd="sh", tty=True, size=(24, 80)))
    async with cluster.host.attach(job.id) as conn:
        seen = await read_until(conn, Seen(), lambda s: s.stdout.endswith(b"$ "), "the shell's prompt")
        await conn.send(stdin(b"tty; stty size\n"))
        await read_until(conn, seen, lambda s: b"24 80" in s.stdout, "the terminal and its size")
        assert b"tty; stty size" in seen.stdout  # the terminal echoes the input
        assert re.search(rb"/dev/pts/\d+", bytes(seen.stdout))
        await conn.send(attach.resize(40, 132))
        await conn.send(stdin(b"stty size\n"))
        await read_until(conn, seen, lambda s: b"40 132" in s.stdout, "the new size")
        await conn.send(stdin(b"sleep 100\n"))
        await read_until(conn, seen, lambda s: s.stdout.endswith(b"sleep 100\r\n"), "sleep to start")
        await conn.send(stdin(b"\x03"))  # Ctrl-C interrupts the command, not the shell
        await read_until(conn, seen, lambda s: s.stdout.endswith(b"$ "), "the prompt after Ctrl-C")
        await conn.send(stdin(b"exit 3\n"))
        await read_until(conn, seen, ended, "the shell to exit")
    assert seen.exit is not None and (seen.exit.state, seen.exit.exit_status) == ("crashed", 3)
    assert seen.errors == []


async def test_one_attacher_at_a_time_and_auth(cluster: Cluster) -> None:
    job = await cluster.host.add_job(attached_spec(cmd="cat"))
    async with cluster.host.attach(job.id) as first:
        async with cluster.host.attach(job.id) as second:
            refused = await read_until(second, Seen(), lambda s: s.closed, "the second attacher to be closed")
        assert refused.errors == [f"job {job.id} already has an attached client"]
        await first.send(stdin(b"still here"))
        await first.send(attach.eof())
        seen = await read_until(first, Seen(), ended, "the first attacher's session to go on")
    assert seen.stdout == b"still here"

    async with HostClient(cluster.settings.host_url, "wrong") as bad:
        with pytest.raises(ApiError) as exc:
            async with bad.attach(job.id):
                pass
    assert exc.value.status == 401
    with pytest.raises(ApiError) as exc:
        async with cluster.host.attach("no-such-job"):
            pass
    assert exc.value.status == 404


async def test_output_only_for_a_job_without_stdin(cluster: Cluster) -> None:
    job = await cluster.host.add_job(spec(cmd="echo ready; sleep 0.3; echo done"))
    async with cluster.host.attach(job.id) as conn:
        await conn.send(stdin(b"ignored"))
        seen = await read_until(conn, Seen(), ended, "the job to end")
    assert seen.stdout.endswith(b"done\n")
    assert seen.errors == [f"job {job.id} was not started attached: it takes no input"]


async def test_an_adopted_job_gives_output_and_exit_but_no_stdin(cluster: Cluster) -> None:
    job = await cluster.host.add_job(attached_spec(cmd="echo started; sleep 30"))
    async with cluster.host.attach(job.id) as conn:
        await read_until(conn, Seen(), lambda s: s.stdout == b"started\n", "the job to start")
    await cluster.stop_host(detach=True)
    await cluster.start_host()
    async with cluster.host.attach(job.id) as conn:
        seen = await read_until(
            conn, Seen(), lambda s: s.stdout == b"started\n" and bool(s.errors), "output and an error"
        )
        assert seen.errors == [f"the stdin and terminal of job {job.id} cannot be reattached after an encomd restart"]
        await cluster.host.stop_job(job.id)
        await read_until(conn, seen, ended, "the exit after the stop")
    assert seen.exit is not None and seen.exit.state == "down"


async def test_a_dropped_attacher_ends_stdin_or_hangs_up_the_terminal(cluster: Cluster) -> None:
    piped = await cluster.host.add_job(attached_spec(cmd="cat"))
    on_tty = await cluster.host.add_job(attached_spec(cmd="sh", tty=True))
    async with cluster.host.attach(piped.id) as conn:
        await conn.send(stdin(b"partial"))
        await read_until(conn, Seen(), lambda s: s.stdout == b"partial", "cat to echo")
    async with cluster.host.attach(on_tty.id) as conn:
        await read_until(conn, Seen(), lambda s: s.stdout.endswith(b"$ "), "the shell's prompt")
    assert (await cluster.wait_job(piped.id, "down", "crashed")).state == "down"
    assert (await cluster.wait_job(on_tty.id, "down", "crashed")).state == "crashed"  # the shell lost its terminal


async def test_a_job_nobody_attaches_to_is_hung_up(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client that asked for it died before attaching: the job must not wait for input forever."""
    monkeypatch.setattr(runner, "ATTACH_WAIT", 1.0)
    piped = await cluster.host.add_job(attached_spec(cmd="cat"))
    on_tty = await cluster.host.add_job(attached_spec(cmd="sh", tty=True))
    assert (await cluster.wait_job(piped.id, "down", "crashed")).state == "down"  # cat read its stdin's end
    assert (await cluster.wait_job(on_tty.id, "down", "crashed")).state == "crashed"
    notes = [line.msg async for line in cluster.host.job_log(piped.id) if line.source == "encom"]
    assert "No client attached within 1s: hanging up" in notes


async def test_an_attacher_in_time_keeps_the_job_going(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "ATTACH_WAIT", 1.0)
    job = await cluster.host.add_job(attached_spec(cmd="cat"))
    async with cluster.host.attach(job.id) as conn:
        await asyncio.sleep(1.5)  # past ATTACH_WAIT
        await conn.send(stdin(b"still here"))
        seen = await read_until(conn, Seen(), lambda s: s.stdout == b"still here", "cat to echo")
        await conn.send(attach.eof())
        await read_until(conn, seen, ended, "cat to exit")
    assert seen.exit == AttachExit(state="down", exit_status=0)


# ---------------------------------------------------------------- through the controller


async def _controller_app(client: ControllerClient, name: str) -> None:
    app = await client.create_app(name)
    release = await client.create_release(ReleaseCreate(app_id=app.id))
    await within(client.deploy_and_wait(app.id, release.id, {}), f"the release of {name}")


async def test_controller_proxies_attach(cluster: Cluster) -> None:
    ensure_tls(cluster.settings)
    async with running_controller(cluster.settings) as client:
        await _controller_app(client, "myapp")
        await _controller_app(client, "other")
        job = await client.run_job("myapp", ["sh", "-c", "cat; exit 5"], attach=True)
        async with client.attach_job("myapp", job.id[:8]) as conn:
            await conn.send(stdin(b"through the controller"))
            await conn.send(attach.eof())
            seen = await read_until(conn, Seen(), ended, "the job via the controller")
        assert seen.stdout == b"through the controller"
        assert seen.exit is not None and seen.exit.exit_status == 5

        for app, job_ref in (("other", job.id), ("myapp", "no-such-job")):
            with pytest.raises(ApiError) as exc:
                async with client.attach_job(app, job_ref):
                    pass
            assert exc.value.status == 404, (app, job_ref)
        async with ControllerClient(
            cluster.settings.controller_url, "wrong-key", verify=ca_context(cluster.settings.ca_cert_path)
        ) as bad:
            with pytest.raises(ApiError) as exc:
                async with bad.attach_job("myapp", job.id):
                    pass
        assert exc.value.status == 401
