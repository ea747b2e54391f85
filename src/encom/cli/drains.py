"""`encom drain`: ship an app's log lines to a syslog (TCP/TLS) or HTTP(S) endpoint, as Heroku's log drains."""

from __future__ import annotations

import click

from encom.api.types import Drain
from encom.cli.context import app_options, call, current_target
from encom.cli.output import age, print_table

HEADERS = ["ID", "URL", "TOKEN", "CREATED"]


def drain_row(drain: Drain) -> list[str]:
    """ID, URL (as given: the owner sees their own credentials), TOKEN, CREATED."""
    return [drain.id, drain.url, drain.token, age(drain.created_at)]


@click.group("drain", invoke_without_command=True)
@app_options
@click.pass_context
def drain_group(ctx: click.Context) -> None:
    """List the app's log drains, or manage them with a subcommand."""
    if ctx.invoked_subcommand is None:
        target = current_target()
        drains: list[Drain] = call(target.cluster, lambda c: c.list_drains(target.app))
        print_table(HEADERS, [drain_row(d) for d in drains])


@drain_group.command("add")
@app_options
@click.argument("url")
def drain_add(url: str) -> None:
    """Ship the app's log lines to URL: syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT, https://… or http://…"""
    target = current_target()
    drain: Drain = call(target.cluster, lambda c: c.create_drain(target.app, url))
    click.echo(f"Drain {drain.id} added for {drain.url}")
    click.echo(f"Token: {drain.token}")


@drain_group.command("remove")
@app_options
@click.argument("drain_ref", metavar="ID|URL")
def drain_remove(drain_ref: str) -> None:
    """Stop shipping to a drain, given by its ID or its URL."""
    target = current_target()
    drain: Drain = call(target.cluster, lambda c: c.delete_drain(target.app, drain_ref))
    click.echo(f"Drain {drain.id} removed")
