"""One job's life: prepare the bundle, `runc run -d`, health check, discoverd registration, exit, clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encom.api.aio import wait_for
from encom.api.files import write_private
from encom.api.types import (
    RUNNING_HOST_STATES,
    HostJob,
    HostJobState,
    InstanceRegistration,
    LogLine,
    RouterLogEntry,
    utcnow,
)
from encom.discoverd.client import DiscoverdClient
from encom.host import disk, drain, outputs, process, slugs
from encom.host.attach import ConsoleSocket, JobInput, TtyPump, set_size, start_tty
from encom.host.bundle import BundleOptions, BundlePaths, write_bundle
from encom.host.events import EventHub
from encom.host.health import wait_healthy
from encom.host.logs import JobLog, Pulse, Tailer
from encom.host.ports import PortAllocator
from encom.host.registry import Registration
from encom.host.runtime import Runc, RuncError
from encom.host.uids import UidAllocator
from encom.host.unpack import UnpackError

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 5.0  # the log tailer's last lines
# Stopping a registered job: after deregistering, let the router take the server out (discoverd watch event →
# HAProxy maintenance) before looking at the job's port, then wait until no connection to it is left (the requests
# in flight have been answered), for at most CONNECTION_DRAIN_TIMEOUT, and only then SIGTERM. Measured on one
# machine: HAProxy has the server in maintenance 2-5 ms after the deregistration; the settle leaves room for a busy
# event loop or a router on another machine.
DEREGISTER_SETTLE = 0.2
CONNECTION_DRAIN_TIMEOUT = 10.0
KILL_WAIT = 10.0
HEALTH_FAIL_GRACE = 2.0
RECORD = "job.json"
STDERR_LOOKBACK = 20  # log lines searched for the reason a command could not run
PUMP_DRAIN = 2.0  # a TTY job's last output, read from the pty after the process has exited
ATTACH_WAIT = 60.0
# Jobs prepared and started at once (disk, slug unpack, bundle, `runc run`): each costs a few hundred ms of CPU in
# child processes, and a scale of 100 started all at once left nothing for the control plane on a small machine.
STARTS_AT_ONCE = 4  # for the first attacher of a job with stdin or a TTY; then its input is hung up


@dataclass
class HostDeps:
    """What every job of this host shares."""

    host_id: str
    runc: Runc
    ports: PortAllocator
    discoverd: DiscoverdClient
    slugs: slugs.SlugCache
    events: EventHub
    uids: UidAllocator
    build_dir: Path | None = None
    uv_binary: Path | None = None
    starts: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(STARTS_AT_ONCE))

    def ids_for(self, app_id: str) -> tuple[int, int]:
        """The uid and gid an app's jobs run as (gid = uid)."""
        uid = self.uids.uid_for(app_id)
        return uid, uid


def oom_killed(job_id: str) -> bool:
    """Whether the kernel OOM-killed something in the job's cgroup (v1 memory.oom_control, v2 memory.events)."""
    for path in (
        Path(f"/sys/fs/cgroup/memory/encom/{job_id}/memory.oom_control"),
        Path(f"/sys/fs/cgroup/encom/{job_id}/memory.events"),
    ):
        with contextlib.suppress(OSError, ValueError):
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
    return False


class JobRunner:
    def __init__(self, deps: HostDeps, job: HostJob, job_dir: Path) -> None:
        self.deps = deps
        self.job = job
        self.paths = BundlePaths(job_dir)
        self.log = JobLog(job_dir)
        spec = job.spec
        template = LogLine(
            timestamp=utcnow(),
            app_id=spec.app_id,
            job_id=spec.id,
            process_type=spec.process_type,
            dyno=spec.dyno,
            msg="",
        )
        self.tailer = Tailer(job_dir, template, self.log)
        self.exited = asyncio.Event()
        self.ended = asyncio.Event()
        self.stop_requested = False
        self.grace = job.spec.stop_grace
        self.failure: str | None = None  # set when the health check gives up
        self.registration: Registration | None = None
        self.task: asyncio.Task[None] | None = None
        self._subtasks: list[asyncio.Task[object]] = []
        self.input: JobInput | None = None  # an attached job's stdin (a pipe) or terminal, while it runs
        self.pump: TtyPump | None = None
        self.output = Pulse()  # fires when a TTY job wrote output and when the job has ended (attachers wait on it)
        self.adopted = False
        self.attached = False  # an attacher is connected (one at a time)
        self.ever_attached = False
        self.io_ready = asyncio.Event()  # set once `input` is what it will be (the container runs, or never will)
        if job.state not in RUNNING_HOST_STATES:
            self.io_ready.set()
            self.ended.set()
            self.exited.set()
            self.tailer.drained.set()

    @property
    def id(self) -> str:
        return self.job.spec.id

    # ------------------------------------------------------------------ records and events

    def persist(self) -> None:
        write_private(self.paths.dir / RECORD, self.job.model_dump_json())  # its env is the app's secrets

    def update(self, **changes: object) -> None:
        """Record a change that is not a state change (no event)."""
        self.job = self.job.model_copy(update=changes)
        self.persist()

    def set_state(self, state: HostJobState, **changes: object) -> None:
        previous = self.job.state
        self.job = self.job.model_copy(update={"state": state, **changes})
        self.persist()
        self.deps.events.publish(self.job)
        if state != previous:
            self.note(f"State changed from {previous} to {state}")

    def add_router_lines(self, entries: list[RouterLogEntry]) -> None:
        """The router's access lines for requests this job served, as `router[web.1]:` lines."""
        template = self.tailer.template.model_copy(update={"source": "router", "stream": "stdout"})
        self.log.append([template.model_copy(update={"timestamp": e.timestamp, "msg": e.msg}) for e in entries])

    def note(self, msg: str) -> None:
        """An `encom[web.1]: ...` line in the job's log. Not for builds: their log is the push output."""
        if not self.job.spec.builder:
            self.tailer.note(msg)

    # ------------------------------------------------------------------ life

    def start(self, adopted: bool = False) -> None:
        self.adopted = adopted
        if adopted:
            self.io_ready.set()
        coro = self._adopt() if adopted else self._run()
        self.task = asyncio.create_task(coro, name=f"job-{self.id}")

    async def _run(self) -> None:
        spec = self.job.spec
        command = spec.cmd if spec.cmd is not None else shlex.join(spec.args or [])
        self.note(f"Starting process with command `{command}`")
        try:
            async with self.deps.starts:
                await self._prepare()
                pid = None if self.stop_requested else await self._start_container()
            if pid is None:
                await self._finish(None)
                return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad slug, a full disk, runc refusing the bundle: the job could not start
            if not isinstance(exc, RuncError | UnpackError):  # those say why in the job's error; others are bugs
                log.exception("job %s could not start", self.id)
            await self.deps.runc.delete(self.id)
            self.failure = str(exc) or type(exc).__name__
            await self._finish(None)
            return
        self.io_ready.set()
        self.update(pid=pid, started_at=utcnow())
        if self.stop_requested:  # stopped while runc was starting it
            self._spawn(self._terminate(self.grace))
        if self.input is not None:
            self._spawn(self._hang_up_unless_attached())
        await self._supervise(self._exit_after_output(process.wait_child(pid)))

    async def _start_container(self) -> int:
        """`runc run -d`; an attached job keeps its stdin pipe's write end or its pty master in `self.input`."""
        spec = self.job.spec
        if spec.tty:
            return await self._start_on_tty()
        if spec.stdin:
            return await self._start_with_stdin()
        return await self._runc_run()

    async def _runc_run(self, stdin: int | None = None, console: ConsoleSocket | None = None) -> int:
        stdout, stderr = self.tailer.raw_path("stdout"), self.tailer.raw_path("stderr")
        socket_path = console.path if console is not None else None
        return await self.deps.runc.run_detached(
            self.id, self.paths.dir, self.paths.pid_file, stdout, stderr, stdin=stdin, console_socket=socket_path
        )

    async def _start_on_tty(self) -> int:
        """The pty master comes from runc over a console socket; its output is pumped into `stdout.raw`."""
        console = ConsoleSocket()
        try:
            pid, master = await start_tty(asyncio.create_task(self._runc_run(console=console)), console)
        finally:
            console.close()
        if self.job.spec.size is not None:
            set_size(master, *self.job.spec.size)
        self.pump = TtyPump(master, self.tailer.raw_path("stdout"), self.output)
        self.input = JobInput.for_tty(master)
        return pid

    async def _start_with_stdin(self) -> int:
        """runc (and so the container) reads a pipe whose write end the host keeps."""
        read_end, write_end = os.pipe()
        try:
            pid = await self._runc_run(stdin=read_end)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self.input = JobInput(write_end, tty=False)
        return pid

    async def _exit_after_output(self, waiter: Coroutine[Any, Any, int | None]) -> int | None:
        """The exit code, once a TTY job's last output has been read from its pty too."""
        code = await waiter
        if self.pump is not None:
            with contextlib.suppress(TimeoutError):
                await wait_for(self.pump.done.wait(), PUMP_DRAIN)
        return code

    async def _adopt(self) -> None:
        pid = self.job.pid or 0
        # Still our child when a previous host role in this same process started it.
        ours = _parent_of(pid) == os.getpid()
        waiter = process.wait_child(pid) if ours else _await_none(process.wait_adopted(pid))
        if self.job.state == "stopping":
            self.stop_requested = True
            self._spawn(self._stop_adopted())
        await self._supervise(waiter)

    async def _stop_adopted(self) -> None:
        """Finish the stop a previous encomd began: it may have left the job registered (a detach does, until the
        TTL), so deregister, drain, then SIGTERM (again, perhaps) with a short grace."""
        spec = self.job.spec
        if spec.service and self.job.port is not None:
            await self.deps.discoverd.deregister(spec.service, self.id)
            await self._drain()
        await self._terminate(HEALTH_FAIL_GRACE)

    async def _prepare(self) -> None:
        spec = self.job.spec
        uid, gid = self.deps.ids_for(spec.app_id)
        await asyncio.to_thread(disk.create, self.paths.dir, spec.resources.temp_disk, uid, gid)
        if spec.artifact_url:
            tarball = await self.deps.slugs.fetch(spec.artifact_url)
            await asyncio.to_thread(slugs.extract, tarball, self.paths.app, uid, gid, spec.resources.temp_disk)
        output_dir = None
        if spec.builder:
            output_dir = outputs.output_dir(self.paths.dir)
            await asyncio.to_thread(outputs.prepare, output_dir, uid, gid)
        opts = BundleOptions(
            port=self.job.port,
            uid=uid,
            gid=gid,
            build_dir=self.deps.build_dir,
            uv_binary=self.deps.uv_binary,
            output_dir=output_dir,
        )
        await asyncio.to_thread(write_bundle, spec, self.paths, opts)

    async def _supervise(self, waiter: Coroutine[Any, Any, int | None]) -> None:
        exit_task = asyncio.create_task(waiter)
        exit_task.add_done_callback(lambda _: self.exited.set())
        self._spawn(self.tailer.run(self.exited))
        if self.job.state in ("starting", "up") and not self.stop_requested:
            await self._become_up(exit_task)
        code = await exit_task
        await self._finish(code)

    async def _become_up(self, exit_task: asyncio.Task[int | None]) -> None:
        """Health check then registration, unless the process exits first."""
        spec = self.job.spec
        if spec.check is not None and self.job.port is not None:
            check = asyncio.create_task(wait_healthy(spec.check, self.job.port))
            await asyncio.wait({check, exit_task}, return_when=asyncio.FIRST_COMPLETED)
            if not check.done():
                check.cancel()
                return
            reason = check.result()
            if reason is not None:
                if not exit_task.done():
                    self.failure = reason
                    await self._terminate(HEALTH_FAIL_GRACE)
                return
        if spec.service and self.job.port is not None:
            self.registration = Registration(self.deps.discoverd, spec.service, self.id, self._instance())
            self.registration.start()
            registered = asyncio.create_task(self.registration.registered.wait())
            await asyncio.wait({registered, exit_task}, return_when=asyncio.FIRST_COMPLETED)
            registered.cancel()
            if exit_task.done() or self.stop_requested:
                return
        if self.job.state != "up" and not self.stop_requested:
            self.set_state("up")

    def _instance(self) -> InstanceRegistration:
        spec = self.job.spec
        meta = {
            "job_id": spec.id,
            "app_id": spec.app_id,
            "release_id": spec.release_id,
            "process_type": spec.process_type,
            "host_id": self.deps.host_id,
        }
        return InstanceRegistration(addr=f"127.0.0.1:{self.job.port}", meta=meta)

    async def _deregister(self) -> bool:
        """Take the job out of discoverd; whether it had been registered (so the router may be sending it requests)."""
        if self.registration is None:
            return False
        registration, self.registration = self.registration, None
        was_registered = registration.registered.is_set()
        await registration.stop()
        return was_registered

    async def _drain(self) -> None:
        """Until nothing is connected to the job's port (bounded), or the process exits by itself."""
        port = self.job.port
        if port is None or self.exited.is_set():
            return
        started = asyncio.get_running_loop().time()
        self.note(f"Draining connections to port {port}")
        drained = asyncio.create_task(drain.wait_drained(port, DEREGISTER_SETTLE, CONNECTION_DRAIN_TIMEOUT))
        exited = asyncio.create_task(self.exited.wait())
        try:
            await asyncio.wait({drained, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            drained.cancel()
        if drained.done() and not drained.cancelled() and (left := drained.result()):
            self.note(f"Connections not drained within {CONNECTION_DRAIN_TIMEOUT:g}s ({left} left)")
        log.debug("job %s drained in %.3fs", self.id, asyncio.get_running_loop().time() - started)

    async def _terminate(self, grace: float) -> None:
        """SIGTERM, then SIGKILL once `grace` has passed."""
        await self.deps.runc.kill(self.id, "TERM")
        try:
            await wait_for(self.exited.wait(), grace)
        except TimeoutError:
            await self.deps.runc.kill(self.id, "KILL")

    async def _finish(self, code: int | None) -> None:
        self.exited.set()
        self._close_io()
        self.io_ready.set()
        if not self.tailer.running:  # never started: what runc printed still belongs in the job's log
            self.tailer.poll(final=True)
            self.tailer.drained.set()
        await self._deregister()
        oom = oom_killed(self.id)
        await self.deps.runc.delete(self.id)
        with contextlib.suppress(TimeoutError):
            await wait_for(self.tailer.drained.wait(), DRAIN_TIMEOUT)
        self.deps.ports.release(self.job.port)
        output_error = await self._collect_outputs(code)
        await asyncio.to_thread(self._remove_files)
        state, changes = self._outcome(code, oom)
        if output_error is not None and state == "down":
            state, changes = "crashed", {"exit_status": code, "error": output_error}
        if state == "failed":
            self.note(f"Failed to start: {changes['error']}")
        elif code is not None:
            self.note(f"Process exited with status {code}" + (" (out of memory)" if oom else ""))
        self.set_state(state, ended_at=utcnow(), **changes)
        self.ended.set()
        self.log.changed.fire()  # followers end once the job has (see JobManager.job_log)
        self.output.fire()

    async def _collect_outputs(self, code: int | None) -> str | None:
        """A build that succeeded: its declared outputs go to the blobstore, from the host (the container is gone).
        Why they could not, if so. The output directory goes either way."""
        spec = self.job.spec
        if not spec.builder:
            return None
        directory = outputs.output_dir(self.paths.dir)
        try:
            if spec.outputs and code == 0 and self.failure is None and not self.stop_requested:
                uid, _ = self.deps.ids_for(spec.app_id)
                await outputs.collect(directory, spec.outputs, uid, self.deps.slugs.blobstore)
        except outputs.OutputError as exc:
            return str(exc)
        except OSError as exc:
            return f"build outputs could not be read: {exc.strerror or exc}"
        finally:
            await asyncio.to_thread(outputs.remove, directory)
        return None

    def hang_up(self) -> None:
        """The attacher left, or never came: as when an ssh session drops, the job's stdin ends (a pipe) or its
        terminal hangs up (SIGHUP from the kernel), so an interactive job does not wait for input forever. Its
        output so far stays in `stdout.raw`."""
        if self.input is None or self.exited.is_set():
            return
        if self.input.tty:
            self._close_io()
        else:
            self.input.eof()

    async def _hang_up_unless_attached(self) -> None:
        """A client that asked for an attached job and died before attaching leaves nobody to end its input."""
        with contextlib.suppress(TimeoutError):
            await wait_for(self.exited.wait(), ATTACH_WAIT)
        if not self.ever_attached and not self.exited.is_set():
            self.note(f"No client attached within {ATTACH_WAIT:.0f}s: hanging up")
            self.hang_up()

    def _close_io(self) -> None:
        if self.input is not None:
            self.input.close()
            self.input = None
        if self.pump is not None:
            self.pump.close()

    def _outcome(self, code: int | None, oom: bool) -> tuple[HostJobState, dict[str, object]]:
        if self.failure is not None:
            return "failed", {"error": self.failure}
        if self.stop_requested or code == 0:
            return "down", {"exit_status": code}
        if code is None:
            return "crashed", {"error": "exited while not supervised by this encomd; exit status unknown"}
        if oom:
            return "crashed", {"exit_status": code, "error": "out of memory"}
        error = f"exited with status {code}"
        if code in (126, 127):  # bash could not run the command (a bad Procfile line): failed, and say why
            reason = self._last_stderr()
            return "failed", {"exit_status": code, "error": f"{error}: {reason}" if reason else error}
        return "crashed", {"exit_status": code, "error": error}

    def _last_stderr(self) -> str | None:
        for line in reversed(self.log.tail(STDERR_LOOKBACK)):
            if line.source == "app" and line.stream == "stderr" and line.msg.strip():
                return line.msg.strip()
        return None

    def _remove_files(self) -> None:
        """An ended job keeps its record and logs; its disk (slug copy, /tmp) and rootfs go."""
        disk.remove(self.paths.dir)
        if not disk.is_mounted(self.paths.disk):
            shutil.rmtree(self.paths.disk, ignore_errors=True)
        shutil.rmtree(self.paths.rootfs, ignore_errors=True)
        if self.job.spec.stdin or self.job.spec.tty:
            return  # an attacher may not have read them yet (they go with the job's directory)
        for raw in ("stdout.raw", "stderr.raw"):
            (self.paths.dir / raw).unlink(missing_ok=True)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        self._subtasks.append(asyncio.create_task(coro))

    # ------------------------------------------------------------------ requests

    async def stop(self, grace: float) -> None:
        """Deregister, drain (a registered job), SIGTERM, SIGKILL after `grace`; returns once the job has ended."""
        if self.ended.is_set():
            return
        if not self.stop_requested:
            self.stop_requested = True
            self.grace = grace
            self.note("Stopping process with SIGTERM")
            self.set_state("stopping")
            registered = await self._deregister()
            if self.job.pid is not None:
                if registered:  # requests may be in flight: let them finish first (workers, one-offs: at once)
                    await self._drain()
                await self._terminate(grace)
        await self.ended.wait()

    async def detach(self) -> None:
        """Stop supervising, leaving the container running and registered (until its TTL) for the next encomd."""
        for task in [self.task, *self._subtasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self.task, *self._subtasks] if t is not None), return_exceptions=True)
        if self.registration is not None:
            await self.registration.stop(deregister=False)
        self._close_io()  # as when encomd exits: a TTY job gets a hangup, a stdin pipe its end
        self.tailer.poll()


def _parent_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


async def _await_none(aw: Awaitable[None]) -> int | None:
    await aw
    return None
