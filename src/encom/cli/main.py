"""The `encom` command: a click group of thin commands over the controller client."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import click
import httpx
import pydantic

from encom.api.errors import ApiError
from encom.cli import apps, clusters, drains, env, jobs, keys, limits, meta, release_commands, routes, run, scale
from encom.cli.context import Selection, app_options
from encom.cli.output import CliError


class EncomGroup(click.Group):
    """Turns every API failure into `error: <message>` and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            raise CliError(exc.message) from exc
        except httpx.HTTPError as exc:
            raise CliError(f"request failed: {exc}") from exc
        except pydantic.ValidationError as exc:
            raise CliError(f"unexpected answer from the controller: {exc}") from exc
        except OSError as exc:
            raise CliError(str(exc)) from exc


@click.group(cls=EncomGroup, context_settings={"help_option_names": ["-h", "--help"]})
@app_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """encom: git push to deploy on your own machines."""
    ctx.ensure_object(Selection)


@cli.command("version")
def version() -> None:
    """Print the CLI's version."""
    click.echo(f"encom {encom_version()}")


def encom_version() -> str:
    try:
        return metadata.version("encom")
    except metadata.PackageNotFoundError:
        return "unknown"


for command in (
    clusters.cluster_group,
    keys.key_group,
    apps.create,
    apps.apps,
    apps.info,
    apps.delete,
    scale.scale,
    jobs.ps,
    jobs.log,
    run.run,
    run.kill,
    env.env_group,
    limits.limit_group,
    meta.meta_group,
    release_commands.release_group,
    release_commands.deployment_list,
    routes.route_group,
    drains.drain_group,
):
    cli.add_command(command)


def main() -> None:
    cli.main(prog_name="encom")
