"""Which cluster and app a command is about, the controller client for it, and running its coroutines."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from encom.api.client import pinned_context
from encom.cli.config import ClusterConfig, Config, ConfigError, cert_path, load_config
from encom.cli.output import CliError
from encom.controller.client import ControllerClient

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_REMOTE = "encom"
NO_CLUSTER = (
    'no cluster configured; add one with "encom cluster add -p <pin> <name> <url> <key>" (printed by "make up")'
)
NO_APP = 'no app given; use -a NAME or run inside a repo with an "encom" git remote'


@dataclass
class Selection:
    """`-a` and `-c` as given on the command line (a subcommand's own flags override the group's)."""

    app: str | None = None
    cluster: str | None = None


def _remember(attr: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
        if value is not None:
            setattr(ctx.ensure_object(Selection), attr, value)

    return callback


def cluster_option(f: F) -> F:
    return click.option(
        "-c", "--cluster", help="cluster name (default: the default cluster)", expose_value=False,
        callback=_remember("cluster"),
    )(f)  # fmt: skip


def app_options(f: F) -> F:
    """`-a/--app` and `-c/--cluster`, accepted after the subcommand as Heroku does."""
    f = click.option(
        "-a", "--app", help="app name (default: from the encom git remote)", expose_value=False,
        callback=_remember("app"),
    )(f)  # fmt: skip
    return cluster_option(f)


def selection() -> Selection:
    return click.get_current_context().ensure_object(Selection)


# ---------------------------------------------------------------- git


def git(*args: str, cwd: Path | None = None) -> str | None:
    """The stripped output of a git command, or None when it fails (or git is missing)."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def in_git_repo() -> bool:
    return git("rev-parse", "--git-dir") is not None


def remote_url(remote: str = DEFAULT_REMOTE) -> str | None:
    return git("config", "--get", f"remote.{remote}.url") or None


def app_from_remote_url(url: str) -> str | None:
    """`ssh://git@host:2222/example.git` or `git@host:example.git` -> `example`."""
    last = url.rstrip("/").replace(":", "/").rsplit("/", 1)[-1]
    name = last.removesuffix(".git")
    return name or None


def git_remote_for(git_url: str, app: str) -> str:
    return f"{git_url.rstrip('/')}/{app}.git"


def set_remote(remote: str, url: str) -> None:
    """Add the remote, or point the existing one at `url`."""
    if remote_url(remote) is not None:
        git("remote", "set-url", remote, url)
    elif git("remote", "add", remote, url) is None:
        raise CliError(f'cannot add the git remote "{remote}"')


def remove_remote_if_app(remote: str, app: str) -> bool:
    url = remote_url(remote)
    if url is None or app_from_remote_url(url) != app:
        return False
    return git("remote", "remove", remote) is not None


# ---------------------------------------------------------------- cluster and app resolution


def read_config() -> Config:
    try:
        return load_config()
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


def resolve_cluster(config: Config, name: str | None, git_remote: str | None = None) -> ClusterConfig:
    """The named cluster, else the one the git remote points at, else the default."""
    if not config.clusters:
        raise CliError(NO_CLUSTER)
    if name is not None:
        found = config.find(name)
        if found is None:
            raise CliError(f'no cluster named "{name}"; see "encom cluster"')
        return found
    if git_remote is not None:
        for cluster in config.clusters:
            if git_remote.startswith(cluster.git_url.rstrip("/") + "/"):
                return cluster
    default = config.default_cluster()
    assert default is not None
    return default


def resolve_app(given: str | None, git_remote: str | None) -> str:
    if given:
        return given
    name = app_from_remote_url(git_remote) if git_remote else None
    if name is None:
        raise CliError(NO_APP)
    return name


def current_cluster() -> ClusterConfig:
    sel = selection()
    return resolve_cluster(read_config(), sel.cluster, None if sel.cluster else remote_url())


def current_app() -> str:
    return resolve_app(selection().app, remote_url())


@dataclass
class Target:
    cluster: ClusterConfig
    app: str


def current_target() -> Target:
    """Cluster and app of an app command. The cluster comes first: no cluster is the more basic problem."""
    cluster = current_cluster()
    return Target(cluster, current_app())


# ---------------------------------------------------------------- the client


def pinned_cert(cluster: ClusterConfig) -> str:
    try:
        return cert_path(cluster.name).read_text()
    except OSError as exc:
        raise CliError(
            f'the certificate of cluster "{cluster.name}" is missing ({exc.strerror}); add the cluster again'
        ) from exc


def call(cluster: ClusterConfig, fn: Callable[[ControllerClient], Awaitable[T]]) -> T:
    """Run `fn` with a client of `cluster` (trusting only its pinned certificate) in a fresh event loop."""
    try:
        verify = pinned_context(pinned_cert(cluster))
    except ssl.SSLError as exc:
        raise CliError(
            f'the certificate of cluster "{cluster.name}" is unreadable ({exc}); add the cluster again'
        ) from exc

    async def go() -> T:
        async with ControllerClient(cluster.url, cluster.key, verify=verify) as client:
            return await fn(client)

    return asyncio.run(go())
