"""`encom route`: HTTP (domain and path) and TCP (port) routes to an app's services."""

from __future__ import annotations

import click

from encom.api.types import Route, RouteCreate
from encom.cli.context import app_options, call, current_target
from encom.cli.output import CliError, print_table


def split_domain_path(arg: str) -> tuple[str, str]:
    """`example.com/api` -> (`example.com`, `/api/`); `example.com` -> (`example.com`, `/`)."""
    domain, _, path = arg.partition("/")
    if not domain:
        raise CliError(f'invalid route "{arg}": expected <domain>[/<path>]')
    path = path.strip("/")
    return domain, f"/{path}/" if path else "/"


def route_row(route: Route) -> list[str]:
    where = f"http:{route.domain}" if route.type == "http" else f"tcp:{route.port}"
    path = route.path if route.type == "http" else ""
    return [where, route.service, route.ref, str(route.sticky).lower(), path]


def sort_key(route: Route) -> tuple[str, str, int, str]:
    return (route.type, route.domain or "", route.port or 0, route.path)


@click.group("route", invoke_without_command=True)
@app_options
@click.pass_context
def route_group(ctx: click.Context) -> None:
    """List routes, or manage them with a subcommand."""
    if ctx.invoked_subcommand is None:
        target = current_target()
        routes: list[Route] = call(target.cluster, lambda c: c.list_routes(target.app))
        print_table(["ROUTE", "SERVICE", "ID", "STICKY", "PATH"], [route_row(r) for r in sorted(routes, key=sort_key)])


@route_group.group("add")
def route_add() -> None:
    """Add an http or tcp route."""


@route_add.command("http")
@app_options
@click.option("-s", "--service", help="discoverd service (default <app>-web)")
@click.option("--sticky", is_flag=True, help="pin each client to one backend with a cookie")
@click.argument("domain_path", metavar="DOMAIN[/PATH]")
def route_add_http(service: str | None, sticky: bool, domain_path: str) -> None:
    """Route HTTP requests for DOMAIN (and PATH) to the app."""
    domain, path = split_domain_path(domain_path)
    target = current_target()
    body = RouteCreate(type="http", domain=domain, path=path, service=service, sticky=sticky)
    route = call(target.cluster, lambda c: c.create_route(target.app, body))
    click.echo(route.ref)


@route_add.command("tcp")
@app_options
@click.option("-s", "--service", help="discoverd service (default <app>-web)")
@click.option("-p", "--port", type=click.IntRange(1, 65535), help="router port (default: the next free one)")
def route_add_tcp(service: str | None, port: int | None) -> None:
    """Route a TCP port of the router to the app."""
    target = current_target()
    body = RouteCreate(type="tcp", port=port, service=service)
    route = call(target.cluster, lambda c: c.create_route(target.app, body))
    click.echo(f"{route.ref} listening on port {route.port}")


@route_group.command("remove")
@app_options
@click.argument("route_id")
def route_remove(route_id: str) -> None:
    """Remove a route by its ID (`http/<uuid>` or `<uuid>`)."""
    target = current_target()
    call(target.cluster, lambda c: c.delete_route(target.app, route_id))
    click.echo(f"Route {route_id} removed.")
