"""`encom env`: the release's environment; every change is a new release, deployed."""

from __future__ import annotations

import click

from encom.api.types import Release
from encom.cli.context import app_options, call, current_target
from encom.cli.output import CliError
from encom.cli.releases import release_with_env
from encom.controller.client import ControllerClient


def parse_assignments(args: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`K=V` arguments (the value may hold `=` and be empty) in order."""
    result: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key or any(ch.isspace() for ch in key) or "\0" in arg:
            raise CliError(f'invalid argument "{arg}": expected KEY=VALUE')
        result[key] = value
    return result


def env_lines(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(env.items())]


async def current_env(client: ControllerClient, app: str) -> dict[str, str]:
    release = await client.current_release(app)
    return dict(release.env) if release else {}


async def set_env(client: ControllerClient, app: str, changes: dict[str, str]) -> Release:
    return await release_with_env(client, app, lambda env: {**env, **changes}, "Set " + ", ".join(changes))


async def unset_env(client: ControllerClient, app: str, keys: list[str]) -> Release:
    def drop(env: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in env.items() if k not in keys}

    return await release_with_env(client, app, drop, "Unset " + ", ".join(keys))


@click.group("env", invoke_without_command=True)
@app_options
@click.pass_context
def env_group(ctx: click.Context) -> None:
    """Show the environment, or change it with a subcommand."""
    if ctx.invoked_subcommand is None:
        target = current_target()
        env = call(target.cluster, lambda c: current_env(c, target.app))
        for line in env_lines(env):
            click.echo(line)


@env_group.command("get")
@app_options
@click.argument("key")
def env_get(key: str) -> None:
    """Print one variable's value."""
    target = current_target()
    env = call(target.cluster, lambda c: current_env(c, target.app))
    if key not in env:
        raise CliError(f"env var {key} is not set")
    click.echo(env[key])


@env_group.command("set")
@app_options
@click.argument("assignments", nargs=-1, required=True)
def env_set(assignments: tuple[str, ...]) -> None:
    """Set variables (KEY=VALUE ...) in a new release."""
    changes = parse_assignments(assignments)
    target = current_target()
    release = call(target.cluster, lambda c: set_env(c, target.app, changes))
    click.echo(f"Created release v{release.version}.")


@env_group.command("unset")
@app_options
@click.argument("keys", nargs=-1, required=True)
def env_unset(keys: tuple[str, ...]) -> None:
    """Remove variables in a new release."""
    target = current_target()
    release = call(target.cluster, lambda c: unset_env(c, target.app, list(keys)))
    click.echo(f"Created release v{release.version}.")
