"""`encom limit`'s pure pieces: size and count parsing, formatting, the per-type lines, changing one type."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from encom.api.types import ProcessType, Release, Resources
from encom.cli.limits import format_size, limit_line, limit_lines, parse_count, parse_limits, parse_size, with_limits
from encom.cli.output import CliError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 536870912),
        ("512M", 536870912),
        ("512mib", 536870912),
        ("1GB", 1 << 30),
        ("1G", 1 << 30),
        ("1.5GB", 3 << 29),
        ("1024KB", 1 << 20),
        ("200MB", 209715200),
        ("4096", 4096),
        ("4096B", 4096),
        ("1TB", 1 << 40),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MB", "-1MB", "12XB", "1.5", "0.3KB", "ten"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_parse_count() -> None:
    assert parse_count("4096") == 4096
    assert parse_count("12k") == 12000
    for bad in ("-1", "1.5", "k", "12m"):
        with pytest.raises(ValueError):
            parse_count(bad)


@pytest.mark.parametrize(
    ("n", "text"),
    [(1 << 30, "1GB"), (536870912, "512MB"), (100 << 20, "100MB"), (1 << 10, "1KB"), (3 << 29, "1.5GB"), (100, "100B")],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def test_format_round_trips() -> None:
    for n in (1 << 20, 5 << 30, 12 << 10, 7):
        assert parse_size(format_size(n)) == n


def test_parse_limits() -> None:
    parsed = parse_limits(["memory=512MB", "cpu=500", "max_fd=12k", "max_procs=256", "temp_disk=1G"])
    assert parsed == {"memory": 536870912, "cpu": 500, "max_fd": 12000, "max_procs": 256, "temp_disk": 1 << 30}
    with pytest.raises(CliError, match='invalid limit "max_procs=unlimited": "unlimited" is not a whole number'):
        parse_limits(["max_procs=unlimited"])  # every job has a process limit


@pytest.mark.parametrize(
    ("bad", "said"),
    [("memory=lots", "memory=lots"), ("cpu=-5", "cpu=-5"), ("disk=1GB", "unknown limit"), ("memory", "memory")],
)
def test_parse_limits_names_the_bad_argument(bad: str, said: str) -> None:
    with pytest.raises(CliError, match=said):
        parse_limits(["cpu=500", bad])


def test_limit_line() -> None:
    assert limit_line("web", Resources()) == "web: cpu=1000 max_fd=10000 max_procs=512 memory=1GB temp_disk=1GB"
    res = Resources(memory=536870912, cpu=500, max_fd=4096, max_procs=256)
    assert limit_line("web", res) == "web: cpu=500 max_fd=4096 max_procs=256 memory=512MB temp_disk=1GB"


def release(*types: str) -> Release:
    processes = {name: ProcessType(cmd=f"run {name}") for name in types}
    return Release(id="r1", app_id="a1", version=1, processes=processes, created_at=datetime.now(UTC))


def test_limit_lines_sorted_and_filtered() -> None:
    r = release("worker", "web")
    assert [line.split(":")[0] for line in limit_lines(r)] == ["web", "worker"]
    assert [line.split(":")[0] for line in limit_lines(r, "worker")] == ["worker"]
    with pytest.raises(CliError, match='"clock"'):
        limit_lines(r, "clock")


def test_with_limits_changes_one_type_only() -> None:
    r = release("web", "worker")
    changed = with_limits(r, "web", {"memory": 256 << 20, "max_procs": 100})
    assert changed["web"].resources == Resources(memory=256 << 20, max_procs=100)
    assert changed["web"].cmd == "run web"
    assert changed["worker"].resources == Resources()
    assert r.processes["web"].resources == Resources()
    with pytest.raises(CliError, match='no process type "clock"'):
        with_limits(r, "clock", {"cpu": 1})
