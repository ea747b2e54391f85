"""`encom run` (one-off jobs) and `encom kill`.

An attached run streams stdin to the job and its stdout/stderr back byte for byte over the controller's attach
websocket (frames: encom.api.attach); on a terminal the job gets a pseudo-terminal and the local one goes raw.
"""

from __future__ import annotations

import sys
from typing import Protocol

import click

from encom.api.attach import AttachExit
from encom.cli.attached import Session, raw_mode, terminal_size
from encom.cli.context import app_options, call, current_target
from encom.cli.output import CliError
from encom.controller.client import ControllerClient


class Ended(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def exit_status(self) -> int | None: ...


def exit_code(job: Ended) -> int:
    """The job's exit status as the CLI's: 0 for a clean exit, the status when it crashed, 1 when it never ran."""
    if job.state == "down":
        return job.exit_status or 0
    if job.exit_status is not None:
        return job.exit_status
    return 1


async def run_attached(
    client: ControllerClient, app: str, args: list[str], tty: bool, process_type: str | None = None
) -> AttachExit:
    size = terminal_size() if tty else None
    job = await client.run_job(app, args, attach=True, tty=tty, size=size, process_type=process_type)
    async with client.attach_job(app, job.id) as conn:
        with raw_mode(sys.stdin.fileno(), tty):
            result = await Session(conn, tty).run()
    if result is None:
        raise CliError(f"lost the connection to job {job.id}; it may still be running (see `encom ps`)")
    return result


@click.command(
    "run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)  # everything after the command name is the command's, options included
@app_options
@click.option("-d", "--detach", is_flag=True, help="run in the background; the output goes to the log")
@click.option("-t", "--type", "process_type", help="run with this process type's limits (default: web's)")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(detach: bool, process_type: str | None, command: tuple[str, ...]) -> None:
    """Run a command in a one-off job from the current release, with the app's env and its web type's limits
    (memory, cpu, max_fd, max_procs, temp_disk; another type's with --type, see `encom limit`).

    The job is attached: your stdin is its stdin, its stdout and stderr are yours, and on a terminal it gets one
    too (`encom run bash`). Ctrl-C interrupts it (twice: kills it); the exit status is the job's."""
    target = current_target()
    if detach:
        job = call(target.cluster, lambda c: c.run_job(target.app, list(command), process_type=process_type))
        click.echo(f"Running `{' '.join(command)}` as job {job.id}; its output goes to `encom log`.")
        return
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    result = call(target.cluster, lambda c: run_attached(c, target.app, list(command), tty, process_type))
    if result.state == "failed":
        click.echo(f"error: the job could not start: {result.error or 'unknown error'}", err=True)
    sys.exit(exit_code(result))


@click.command("kill")
@app_options
@click.argument("job")
def kill(job: str) -> None:
    """Stop a job (by id or a unique prefix); a formation job is replaced, a one-off job is not."""
    target = current_target()
    killed = call(target.cluster, lambda c: c.kill_job(target.app, job))
    click.echo(f"Job {killed.id} killed.")
