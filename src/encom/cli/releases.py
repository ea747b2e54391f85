"""Release helpers: listing them, and making a new release from the current one (env changes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from encom.api.types import Deployment, Release, ReleaseCreate
from encom.cli.output import CliError, age
from encom.controller.client import ControllerClient

NO_RELEASE = "app has no release; push first"


async def require_release(client: ControllerClient, app: str) -> Release:
    release = await client.current_release(app)
    if release is None:
        raise CliError(NO_RELEASE)
    return release


def description(release: Release) -> str:
    meta = release.meta
    if meta.get("description"):
        return meta["description"]
    commit = meta.get("git.commit") or meta.get("commit")
    return f"Deploy {commit[:7]}" if commit else ""


EnvChange = Callable[[dict[str, str]], dict[str, str]]
ReleaseChange = Callable[[Release], ReleaseCreate]


async def deploy_release(client: ControllerClient, app: str, release: Release, what: str = "deploy") -> Deployment:
    """Deploy `release` (counts carried over) and wait until the deployment is complete; an error saying why
    when it failed (the deployer has then put the previous release back)."""
    deployment = await client.deploy_and_wait(app, release.id)
    if deployment.status == "failed":
        kept = " (the previous release keeps serving)" if deployment.old_release_id else ""
        raise CliError(f"{what} of v{release.version} failed: {deployment.error or 'unknown error'}{kept}")
    return deployment


async def deploy_changed(client: ControllerClient, app: str, change: ReleaseChange) -> Release:
    """A new release made from the current one by `change`, deployed (counts carried over). Returns it."""
    current = await require_release(client, app)
    new = await client.create_release(change(current))
    await deploy_release(client, app, new)
    return new


def copy_release(current: Release, what: str, **changes: object) -> ReleaseCreate:
    """`current` as a new release body with some fields replaced, described by `what`."""
    body = ReleaseCreate(
        app_id=current.app_id,
        artifact_id=current.artifact_id,
        env=dict(current.env),
        processes=dict(current.processes),
        meta={**current.meta, "description": what},
    )
    return body.model_copy(update=changes)


async def release_with_env(client: ControllerClient, app: str, change: EnvChange, what: str) -> Release:
    """A copy of the current release with its env changed, deployed (counts carried over). Returns it."""
    return await deploy_changed(client, app, lambda current: copy_release(current, what, env=change(dict(current.env))))


@dataclass
class ReleaseList:
    releases: list[Release]
    current_id: str | None


async def fetch_releases(client: ControllerClient, app: str) -> ReleaseList:
    found = await client.get_app(app)
    return ReleaseList(await client.list_releases(found.id), found.release_id)


def release_rows(listing: ReleaseList) -> list[list[str]]:
    return [
        ["*" if r.id == listing.current_id else "", f"v{r.version}", r.id, age(r.created_at), description(r)]
        for r in sorted(listing.releases, key=lambda r: r.version, reverse=True)
    ]
