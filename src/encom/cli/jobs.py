"""`encom ps` and `encom log`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import click

from encom.api.errors import ApiError
from encom.api.types import Job, LogLine
from encom.cli.context import app_options, call, current_target
from encom.cli.output import age, print_table
from encom.controller.client import ControllerClient


@dataclass
class JobList:
    jobs: list[Job]
    versions: dict[str, int]  # release id -> version


async def fetch_jobs(client: ControllerClient, app: str, include_ended: bool) -> JobList:
    found = await client.get_app(app)
    jobs = await client.list_jobs(found.id, include_ended=include_ended)
    releases = await client.list_releases(found.id)
    return JobList(jobs, {r.id: r.version for r in releases})


PS_HEADER = ["ID", "TYPE", "STATE", "PORT", "RELEASE", "RESTARTS", "STARTED"]


def state_text(job: Job) -> str:
    """`up`; for an ended job why it ended: `crashed (out of memory)`, `crashed (exit 3)`; for a pending job
    what it waits for: `pending (waiting for a host: ... no free job port ...)`."""
    if job.state == "pending" and job.error:
        return f"pending ({job.error})"
    if job.state not in ("crashed", "failed", "down"):
        return job.state
    if job.error:
        return f"{job.state} ({job.error})"
    if job.exit_status is not None and job.exit_status != 0:
        return f"{job.state} (exit {job.exit_status})"
    return job.state


def job_rows(listing: JobList) -> list[list[str]]:
    def row(job: Job) -> list[str]:
        version = listing.versions.get(job.release_id)
        release = f"v{version}" if version is not None else job.release_id[:8]
        port = str(job.port) if job.port is not None else "-"
        return [job.id, job.type or "run", state_text(job), port, release, str(job.restarts), age(job.created_at)]

    return [row(j) for j in sorted(listing.jobs, key=lambda j: (j.type, j.created_at, j.id))]


@click.command("ps")
@app_options
# Only the long form: `-a` selects the app (`encom ps -a example`), as in Heroku.
@click.option("--all", "include_ended", is_flag=True, help="include jobs that have ended")
def ps(include_ended: bool) -> None:
    """List the app's jobs."""
    target = current_target()
    listing = call(target.cluster, lambda c: fetch_jobs(c, target.app, include_ended))
    print_table(PS_HEADER, job_rows(listing))


MAX_LOG_LINES = 10000


@click.command("log")
@app_options
@click.option(
    "-n", "--lines", type=click.IntRange(1, MAX_LOG_LINES), default=100, show_default=True, help="how many lines"
)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines as they are written (Ctrl-C stops)")
@click.option("-t", "--type", "process_type", help="only this process type")
@click.option("-j", "--job", "job_id", help="only this job (an id from `encom ps`)")
@click.option("-s", "--split-stderr", is_flag=True, help="print the jobs' stderr lines to stderr")
@click.option("--raw", is_flag=True, help="only the messages, without time and source")
def log(lines: int, follow: bool, process_type: str | None, job_id: str | None, split_stderr: bool, raw: bool) -> None:
    """Show the app's log lines (every job, across deploys and restarts), oldest first."""
    target = current_target()

    def show(line: LogLine) -> None:
        click.echo(line.msg if raw else line.format(), err=split_stderr and line.stream == "stderr")

    async def stream(client: ControllerClient) -> None:
        if not follow:
            async for line in client.app_log_stream(target.app, lines, process_type, job_id):
                if line is not None:
                    show(line)
            return
        await follow_log(client, target.app, lines, process_type, job_id, show)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a follow; nothing to report
        call(target.cluster, stream)


RECONNECT = (0.5, 1.0, 2.0)  # seconds before each new try (the last repeats)


async def follow_log(
    client: ControllerClient,
    app: str,
    lines: int,
    process_type: str | None,
    job_id: str | None,
    show: Callable[[LogLine], None],
) -> None:
    """Follow until Ctrl-C. A lost stream (the controller restarting, a dead connection) is resumed after the
    last line shown, so no line is lost or shown twice; errors that are the request's (404, 400) end it."""
    last: datetime | None = None
    attempt = 0
    while True:
        try:
            source = client.app_log_stream(
                app, MAX_LOG_LINES if last else lines, process_type, job_id, follow=True, since=last
            )
            async for line in source:
                attempt = 0
                if line is not None:
                    show(line)
                    last = line.timestamp
        except ApiError as exc:
            if exc.status < 500:
                raise
            if attempt == 0:
                click.echo(f"(log stream lost: {exc.message}; reconnecting)", err=True)
        await asyncio.sleep(RECONNECT[min(attempt, len(RECONNECT) - 1)])
        attempt += 1
