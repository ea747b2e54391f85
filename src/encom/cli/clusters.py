"""`encom cluster`: the clusters the CLI knows, each pinned to its controller's TLS certificate."""

from __future__ import annotations

import asyncio
import hmac
import socket
import ssl
from urllib.parse import urlsplit

import click

from encom.api.client import cert_pin, pinned_context
from encom.api.errors import ApiError
from encom.cli.config import (
    ClusterConfig,
    Config,
    ConfigError,
    cert_path,
    check_cluster_name,
    save_config,
    write_private,
)
from encom.cli.context import read_config
from encom.cli.output import CliError, print_table
from encom.controller.client import ControllerClient

DEFAULT_GIT_PORT = 2222
CONNECT_TIMEOUT = 10.0


def parse_url(url: str) -> tuple[str, str, int]:
    """The normalized controller URL, its host and its port. Only HTTPS is accepted."""
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise CliError(f'invalid cluster URL "{url}": expected https://<host>[:<port>]')
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise CliError(f'invalid cluster URL "{url}": {exc}') from exc
    return url.rstrip("/"), parts.hostname, port


def default_git_url(host: str) -> str:
    return f"ssh://git@{f'[{host}]' if ':' in host else host}:{DEFAULT_GIT_PORT}"


def fetch_certificate(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bytes:
    """The DER of the leaf certificate the server presents. Not verified here: the pin is the check."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise CliError(f"cannot connect to {host}:{port} with TLS: {exc}") from exc
    if not der:
        raise CliError(f"{host}:{port} presented no TLS certificate")
    return der


def check_pin(der: bytes, pin: str, where: str) -> None:
    actual = cert_pin(der)
    if not hmac.compare_digest(actual.encode(), pin.strip().encode()):
        raise CliError(
            f"TLS pin mismatch: the certificate of {where} has pin {actual}, not {pin.strip()}; "
            "check the -p value printed by the cluster's bootstrap"
        )


async def check_key(url: str, key: str, pem: str) -> None:
    async with ControllerClient(url, key, verify=pinned_context(pem), timeout=CONNECT_TIMEOUT) as client:
        try:
            await client.list_keys()
        except ApiError as exc:
            if exc.status == 401:
                raise CliError(f"the key was refused by {url}: {exc.message}") from exc
            raise


def check_conflicts(config: Config, name: str, url: str, force: bool) -> list[str]:
    """An existing name or URL is an error unless forced. Returns the other clusters a forced add replaces."""
    if config.find(name) is not None and not force:
        raise CliError(f'cluster "{name}" already exists; use -f to replace it')
    replaced = [c.name for c in config.clusters if c.url == url and c.name != name]
    if replaced and not force:
        raise CliError(f'{url} conflicts with cluster "{replaced[0]}"; use -f to replace it')
    return replaced


def add_cluster(
    config: Config, name: str, url: str, key: str, pin: str, git_url: str | None, force: bool, make_default: bool
) -> ClusterConfig:
    """Check the pin and the key, then save the certificate and the cluster. Nothing is saved on failure."""
    try:
        check_cluster_name(name)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    url, host, port = parse_url(url)
    replaced = check_conflicts(config, name, url, force)
    der = fetch_certificate(host, port)
    check_pin(der, pin, f"{host}:{port}")
    pem = ssl.DER_cert_to_PEM_cert(der)
    asyncio.run(check_key(url, key, pem))
    cluster = ClusterConfig(name=name, url=url, key=key, tls_pin=pin.strip(), git_url=git_url or default_git_url(host))
    write_private(cert_path(name), pem)
    for other in replaced:
        config.remove(other)
        cert_path(other).unlink(missing_ok=True)
    first = not config.clusters
    config.upsert(cluster)
    if first or make_default or config.default is None:
        config.default = name
    save_config(config)
    return cluster


@click.group("cluster", invoke_without_command=True)
@click.pass_context
def cluster_group(ctx: click.Context) -> None:
    """List clusters, or manage them with a subcommand."""
    if ctx.invoked_subcommand is None:
        list_clusters(read_config())


def list_clusters(config: Config) -> None:
    default = config.default_cluster()
    rows = [[c.name + (" (default)" if c is default else ""), c.url] for c in config.clusters]
    print_table(["NAME", "URL"], rows)


@cluster_group.command("add")
@click.option("-f", "--force", is_flag=True, help="replace a cluster of the same name or URL")
@click.option("-d", "--default", "make_default", is_flag=True, help="make it the default cluster")
@click.option("-g", "--git-url", help="git push URL (default ssh://git@<host>:2222)")
@click.option("-p", "--tls-pin", required=True, help="base64 SHA-256 of the controller's certificate")
@click.argument("name")
@click.argument("url")
@click.argument("key")
def cluster_add(
    force: bool, make_default: bool, git_url: str | None, tls_pin: str, name: str, url: str, key: str
) -> None:
    """Add a cluster: NAME, controller URL and cluster KEY."""
    add_cluster(read_config(), name, url, key, tls_pin, git_url, force, make_default)
    click.echo(f'Cluster "{name}" added.')


@cluster_group.command("remove")
@click.argument("name")
def cluster_remove(name: str) -> None:
    """Forget a cluster (removing the default promotes the next one)."""
    config = read_config()
    if config.find(name) is None:
        raise CliError(f'no cluster named "{name}"')
    config.remove(name)
    save_config(config)
    cert_path(name).unlink(missing_ok=True)
    click.echo(f'Cluster "{name}" removed.')


@cluster_group.command("default")
@click.argument("name", required=False)
def cluster_default(name: str | None) -> None:
    """Show or set the default cluster."""
    config = read_config()
    if name is None:
        default = config.default_cluster()
        if default is None:
            raise CliError("no cluster configured")
        click.echo(default.name)
        return
    if config.find(name) is None:
        raise CliError(f'no cluster named "{name}"')
    config.default = name
    save_config(config)
    click.echo(f'"{name}" is now the default cluster.')
