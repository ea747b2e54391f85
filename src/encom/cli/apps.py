"""`encom create`, `apps`, `info`, `delete`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import click

from encom.api.types import App, AppDeleted, Route
from encom.cli.context import (
    DEFAULT_REMOTE,
    app_options,
    call,
    cluster_option,
    current_cluster,
    current_target,
    git_remote_for,
    in_git_repo,
    remove_remote_if_app,
    set_remote,
)
from encom.cli.output import print_table
from encom.controller.client import ControllerClient

ADJECTIVES = ("amber", "brisk", "calm", "dusty", "eager", "fuzzy", "gentle", "hidden", "icy", "jolly", "lucky", "misty")
NOUNS = ("river", "falcon", "meadow", "comet", "harbor", "pine", "summit", "lantern", "canyon", "orbit", "willow")


def random_app_name() -> str:
    """A Heroku-style name such as `misty-comet-4821` for `encom create` without a name."""
    return f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}-{secrets.randbelow(9000) + 1000}"


def default_route(app: App, routes: list[Route]) -> Route | None:
    """The route the controller made with the app: HTTP, `<name>.<domain>`, path `/` (the oldest such)."""
    candidates = [
        r for r in routes if r.type == "http" and r.path == "/" and (r.domain or "").startswith(f"{app.name}.")
    ]
    return min(candidates, key=lambda r: r.created_at, default=None)


@dataclass
class AppInfo:
    app: App
    routes: list[Route]


async def fetch_info(client: ControllerClient, app: str) -> AppInfo:
    found = await client.get_app(app)
    return AppInfo(found, await client.list_routes(found.id))


def info_lines(info: AppInfo, git_url: str) -> list[str]:
    lines = [f"=== {info.app.name}", f"Git URL: {git_remote_for(git_url, info.app.name)}"]
    route = default_route(info.app, info.routes)
    if route is not None:
        lines.append(f"Web URL: http://{route.domain}")
    return lines


@click.command("create")
@cluster_option
@click.option("-r", "--remote", default=DEFAULT_REMOTE, show_default=True, help='git remote to add ("" for none)')
@click.argument("name", required=False)
def create(remote: str, name: str | None) -> None:
    """Create an app (and its git remote when run inside a git repo)."""
    cluster = current_cluster()
    app_name = name or random_app_name()
    app = call(cluster, lambda c: c.create_app(app_name))
    if remote and in_git_repo():
        set_remote(remote, git_remote_for(cluster.git_url, app.name))
    click.echo(f"Created {app.name}")


@click.command("apps")
@cluster_option
def apps() -> None:
    """List apps."""
    found: list[App] = call(current_cluster(), lambda c: c.list_apps())
    print_table(["ID", "NAME"], [[a.id, a.name] for a in sorted(found, key=lambda a: a.name)])


@click.command("info")
@app_options
def info() -> None:
    """Show an app's git and web URLs."""
    target = current_target()
    details = call(target.cluster, lambda c: fetch_info(c, target.app))
    click.echo("\n".join(info_lines(details, target.cluster.git_url)))


@click.command("delete")
@app_options
@click.option("-y", "--yes", is_flag=True, help="do not ask for confirmation")
@click.option("-r", "--remote", default=DEFAULT_REMOTE, show_default=True, help="git remote to remove")
def delete(yes: bool, remote: str) -> None:
    """Delete an app and everything it has: releases, routes, drains, its git repository, sources, slugs, build
    caches, jobs and their logs (removed from every host in the background)."""
    target = current_target()
    if not yes:
        click.confirm(f'Are you sure you want to delete the app "{target.app}"?', default=False, abort=True)
    deleted: AppDeleted = call(target.cluster, lambda c: c.delete_app(target.app))
    if remote and in_git_repo():
        remove_remote_if_app(remote, deleted.app.name)
    click.echo(
        f"Deleted {deleted.app.name} (removed {deleted.deleted_routes} routes, "
        f"deleted {deleted.deleted_releases} releases)"
    )
