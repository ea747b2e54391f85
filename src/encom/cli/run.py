"""`encom run` (one-off jobs) and `encom kill`."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import click

from encom.api.types import ENDED_JOB_STATES, Job, LogLine
from encom.cli.context import app_options, call, current_target
from encom.controller.client import ControllerClient

POLL_SECONDS = 0.3
LOG_LINES = 10_000


def exit_code(job: Job) -> int:
    """The job's exit status as the CLI's: 0 for a clean exit, the status when it crashed, 1 when it never ran."""
    if job.state == "down":
        return job.exit_status or 0
    if job.exit_status is not None:
        return job.exit_status
    return 1


class Output:
    """The job's output, printed once per line as it shows up in the app's log."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.seen: set[tuple[str, str, str]] = set()

    def show(self, lines: list[LogLine]) -> None:
        for line in lines:
            key = (line.timestamp.isoformat(), line.stream, line.msg)
            if line.job_id != self.job_id or line.source != "app" or key in self.seen:
                continue
            self.seen.add(key)
            click.echo(line.msg, err=line.stream == "stderr")


async def follow(client: ControllerClient, app: str, job: Job) -> Job:
    """Print the job's output as it is written until the job has ended; Ctrl-C stops the job."""
    output = Output(job.id)

    async def printing() -> None:
        async for line in client.app_log_stream(app, lines=LOG_LINES, job_id=job.id, follow=True):
            if line is not None:
                output.show([line])

    printer = asyncio.create_task(printing())
    try:
        while (job := await client.get_job(app, job.id)).state not in ENDED_JOB_STATES:
            if printer.done():
                printer.result()  # the stream failed: say why
            await asyncio.sleep(POLL_SECONDS)
    except asyncio.CancelledError:
        await client.kill_job(app, job.id)
        raise
    finally:
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
    output.show(await client.app_log(app, lines=LOG_LINES, job_id=job.id))  # what the stream had not sent yet
    return job


async def run_job(client: ControllerClient, app: str, args: list[str], detach: bool) -> Job:
    job = await client.run_job(app, args)
    return job if detach else await follow(client, app, job)


@click.command(
    "run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)  # everything after the command name is the command's, options included
@app_options
@click.option("-d", "--detach", is_flag=True, help="run in the background; the output goes to the log")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(detach: bool, command: tuple[str, ...]) -> None:
    """Run a command in a one-off job from the current release, with the app's env."""
    target = current_target()
    job = call(target.cluster, lambda c: run_job(c, target.app, list(command), detach))
    if detach:
        click.echo(f"Running `{' '.join(command)}` as job {job.id}; its output goes to `encom log`.")
        return
    if job.state == "failed":
        click.echo(f"error: the job could not start: {job.error or 'unknown error'}", err=True)
    sys.exit(exit_code(job))


@click.command("kill")
@app_options
@click.argument("job")
def kill(job: str) -> None:
    """Stop a job (by id or a unique prefix); a formation job is replaced, a one-off job is not."""
    target = current_target()
    killed = call(target.cluster, lambda c: c.kill_job(target.app, job))
    click.echo(f"Job {killed.id} killed.")
