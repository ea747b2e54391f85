"""`encom limit`: per-process-type resource limits, stored in the release; every change is a new release, deployed."""

from __future__ import annotations

import re
from decimal import Decimal

import click

from encom.api.types import ProcessType, Release, ReleaseCreate, Resources
from encom.cli.context import app_options, call, current_target
from encom.cli.env import parse_assignments
from encom.cli.output import CliError
from encom.cli.releases import copy_release, deploy_changed, require_release
from encom.controller.client import ControllerClient
from encom.controller.limits import format_limit, format_size

__all__ = ["format_size", "limit_group", "limit_line", "parse_limits", "parse_size"]

SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?$", re.IGNORECASE)
COUNT_RE = re.compile(r"^(\d+)(k)?$", re.IGNORECASE)
SIZE_FACTORS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SIZE_KEYS = ("memory", "temp_disk")
COUNT_KEYS = ("cpu", "max_fd", "max_procs")
LIMIT_KEYS = tuple(sorted(SIZE_KEYS + COUNT_KEYS))


def parse_size(text: str) -> int:
    """`512MB`, `512M`, `512MiB`, `1GB`, `1.5G`, `1024KB`, `4096` (bytes) -> bytes, in binary units as Flynn."""
    match = SIZE_RE.match(text.strip())
    if match is None:
        raise ValueError(f'"{text}" is not a size (use e.g. 512MB, 1GB, 1024KB or a number of bytes)')
    number, unit = match.group(1), (match.group(2) or "").lower()
    amount = Decimal(number) * SIZE_FACTORS[unit[:1]]
    if amount != amount.to_integral_value():
        raise ValueError(f'"{text}" is not a whole number of bytes')
    return int(amount)


def parse_count(text: str) -> int:
    """`4096` or `12k` (= 12000)."""
    match = COUNT_RE.match(text.strip())
    if match is None:
        raise ValueError(f'"{text}" is not a whole number (use e.g. 4096 or 12k)')
    return int(match.group(1)) * (1000 if match.group(2) else 1)


def parse_limit(key: str, value: str) -> int:
    if key not in LIMIT_KEYS:
        raise ValueError(f'unknown limit "{key}" (use {", ".join(LIMIT_KEYS)})')
    return parse_size(value) if key in SIZE_KEYS else parse_count(value)


def parse_limits(args: tuple[str, ...] | list[str]) -> dict[str, int]:
    """`key=value` arguments -> the limits they set; a CliError naming the first bad argument."""
    result: dict[str, int] = {}
    for key, value in parse_assignments(args).items():
        try:
            result[key] = parse_limit(key, value)
        except ValueError as exc:
            raise CliError(f'invalid limit "{key}={value}": {exc}') from None
    return result


def limit_line(process_type: str, res: Resources) -> str:
    """`web: cpu=1000 max_fd=10000 max_procs=512 memory=1GB temp_disk=1GB`."""
    values = res.model_dump()
    return f"{process_type}: " + " ".join(f"{key}={format_limit(key, values[key])}" for key in LIMIT_KEYS)


def limit_lines(release: Release, only: str | None = None) -> list[str]:
    if only is not None and only not in release.processes:
        raise CliError(f'no process type "{only}" in the current release')
    names = [only] if only is not None else sorted(release.processes)
    return [limit_line(name, release.processes[name].resources) for name in names]


def with_limits(release: Release, process_type: str, changes: dict[str, int]) -> dict[str, ProcessType]:
    """The release's processes with one type's resources changed."""
    if process_type not in release.processes:
        known = ", ".join(sorted(release.processes)) or "none"
        raise CliError(f'no process type "{process_type}" in the current release (types: {known})')
    process = release.processes[process_type]
    resources = process.resources.model_copy(update=changes)
    return {**release.processes, process_type: process.model_copy(update={"resources": resources})}


def describe(process_type: str, changes: dict[str, int]) -> str:
    return f"Set {process_type} limits " + " ".join(f"{k}={format_limit(k, v)}" for k, v in changes.items())


async def set_limits(client: ControllerClient, app: str, process_type: str, changes: dict[str, int]) -> Release:
    """A copy of the current release with one type's limits changed, deployed (counts carried over)."""

    def change(current: Release) -> ReleaseCreate:
        processes = with_limits(current, process_type, changes)
        return copy_release(current, describe(process_type, changes), processes=processes)

    return await deploy_changed(client, app, change)


@click.group("limit", invoke_without_command=True)
@app_options
@click.option("-t", "--type", "process_type", help="only this process type")
@click.pass_context
def limit_group(ctx: click.Context, process_type: str | None) -> None:
    """Show the resource limits of each process type, or change them with `limit set`."""
    if ctx.invoked_subcommand is None:
        target = current_target()
        release = call(target.cluster, lambda c: require_release(c, target.app))
        for line in limit_lines(release, process_type):
            click.echo(line)


@limit_group.command("set")
@app_options
@click.argument("process_type", metavar="TYPE")
@click.argument("limits", nargs=-1, required=True)
def limit_set(process_type: str, limits: tuple[str, ...]) -> None:
    """Set TYPE's limits (memory=512MB cpu=500 max_fd=4096 max_procs=256 temp_disk=200MB) in a new release."""
    changes = parse_limits(limits)
    target = current_target()
    release = call(target.cluster, lambda c: set_limits(c, target.app, process_type, changes))
    click.echo(f"Created release v{release.version}.")
