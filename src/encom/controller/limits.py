"""Checking a release's per-process resource limits against what this host can give.

Each process type's `Resources` must fit the machine: memory within its total memory, cpu within its cores
(1000 per core), max_fd within the hard RLIMIT_NOFILE, max_procs within the kernel's pid_max, temp_disk within the
data dir's free disk. A default
value the host cannot give (e.g. max_fd 10000 with a hard limit of 4096) is lowered to the host's limit instead
of rejected, so a plain push always works; an explicit value that does not fit is a 400 naming the limit.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

from encom.api.errors import ValidationError
from encom.api.types import ProcessType, ReleaseCreate, Resources

MIN_MEMORY = 4 << 20
MIN_TEMP_DISK = 1 << 20
MEMINFO = Path("/proc/meminfo")
PID_MAX = Path("/proc/sys/kernel/pid_max")
SIZE_UNITS = (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10))
SIZE_LIMITS = frozenset({"memory", "temp_disk"})
DEFAULTS = Resources()


@dataclass(frozen=True)
class HostLimits:
    """The most a single process type may ask of this host (None: no upper bound)."""

    memory: int
    cpu: int
    max_fd: int | None
    max_procs: int
    temp_disk: int


def format_size(n: int) -> str:
    """Bytes in binary units as Flynn prints them: 536870912 -> `512MB`, 1610612736 -> `1.5GB`, 100 -> `100B`."""
    for unit, size in SIZE_UNITS:
        if n >= size:
            if n % size == 0:
                return f"{n // size}{unit}"
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def format_limit(name: str, value: int | None) -> str:
    if value is None:
        return "unlimited"  # max_fd's bound on a host without a hard RLIMIT_NOFILE
    return format_size(value) if name in SIZE_LIMITS and value >= 0 else str(value)


def total_memory(meminfo: Path = MEMINFO) -> int:
    """MemTotal from /proc/meminfo, in bytes."""
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key == "MemTotal":
            return int(rest.split()[0]) * 1024
    raise RuntimeError(f"no MemTotal in {meminfo}")


def hard_nofile() -> int | None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def pid_max(path: Path = PID_MAX) -> int:
    """The kernel's highest pid (+1): no job can have more processes than that."""
    return int(path.read_text().strip())


def host_limits(data_dir: Path) -> HostLimits:
    stat = os.statvfs(data_dir)
    return HostLimits(
        memory=total_memory(),
        cpu=(os.cpu_count() or 1) * 1000,
        max_fd=hard_nofile(),
        max_procs=pid_max(),
        temp_disk=stat.f_bavail * stat.f_frsize,
    )


def _bounds(host: HostLimits) -> dict[str, tuple[int, int | None]]:
    """Each limit's (minimum, maximum)."""
    return {
        "memory": (MIN_MEMORY, host.memory),
        "cpu": (1, host.cpu),
        "max_fd": (1, host.max_fd),
        "max_procs": (1, host.max_procs),
        "temp_disk": (MIN_TEMP_DISK, host.temp_disk),
    }


def _capped_default(name: str, value: int, maximum: int | None) -> int:
    """A default the host cannot give becomes the host's limit; any other value is left to be checked."""
    if maximum is not None and value == getattr(DEFAULTS, name) and value > maximum:
        return maximum
    return value


def _check_one(process_type: str, name: str, value: int, bounds: tuple[int, int | None]) -> None:
    minimum, maximum = bounds
    shown = format_limit(name, value)
    if value < minimum:
        raise ValidationError(f"{process_type}: {name} {shown} is below the minimum of {format_limit(name, minimum)}")
    if maximum is not None and value > maximum:
        raise ValidationError(
            f"{process_type}: {name} {shown} is above this host's limit of {format_limit(name, maximum)}"
        )


def checked_resources(process_type: str, res: Resources, host: HostLimits) -> Resources:
    """`res` with unattainable defaults lowered to the host's limits; a ValidationError when a limit is out of range."""
    values = res.model_dump()
    for name, bounds in _bounds(host).items():
        values[name] = _capped_default(name, values[name], bounds[1])
        _check_one(process_type, name, values[name], bounds)
    return Resources.model_validate(values)


def checked_release(body: ReleaseCreate, host: HostLimits) -> ReleaseCreate:
    """The release to store: every process type's resources checked (and defaults capped), in type order."""
    processes: dict[str, ProcessType] = {}
    for name in sorted(body.processes):
        process = body.processes[name]
        processes[name] = process.model_copy(update={"resources": checked_resources(name, process.resources, host)})
    return body.model_copy(update={"processes": {name: processes[name] for name in body.processes}})
