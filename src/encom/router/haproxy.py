"""The HAProxy process: master-worker mode (`-W -S <master socket>`), reloads by SIGUSR2 to the master, state on
disk under the router dir (haproxy.cfg, *.map, haproxy.pid, sockets, haproxy.log for its messages and access.fifo
as its stdout for the access lines: see access.py).

The master runs in its own session and is not tied to our lifetime, so it can be left running (`detach`) and
adopted by the next router through its pid file. Its exit is noticed through a pidfd, for a child and an
adopted process alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from encom.api.files import write_private
from encom.api.procs import process_alive
from encom.router.access import is_fifo_of, open_fifo_for_haproxy
from encom.router.config import Options, render_cert_check
from encom.router.runtime import RuntimeAPI, RuntimeAPIError

HAPROXY_BIN = "/usr/sbin/haproxy"
START_TIMEOUT = 10.0
RELOAD_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
STDOUT_FD = 1

log = logging.getLogger(__name__)


class HAProxyError(Exception):
    """HAProxy could not be started, reloaded or reached."""


class ConfigError(HAProxyError):
    """`haproxy -c` refused a configuration; the running one was kept."""


@dataclass(frozen=True)
class ProcState:
    """What the master CLI's `show proc` reports."""

    master: int
    reloads: int
    failed: int
    workers: tuple[int, ...]  # current workers (old ones still draining are not listed here)


def parse_show_proc(text: str) -> ProcState:
    master = reloads = failed = 0
    workers: list[int] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("#"):
            section = line.strip("# ").lower()
            continue
        cols = line.split()
        if len(cols) < 3 or not cols[0].isdigit():
            continue
        if cols[1] == "master":
            master, reloads = int(cols[0]), int(cols[2])
            if "[failed:" in line:
                failed = int(line.split("[failed:", 1)[1].split("]", 1)[0])
        elif cols[1] == "worker" and section == "workers":
            workers.append(int(cols[0]))
    return ProcState(master, reloads, failed, tuple(workers))


def reap(pid: int) -> None:
    """Collect `pid` if it is our (or, as a subreaper, our orphaned) child; ignore it otherwise."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class HAProxy:
    def __init__(self, options: Options, binary: str = HAPROXY_BIN) -> None:
        self.options = options
        self.binary = binary
        self.runtime = RuntimeAPI(options.stats_socket)
        self.master_cli = RuntimeAPI(options.master_socket)
        self.pid: int | None = None  # the master
        self.adopted = False
        self.workers: tuple[int, ...] = ()  # the current workers, as of the last start or reload
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ files

    def write_file(self, path: Path, text: str) -> None:
        write_private(path, text)

    async def validate(self, config: str) -> Path:
        """Write `config` next to the live one and check it with `haproxy -c`; returns the checked file."""
        candidate = self.options.config_path.with_name("haproxy.cfg.new")
        write_private(candidate, config)
        await self._check(candidate, "the configuration")
        return candidate

    async def check_cert(self, pem: str) -> None:
        """Raise ConfigError unless HAProxy can serve `pem` (certificate chain + key) on a TLS bind."""
        certs = self.options.certs_dir
        certs.mkdir(mode=0o700, exist_ok=True)
        pem_path, cfg_path = certs / "check.pem.new", certs / "check.cfg.new"
        try:
            write_private(pem_path, pem)
            write_private(cfg_path, render_cert_check(pem_path))
            await self._check(cfg_path, "the certificate")
        finally:
            pem_path.unlink(missing_ok=True)
            cfg_path.unlink(missing_ok=True)

    async def _check(self, path: Path, what: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.binary, "-c", "-q", "-f", str(path),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(START_TIMEOUT):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ConfigError("haproxy -c timed out") from None
        if proc.returncode != 0:
            raise ConfigError(f"haproxy refused {what}:\n{out.decode(errors='replace').strip()}")

    # ------------------------------------------------------------ lifecycle

    def running(self) -> bool:
        return self.pid is not None and process_alive(self.pid)

    async def adopt(self) -> bool:
        """Take over a HAProxy left running by a previous router (same config path), if there is one."""
        try:
            pid = int(self.options.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if not process_alive(pid) or not self._is_ours(pid):
            return False
        try:
            await self.runtime.pid()
        except (RuntimeAPIError, KeyError, ValueError):
            return False
        if self.options.access_log and not is_fifo_of(pid, STDOUT_FD, self.options.access_pipe):
            log.warning("haproxy %d does not write access lines to %s (an older encom started it): restarting it",
                        pid, self.options.access_pipe)  # fmt: skip
            self.pid = pid
            await self.stop()
            return False
        self.pid, self.adopted, self._proc = pid, True, None
        log.info("adopted haproxy master %d", pid)
        return True

    def _is_ours(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return bool(argv) and b"haproxy" in argv[0] and str(self.options.config_path).encode() in argv

    async def start(self, config: str | None = None) -> None:
        """Start HAProxy with `config` (validated and installed first), or with the installed config if None."""
        if config is not None:
            candidate = await self.validate(config)
            candidate.replace(self.options.config_path)
        self.options.pid_path.unlink(missing_ok=True)
        logfile = os.open(self.options.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        stdout = open_fifo_for_haproxy(self.options.access_pipe) if self.options.access_log else logfile
        try:
            # Popen, not asyncio's subprocess: its transport kills the child when closed, and we may detach.
            self._proc = subprocess.Popen(  # noqa: ASYNC220 (fork+exec only, it does not wait)
                [
                    self.binary, "-W",
                    "-S", f"{self.options.master_socket},mode,600",
                    "-f", str(self.options.config_path),
                    "-p", str(self.options.pid_path),
                ],
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=logfile,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        finally:
            os.close(logfile)
            if stdout != logfile:
                os.close(stdout)
        self.pid, self.adopted = self._proc.pid, False
        try:
            await self._wait_ready()
        except HAProxyError:
            await self.stop()
            raise
        log.info("haproxy master %d started", self.pid)

    async def _wait_ready(self) -> None:
        """Until the worker answers on the stats socket (its listeners are bound before it forks)."""
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running():
                raise HAProxyError(f"haproxy exited while starting:\n{self.log_tail()}")
            try:
                state = parse_show_proc(await self.master_cli.command("show proc"))
                if state.workers and await self.runtime.pid() in state.workers:
                    self.workers = state.workers
                    return
            except (RuntimeAPIError, KeyError, ValueError) as exc:
                last = exc
            await asyncio.sleep(0.05)
        raise HAProxyError(f"haproxy did not answer within {START_TIMEOUT:.0f}s ({last}):\n{self.log_tail()}")

    async def reload(self, config: str) -> None:
        """Validate `config`, install it and reload (new worker; old ones finish their requests). On a refused
        config the running HAProxy keeps its current one and ConfigError is raised."""
        await self.install(await self.validate(config))

    async def install(self, candidate: Path) -> None:
        """Make a configuration `validate` accepted the live one and reload."""
        before = await self.proc_state()
        os.replace(candidate, self.options.config_path)
        assert self.pid is not None
        os.kill(self.pid, signal.SIGUSR2)
        await self._wait_reloaded(before)

    async def _wait_reloaded(self, before: ProcState) -> None:
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            if not self.running():
                raise HAProxyError(f"haproxy exited while reloading:\n{self.log_tail()}")
            with contextlib.suppress(RuntimeAPIError):
                state = await self.proc_state()
                if state.failed > before.failed:
                    raise HAProxyError(f"haproxy failed to reload:\n{self.log_tail()}")
                new = set(state.workers) - set(before.workers)
                if state.reloads > before.reloads and new and await self._answers(new):
                    self.workers = state.workers
                    return
            await asyncio.sleep(0.05)
        raise HAProxyError(f"haproxy did not reload within {RELOAD_TIMEOUT:.0f}s:\n{self.log_tail()}")

    async def _answers(self, workers: set[int]) -> bool:
        """The stats socket is served by one of `workers` (the new worker has rebound it)."""
        try:
            return await self.runtime.pid() in workers
        except (RuntimeAPIError, KeyError, ValueError):
            return False

    async def proc_state(self) -> ProcState:
        return parse_show_proc(await self.master_cli.command("show proc"))

    async def worker_pid(self) -> int:
        return await self.runtime.pid()

    async def wait_exit(self) -> None:
        """Return when the master exits (reaping it when it is our child)."""
        pid = self.pid
        if pid is None:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            await self._poll_exit(pid)
        else:
            try:
                await self._wait_readable(fd)
            finally:
                os.close(fd)
        if self._proc is not None and self._proc.pid == pid:
            self._proc.poll()
        reap(pid)
        await self._reap_orphans(self.workers)

    async def _reap_orphans(self, workers: tuple[int, ...]) -> None:
        """Workers outlive a killed master for a moment; as encomd is a subreaper they become ours to reap."""
        for worker in workers:
            await self._exited_within(worker, 2.0)
            reap(worker)

    async def _wait_readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await exited
        finally:
            loop.remove_reader(fd)

    async def _poll_exit(self, pid: int) -> None:
        while process_alive(pid):  # noqa: ASYNC110 (no event to wait on without a pidfd)
            await asyncio.sleep(0.5)

    async def stop(self, detach: bool = False) -> None:
        """Stop HAProxy (hard stop: SIGTERM, then SIGKILL), or with `detach` just let go of it."""
        pid, self.pid = self.pid, None
        proc, self._proc = self._proc, None
        if pid is None or detach:
            if proc is not None:
                # Popen's finalizer would otherwise keep it in the interpreter's list of children to reap
                proc.returncode = proc.returncode if proc.returncode is not None else 0
            return
        workers = await self._known_workers()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await self._exited_within(pid, STOP_TIMEOUT):
            log.warning("haproxy %d ignored SIGTERM; killing it", pid)
            for p in (pid, *workers):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            await self._exited_within(pid, STOP_TIMEOUT)
        if proc is not None:
            proc.poll()
        for p in (pid, *workers):
            reap(p)
        await self._reap_orphaned_workers()

    async def _reap_orphaned_workers(self) -> None:
        """Workers of earlier reloads can outlive their master; as a subreaper we inherit and must reap them."""
        deadline = time.monotonic() + STOP_TIMEOUT
        while orphans := self._orphaned_workers():
            for pid, zombie in orphans:
                if zombie:
                    reap(pid)
                elif time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.05)

    def _orphaned_workers(self) -> list[tuple[int, bool]]:
        """(pid, is_zombie) of our HAProxy children: live ones running our config, and dead haproxy ones (a
        zombie has no cmdline left to check; reaping a dead process is harmless)."""
        me, found = os.getpid(), []
        for entry in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                head, _, tail = entry.read_text().rpartition(")")
                state, ppid = tail.split()[0], int(tail.split()[1])
                pid, name = int(entry.parent.name), head.partition("(")[2]
                if ppid != me or name != "haproxy":
                    continue
                if state == "Z":
                    found.append((pid, True))
                elif self._is_ours(pid):
                    found.append((pid, False))
        return found

    async def _known_workers(self) -> tuple[int, ...]:
        try:
            return (await self.proc_state()).workers
        except RuntimeAPIError:
            return ()

    async def _exited_within(self, pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            reap(pid)
            if not process_alive(pid):
                return True
            await asyncio.sleep(0.05)
        return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.options.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
