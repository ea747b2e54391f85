"""`encom route`: HTTP (domain and path, optionally with their own TLS certificate) and TCP (port) routes to an
app's services."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from encom.api.types import Route, RouteCreate, RouteUpdate
from encom.cli.context import Selection, app_options, call, current_target
from encom.cli.output import CliError, print_table

F = TypeVar("F", bound=Callable[..., Any])

HEADERS = ["TYPE", "DOMAIN/PORT", "PATH", "SERVICE", "STICKY", "TLS", "ID"]
NONE = "-"  # an empty cell inside a row would shift the columns of `awk`-style readers


def split_domain_path(arg: str) -> tuple[str, str]:
    """`example.com/api` -> (`example.com`, `/api/`); `example.com` -> (`example.com`, `/`)."""
    domain, _, path = arg.partition("/")
    if not domain:
        raise CliError(f'invalid route "{arg}": expected <domain>[/<path>]')
    path = path.strip("/")
    return domain, f"/{path}/" if path else "/"


def tls_cell(route: Route) -> str:
    """`own` (the route's certificate), `default` (the cluster's), `-` for tcp."""
    if route.type != "http":
        return NONE
    return "own" if route.certificate else "default"


def route_row(route: Route) -> list[str]:
    """TYPE, DOMAIN/PORT, PATH, SERVICE, STICKY, TLS, ID."""
    if route.type == "http":
        where, path = route.domain or NONE, route.path
    else:
        where, path = str(route.port), NONE
    return [route.type, where, path, route.service, str(route.sticky).lower(), tls_cell(route), route.ref]


def sort_key(route: Route) -> tuple[str, str, int, str]:
    return (route.type, route.domain or "", route.port or 0, route.path)


def read_pem(path: str, what: str) -> str:
    """A PEM file's text, or a clear error (missing, unreadable, not text)."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise CliError(f'{what} file "{path}" does not exist') from None
    except IsADirectoryError:
        raise CliError(f'{what} file "{path}" is a directory') from None
    except OSError as exc:
        raise CliError(f'cannot read {what} file "{path}": {exc.strerror or exc}') from None
    except UnicodeDecodeError:
        raise CliError(f'{what} file "{path}" is not a PEM (text) file') from None


def read_tls(cert: str | None, key: str | None) -> tuple[str | None, str | None]:
    if (cert is None) != (key is None):
        raise CliError("a certificate needs its key: give both -c CERT.pem and -k KEY.pem")
    if cert is None or key is None:
        return None, None
    return read_pem(cert, "certificate"), read_pem(key, "key")


def _remember_app(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Selection).app = value


def _remember_cluster(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Selection).cluster = value


def tls_options(f: F) -> F:
    """`-c/--cert` and `-k/--key` (as Flynn spells them). `-c` is the certificate here, so these commands take
    the cluster as `--cluster` (or `encom -c NAME route ...`)."""
    f = click.option("-k", "--key", "key", metavar="KEY.pem", help="the certificate's private key (PEM)")(f)
    f = click.option("-c", "--cert", "cert", metavar="CERT.pem", help="TLS certificate (PEM chain) for the domain")(f)
    f = click.option(
        "-a", "--app", help="app name (default: from the encom git remote)", expose_value=False,
        callback=_remember_app,
    )(f)  # fmt: skip
    return click.option(
        "--cluster", help="cluster name (default: the default cluster)", expose_value=False,
        callback=_remember_cluster,
    )(f)  # fmt: skip


@click.group("route", invoke_without_command=True)
@app_options
@click.pass_context
def route_group(ctx: click.Context) -> None:
    """List routes, or manage them with a subcommand."""
    if ctx.invoked_subcommand is None:
        target = current_target()
        routes: list[Route] = call(target.cluster, lambda c: c.list_routes(target.app))
        print_table(HEADERS, [route_row(r) for r in sorted(routes, key=sort_key)])


@route_group.group("add")
def route_add() -> None:
    """Add an http or tcp route."""


@route_add.command("http")
@tls_options
@click.option("-s", "--service", help="discoverd service (default <app>-web)")
@click.option("--sticky", is_flag=True, help="pin each client to one backend with a cookie")
@click.argument("domain_path", metavar="DOMAIN[/PATH]")
def route_add_http(cert: str | None, key: str | None, service: str | None, sticky: bool, domain_path: str) -> None:
    """Route HTTP(S) requests for DOMAIN (and PATH) to the app; with -c/-k, HTTPS for DOMAIN uses that
    certificate instead of the cluster's."""
    domain, path = split_domain_path(domain_path)
    certificate, private_key = read_tls(cert, key)
    target = current_target()
    body = RouteCreate(
        type="http", domain=domain, path=path, service=service, sticky=sticky, certificate=certificate, key=private_key
    )
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


@route_group.command("update")
@tls_options
@click.option("-s", "--service", help="send to this discoverd service")
@click.option("--sticky/--no-sticky", default=None, help="pin each client to one backend with a cookie, or stop")
@click.option("--remove-cert", is_flag=True, help="drop the route's own certificate (the cluster's is used)")
@click.argument("route_id")
def route_update(
    cert: str | None, key: str | None, service: str | None, sticky: bool | None, remove_cert: bool, route_id: str
) -> None:
    """Change a route (`http/<uuid>` or `<uuid>`): its service, stickiness or certificate."""
    if remove_cert and (cert is not None or key is not None):
        raise CliError("--remove-cert cannot go with -c/-k")
    certificate, private_key = ("", "") if remove_cert else read_tls(cert, key)
    if service is None and sticky is None and certificate is None:
        raise CliError("nothing to update: give -s, --sticky/--no-sticky, -c/-k or --remove-cert")
    target = current_target()
    body = RouteUpdate(service=service, sticky=sticky, certificate=certificate, key=private_key)
    route = call(target.cluster, lambda c: c.update_route(target.app, route_id, body))
    click.echo(f"Updated {route.ref}")


@route_group.command("remove")
@app_options
@click.argument("route_id")
def route_remove(route_id: str) -> None:
    """Remove a route by its ID (`http/<uuid>` or `<uuid>`)."""
    target = current_target()
    call(target.cluster, lambda c: c.delete_route(target.app, route_id))
    click.echo(f"Route {route_id} removed.")
