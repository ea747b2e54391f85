"""`encom release` (list), `release show [ref]` and `release rollback [ref]`.

A release reference is `vN`, a release id, or an unambiguous prefix of one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import click

from encom.api.types import Deployment, Release
from encom.cli.context import app_options, call, current_target
from encom.cli.env import env_lines
from encom.cli.limits import limit_line
from encom.cli.output import CliError, age, print_table
from encom.cli.releases import ReleaseList, deploy_release, description, fetch_releases, release_rows
from encom.controller.client import ControllerClient

VERSION_RE = re.compile(r"^[vV](\d+)$")
NO_ROLLBACK = "no release to roll back to"


def parse_version(ref: str) -> int | None:
    """`v3` -> 3; anything else (a release id or prefix, even an all-digit one) -> None."""
    match = VERSION_RE.match(ref.strip())
    return int(match.group(1)) if match else None


def find_release(listing: ReleaseList, ref: str) -> Release | None:
    """The app's release named by `ref` (version, id or unique id prefix), None when it has none such."""
    version = parse_version(ref)
    if version is not None:
        return next((r for r in listing.releases if r.version == version), None)
    exact = [r for r in listing.releases if r.id == ref]
    if exact:
        return exact[0]
    matches = [r for r in listing.releases if r.id.startswith(ref)] if len(ref) >= 4 else []
    if len(matches) > 1:
        raise CliError(f'release "{ref}" is ambiguous')
    return matches[0] if matches else None


def current_of(listing: ReleaseList) -> Release | None:
    return next((r for r in listing.releases if r.id == listing.current_id), None)


def previous_release(listing: ReleaseList) -> Release:
    """The newest release older than the current one (by version)."""
    current = current_of(listing)
    if current is None:
        raise CliError(NO_ROLLBACK)
    older = [r for r in listing.releases if r.version < current.version]
    if not older:
        raise CliError(NO_ROLLBACK)
    return max(older, key=lambda r: r.version)


def show_target(listing: ReleaseList, ref: str | None) -> Release:
    if ref is None:
        current = current_of(listing)
        if current is None:
            raise CliError("app has no release; push first")
        return current
    found = find_release(listing, ref)
    if found is None:
        raise CliError(f'release "{ref}" not found')
    return found


def show_lines(release: Release) -> list[str]:
    """The human view of `release show`."""
    lines = [
        f"Version:     v{release.version}",
        f"ID:          {release.id}",
        f"Created:     {release.created_at.isoformat()} ({age(release.created_at)})",
        f"Description: {description(release)}",
        f"Artifact:    {release.artifact_id or '(none)'}",
    ]
    commit = release.meta.get("git.commit")
    if commit:
        lines.append(f"Commit:      {commit}")
    lines.append("Processes:")
    lines += [f"  {name}: {release.processes[name].cmd}" for name in sorted(release.processes)]
    lines.append("Env:")
    lines += [f"  {line}" for line in env_lines(release.env)]
    lines.append("Limits:")
    lines += [f"  {limit_line(name, release.processes[name].resources)}" for name in sorted(release.processes)]
    return lines


@dataclass
class Rollback:
    app: str
    target: Release


async def outside_release(client: ControllerClient, ref: str) -> Release:
    """A release id that is not the app's: fetched, so that the deploy can refuse it (404 when unknown)."""
    if parse_version(ref) is not None:
        raise CliError(f'release "{ref}" not found')
    return await client.get_release(ref)


async def plan_rollback(client: ControllerClient, app: str, ref: str | None) -> Rollback:
    listing = await fetch_releases(client, app)
    if ref is None:
        target = previous_release(listing)
    else:
        target = find_release(listing, ref) or await outside_release(client, ref)
    if target.id == listing.current_id:
        raise CliError(f"v{target.version} is already the current release")
    return Rollback(app, target)


async def roll_back(client: ControllerClient, plan: Rollback) -> Deployment:
    return await deploy_release(client, plan.app, plan.target, "rollback")


@click.group("release", invoke_without_command=True)
@app_options
@click.pass_context
def release_group(ctx: click.Context) -> None:
    """List releases (the current one marked *), or show / roll back one."""
    if ctx.invoked_subcommand is None:
        target = current_target()
        listing = call(target.cluster, lambda c: fetch_releases(c, target.app))
        print_table(["", "VERSION", "ID", "CREATED", "DESCRIPTION"], release_rows(listing))


@release_group.command("show")
@app_options
@click.option("--json", "as_json", is_flag=True, help="print the release as JSON")
@click.argument("ref", metavar="[ID|vN]", required=False)
def release_show(as_json: bool, ref: str | None) -> None:
    """Show a release (default: the current one)."""
    target = current_target()
    listing = call(target.cluster, lambda c: fetch_releases(c, target.app))
    release = show_target(listing, ref)
    click.echo(release.model_dump_json(indent=2) if as_json else "\n".join(show_lines(release)))


@release_group.command("rollback")
@app_options
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")
@click.argument("ref", metavar="[ID|vN]", required=False)
def release_rollback(yes: bool, ref: str | None) -> None:
    """Deploy an earlier release (default: the one before the current one)."""
    target = current_target()
    plan = call(target.cluster, lambda c: plan_rollback(c, target.app, ref))
    version = f"v{plan.target.version}"
    if not yes:
        click.confirm(f"Rolling back {target.app} to {version}. Continue?", default=False, abort=True)
    call(target.cluster, lambda c: roll_back(c, plan))
    click.echo(f"Rolled back to {version}.")


# ---------------------------------------------------------------- deployments


def deployment_rows(deployments: list[Deployment], releases: list[Release]) -> list[list[str]]:
    versions = {r.id: f"v{r.version}" for r in releases}
    ordered = sorted(deployments, key=lambda d: d.created_at, reverse=True)
    return [
        [d.id, d.status, versions.get(d.new_release_id, d.new_release_id), age(d.created_at),
         age(d.finished_at) if d.finished_at else ""]
        for d in ordered
    ]  # fmt: skip


async def fetch_deployments(client: ControllerClient, app: str) -> list[list[str]]:
    found = await client.get_app(app)
    return deployment_rows(await client.list_deployments(found.id), await client.list_releases(found.id))


@click.command("deployment")
@app_options
def deployment_list() -> None:
    """List deployments, newest first."""
    target = current_target()
    rows = call(target.cluster, lambda c: fetch_deployments(c, target.app))
    print_table(["ID", "STATUS", "RELEASE", "CREATED", "FINISHED"], rows)
