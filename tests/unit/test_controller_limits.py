"""Checking a release's resource limits against the host (controller side)."""

from __future__ import annotations

from pathlib import Path

import pytest

from encom.api.errors import ValidationError
from encom.api.types import ProcessType, ReleaseCreate, Resources
from encom.controller.limits import HostLimits, checked_release, checked_resources, host_limits, total_memory

GB = 1 << 30
HOST = HostLimits(memory=16 * GB, cpu=4000, max_fd=20000, max_procs=32768, temp_disk=50 * GB)


def test_defaults_and_valid_limits_pass_unchanged() -> None:
    assert checked_resources("web", Resources(), HOST) == Resources()
    res = Resources(memory=512 << 20, cpu=500, max_fd=4096, max_procs=256, temp_disk=1 << 20)
    assert checked_resources("web", res, HOST) == res
    edge = Resources(memory=16 * GB, cpu=4000, max_fd=20000, max_procs=1, temp_disk=50 * GB)
    assert checked_resources("web", edge, HOST) == edge
    assert checked_resources("web", Resources(max_procs=32768), HOST).max_procs == 32768


def test_releases_stored_without_a_process_limit_get_the_default() -> None:
    assert Resources().max_procs == 512 and Resources().temp_disk == GB
    stored = {"cmd": "x", "resources": {"memory": GB, "max_procs": None, "temp_disk": 100 << 20}}
    assert ProcessType.model_validate(stored).resources.max_procs == 512
    assert ProcessType.model_validate({"cmd": "x"}).resources == Resources()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_fd": 65536}, "web: max_fd 65536 is above this host's limit of 20000"),
        ({"max_fd": 0}, "web: max_fd 0 is below the minimum of 1"),
        ({"memory": 32 * GB}, "web: memory 32GB is above this host's limit of 16GB"),
        ({"memory": 1 << 20}, "web: memory 1MB is below the minimum of 4MB"),
        ({"memory": -1}, "web: memory -1 is below the minimum of 4MB"),
        ({"cpu": 4001}, "web: cpu 4001 is above this host's limit of 4000"),
        ({"cpu": -500}, "web: cpu -500 is below the minimum of 1"),
        ({"max_procs": 0}, "web: max_procs 0 is below the minimum of 1"),
        ({"max_procs": 40000}, "web: max_procs 40000 is above this host's limit of 32768"),
        ({"temp_disk": 100}, "web: temp_disk 100B is below the minimum of 1MB"),
        ({"temp_disk": 51 * GB}, "web: temp_disk 51GB is above this host's limit of 50GB"),
    ],
)
def test_out_of_range_limits_name_type_and_limit(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        checked_resources("web", Resources(**changes), HOST)
    assert caught.value.message == message
    assert caught.value.status == 400


def test_defaults_the_host_cannot_give_are_capped() -> None:
    small = HostLimits(memory=512 << 20, cpu=1000, max_fd=4096, max_procs=32768, temp_disk=50 << 20)
    capped = checked_resources("web", Resources(), small)
    assert capped == Resources(memory=512 << 20, max_fd=4096, temp_disk=50 << 20)
    with pytest.raises(ValidationError, match="max_fd 8000 is above this host's limit of 4096"):
        checked_resources("web", Resources(max_fd=8000), small)


def test_unlimited_nofile_has_no_upper_bound() -> None:
    host = HostLimits(memory=GB, cpu=1000, max_fd=None, max_procs=32768, temp_disk=GB)
    assert checked_resources("web", Resources(memory=GB, max_fd=1 << 20), host).max_fd == 1 << 20


def test_checked_release_keeps_order_and_checks_every_type() -> None:
    body = ReleaseCreate(
        app_id="a",
        processes={"worker": ProcessType(cmd="w"), "web": ProcessType(cmd="x", resources=Resources(cpu=250))},
    )
    checked = checked_release(body, HOST)
    assert list(checked.processes) == ["worker", "web"]
    assert checked.processes["web"].resources.cpu == 250
    bad = body.model_copy(
        update={"processes": {**body.processes, "clock": ProcessType(cmd="c", resources=Resources(cpu=0))}}
    )
    with pytest.raises(ValidationError, match=r"^clock: cpu 0 is below"):
        checked_release(bad, HOST)


def test_host_limits_reads_this_machine(tmp_path: Path) -> None:
    limits = host_limits(tmp_path)
    assert limits.memory > 4 << 20 and limits.cpu >= 1000 and limits.temp_disk > 0
    assert limits.max_procs == int(Path("/proc/sys/kernel/pid_max").read_text())
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684084 kB\nMemFree:  1 kB\n")
    assert total_memory(meminfo) == 24684084 * 1024
