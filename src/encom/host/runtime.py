"""runc, driven as a subprocess with its state in our own `--root` (so containers outlive encomd)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encom.api.aio import wait_for
from encom.api.files import private_dir

log = logging.getLogger(__name__)


class RuncError(Exception):
    """runc refused or failed; the message is runc's own reason."""


@dataclass
class ContainerState:
    id: str
    pid: int
    status: str  # "created", "running", "paused", "stopped"


def _reason(log_file: Path, stderr: str) -> str:
    """runc's last error: from its JSON log when present, else its stderr."""
    reason = ""
    try:
        for line in log_file.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("error", "fatal"):
                reason = str(entry.get("msg", ""))
    except OSError:
        pass
    return reason or stderr.strip() or "runc failed"


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _read_pid(pid_file: Path) -> int:
    return int(pid_file.read_text().strip())


# runc makes the job's cgroup directories, which the job reads its own limits through (mounted read-only): encomd's
# umask 077 would make them unreadable to the job's uid. What else runc writes is inside 0700 directories.
RUNC_UMASK = 0o022


class Runc:
    def __init__(self, root: Path, binary: str = "runc") -> None:
        self.root = root
        self.binary = binary
        private_dir(root)

    def _base(self) -> list[str]:
        return [self.binary, "--root", str(self.root)]

    async def _call(self, *args: str, limit: float = 30.0) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *self._base(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await wait_for(proc.communicate(), limit)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def run_detached(
        self,
        container_id: str,
        bundle: Path,
        pid_file: Path,
        stdout: Path,
        stderr: Path,
        *,
        stdin: int | None = None,
        console_socket: Path | None = None,
    ) -> int:
        """`runc run -d`: returns the container init's pid once it runs. The container inherits the two files
        (opened for append) as its stdout and stderr, so its output survives us, and `stdin` (a pipe's read end)
        when given. With `console_socket` (a bundle with `terminal: true`) runc sends the pty master there instead
        and the files only get runc's own errors."""
        log_file = bundle / "runc.log"
        _remove(log_file, pid_file)
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT, 0o600))  # runc appends to it, whatever its umask
        console = ["--console-socket", str(console_socket)] if console_socket is not None else []
        args = [
            *self._base(),
            "--log",
            str(log_file),
            "--log-format",
            "json",
            "run",
            "-d",
            *console,
            "--bundle",
            str(bundle),
            "--pid-file",
            str(pid_file),
            container_id,
        ]
        out_fd = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        err_fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
                stdout=out_fd,
                stderr=err_fd,
                umask=RUNC_UMASK,
            )
        finally:
            os.close(out_fd)
            os.close(err_fd)
        code = await proc.wait()
        if code != 0:
            raise RuncError(_reason(log_file, ""))
        # Written under RUNC_UMASK, inside directories that are root's alone meanwhile.
        os.chmod(pid_file, 0o600)
        os.chmod(self.root / container_id, 0o700)
        return _read_pid(pid_file)

    async def kill(self, container_id: str, signal: str = "TERM") -> None:
        code, _, err = await self._call("kill", container_id, signal)
        if code != 0:
            log.debug("runc kill %s %s: %s", container_id, signal, err.strip())

    async def delete(self, container_id: str) -> None:
        code, _, err = await self._call("delete", "--force", container_id)
        if code != 0 and "does not exist" not in err:
            log.warning("runc delete %s: %s", container_id, err.strip())

    async def list(self) -> list[ContainerState]:
        code, out, err = await self._call("list", "--format", "json")
        if code != 0:
            raise RuncError(err.strip() or "runc list failed")
        data: list[dict[str, Any]] | None = json.loads(out or "null")
        return [ContainerState(str(c["id"]), int(c.get("pid") or 0), str(c.get("status", ""))) for c in data or []]
