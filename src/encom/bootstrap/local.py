"""Running `encomd` on this machine: settings, start in the background, health wait, stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from encom.api.client import ca_context
from encom.api.files import PRIVATE_UMASK, private_dir
from encom.api.procs import process_alive
from encom.api.settings import SETTINGS_FILE, Ports, Settings
from encom.bootstrap.daemon import PID_FILE, READY_FILE
from encom.bootstrap.tls import controller_pin, ensure_tls
from encom.controller.client import ControllerClient

START_TIMEOUT = 90.0
STOP_TIMEOUT = 45.0
DEFAULT_GIT_PORT = 2222


def ports_from_base(base: int) -> Ports:
    """A compact port layout at `base` (tests and side-by-side clusters): base+81 controller, base+80 router…"""
    return Ports(
        controller=base + 81,
        discoverd=base + 11,
        blobstore=base + 12,
        host=base + 13,
        router_http=base + 80,
        router_https=base + 443,
        gitreceive=base + 22,
        tcp_route_start=base + 1000,
        tcp_route_end=base + 1500,
        job_start=base + 2000,
        job_end=base + 2999,
    )


def load_or_create(data_dir: Path, port_base: int | None = None, domain: str | None = None) -> Settings:
    """The existing settings of `data_dir`, or new ones (keys and secrets generated once, kept after)."""
    private_dir(data_dir)
    if (data_dir / SETTINGS_FILE).exists():
        return Settings.load(data_dir)
    settings = Settings(data_dir=data_dir)
    if port_base is not None:
        settings.ports = ports_from_base(port_base)
    if domain:
        settings.domain = domain
    settings.save()
    return settings


def running_pid(settings: Settings) -> int | None:
    try:
        pid = int((settings.data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid) else None


def spawn(settings: Settings) -> int:
    log_path = settings.log_dir / "encomd.log"
    with open(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "encom.bootstrap.daemon", "--data-dir", str(settings.data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


async def controller_answers(settings: Settings) -> bool:
    async with ControllerClient(
        settings.controller_url, settings.cluster_key, verify=ca_context(settings.ca_cert_path), timeout=3
    ) as client:
        try:
            await client.list_apps()
        except Exception:
            return False
        return True


def wait_healthy(settings: Settings, pid: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    ready = settings.data_dir / READY_FILE
    while time.monotonic() < deadline:
        if not process_alive(pid):
            raise RuntimeError(f"encomd exited during start-up; see {settings.log_dir / 'encomd.log'}")
        if ready.exists() and asyncio.run(controller_answers(settings)):
            return
        time.sleep(0.2)
    raise RuntimeError(f"encomd was not healthy within {timeout:.0f}s; see {settings.log_dir / 'encomd.log'}")


def start(settings: Settings) -> int:
    """Start encomd unless it already runs; wait until it is healthy. Returns its pid."""
    previous = os.umask(PRIVATE_UMASK)  # the CA, keys and certificates made here are owner-only like encomd's files
    try:
        ensure_tls(settings)
    finally:
        os.umask(previous)
    pid = running_pid(settings)
    if pid is None:
        (settings.data_dir / READY_FILE).unlink(missing_ok=True)
        pid = spawn(settings)
    wait_healthy(settings, pid)
    return pid


def stop(settings: Settings, detach: bool = False, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop encomd (and, unless `detach`, every job and HAProxy it started). False when it was not running."""
    pid = running_pid(settings)
    if pid is None:
        return False
    os.kill(pid, signal.SIGUSR1 if detach else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def cluster_add_line(settings: Settings, name: str = "default") -> str:
    """The line a user runs to point the CLI at this cluster (Flynn's bootstrap output)."""
    parts = ["encom", "cluster", "add"]
    if settings.ports.gitreceive != DEFAULT_GIT_PORT:
        parts += ["-g", f"ssh://git@{settings.bind}:{settings.ports.gitreceive}"]
    parts += ["-p", controller_pin(settings), name, settings.controller_url, settings.cluster_key]
    return " ".join(parts)
