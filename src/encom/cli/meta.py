"""`encom meta`: the app's metadata, which also holds its deploy settings (`strategy`, `stop_grace`)."""

from __future__ import annotations

import click

from encom.cli.context import app_options, call, current_target
from encom.cli.env import env_lines, parse_assignments
from encom.cli.output import CliError


@click.group("meta", invoke_without_command=True)
@app_options
@click.pass_context
def meta_group(ctx: click.Context) -> None:
    """Show the app's metadata. Deploy settings live here: strategy=one-by-one|all-at-once,
    stop_grace=SECONDS (between SIGTERM and SIGKILL)."""
    if ctx.invoked_subcommand is None:
        target = current_target()
        app = call(target.cluster, lambda c: c.get_app(target.app))
        for line in env_lines(app.meta):
            click.echo(line)


@meta_group.command("set")
@app_options
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
def meta_set(assignments: tuple[str, ...]) -> None:
    """Set metadata keys (checked by the controller: nothing is stored when one is invalid)."""
    changes: dict[str, str | None] = dict(parse_assignments(assignments))
    target = current_target()
    call(target.cluster, lambda c: c.update_app(target.app, changes))
    click.echo(f"Updated {target.app}: " + ", ".join(assignments))


@meta_group.command("unset")
@app_options
@click.argument("keys", nargs=-1, required=True)
def meta_unset(keys: tuple[str, ...]) -> None:
    """Remove metadata keys (deploy settings go back to their defaults)."""
    target = current_target()
    app = call(target.cluster, lambda c: c.get_app(target.app))
    missing = [key for key in keys if key not in app.meta]
    if missing:
        raise CliError(f"{target.app} has no meta key {', '.join(missing)}")
    call(target.cluster, lambda c: c.update_app(target.app, dict.fromkeys(keys)))
    click.echo(f"Removed from {target.app}: " + ", ".join(keys))
