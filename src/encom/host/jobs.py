"""The jobs of this host: admission, stop, adoption after an encomd restart, history of ended jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import ValidationError as PydanticValidationError

from encom.api.aio import wait_for
from encom.api.errors import Conflict, NotFound, ValidationError
from encom.api.files import private_dir
from encom.api.types import RUNNING_HOST_STATES, HostJob, HostJobSpec, LogLine, utcnow
from encom.host import disk, process
from encom.host.bundle import JOB_ID_RE
from encom.host.logs import JobLog, Kept, Pulse, follow_many, logs_to_drop, merged_tail
from encom.host.runner import RECORD, HostDeps, JobRunner
from encom.host.runtime import RuncError

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 2.0
PURGE_GRACE = 2.0  # a deleted app's jobs still running get SIGKILL this long after SIGTERM
LIVE_AFTER_END = timedelta(seconds=30)  # an ended job's log is still followed this long (late router lines)


def validate_spec(spec: HostJobSpec) -> None:
    if not JOB_ID_RE.match(spec.id):
        raise ValidationError("job id must be 1-128 characters of letters, digits, '.', '_' and '-'")
    if spec.cmd is None and not spec.args:
        raise ValidationError("a job needs cmd or args")
    if (spec.check is not None or spec.service) and not spec.port:
        raise ValidationError("a health check or a service needs port: true")


class JobManager:
    def __init__(self, deps: HostDeps, jobs_dir: Path) -> None:
        self.deps = deps
        self.dir = jobs_dir
        self.runners: dict[str, JobRunner] = {}
        # per app: fires on every append to one of its jobs' logs, and when it gets a job (its log followers)
        self.log_changed: dict[str, Pulse] = defaultdict(Pulse)
        private_dir(jobs_dir)

    # ------------------------------------------------------------------ queries

    def active(self) -> list[HostJob]:
        return [r.job for r in self.runners.values() if r.job.state in RUNNING_HOST_STATES]

    def all(self) -> list[HostJob]:
        return sorted((r.job for r in self.runners.values()), key=lambda j: j.created_at)

    def runner(self, job_id: str) -> JobRunner:
        runner = self.runners.get(job_id)
        if runner is None:
            raise NotFound(f"no job {job_id} on this host")
        return runner

    def container_pids(self) -> set[int]:
        return {r.job.pid for r in self.runners.values() if r.job.pid and not r.ended.is_set()}

    # ------------------------------------------------------------------ commands

    def add(self, spec: HostJobSpec) -> HostJob:
        validate_spec(spec)
        if spec.id in self.runners or (self.dir / spec.id).exists():
            raise Conflict(f"job {spec.id} already exists on this host")
        try:
            port = self.deps.ports.allocate() if spec.port else None
        except LookupError as exc:
            raise Conflict(str(exc)) from exc
        job = HostJob(spec=spec, host_id=self.deps.host_id, state="starting", port=port, created_at=utcnow())
        (self.dir / spec.id).mkdir(mode=0o700)
        runner = JobRunner(self.deps, job, self.dir / spec.id)
        self._track(runner)
        runner.persist()
        self.deps.events.publish(job)
        runner.start()
        self._prune_history()
        return job

    async def stop(self, job_id: str, wait: float) -> HostJob:
        """Stop a job; returns once it has ended or after `wait` seconds (then still "stopping")."""
        runner = self.runner(job_id)
        task = asyncio.create_task(runner.stop(runner.job.spec.stop_grace))
        with contextlib.suppress(TimeoutError):
            await wait_for(asyncio.shield(task), wait)
        return runner.job

    async def shutdown(self, detach: bool) -> None:
        runners = [r for r in self.runners.values() if not r.ended.is_set()]
        if detach:
            await asyncio.gather(*(r.detach() for r in runners), return_exceptions=True)
        else:
            await asyncio.gather(*(r.stop(SHUTDOWN_GRACE) for r in runners), return_exceptions=True)

    async def purge_app(self, app_id: str) -> int:
        """Remove everything this host keeps of a deleted app: its jobs (stopped first, ended ones too) with their
        records and logs, its slugs in the cache and its uid's entry. Idempotent; returns the jobs removed."""
        runners = self._app_runners(app_id, None, None)
        await asyncio.gather(*(r.stop(PURGE_GRACE) for r in runners if not r.ended.is_set()))
        for runner in runners:
            self.runners.pop(runner.id, None)
        self.log_changed.pop(app_id, None)
        job_dirs = [r.paths.dir for r in runners]
        keep = {r.job.spec.artifact_url for r in self.runners.values() if r.job.spec.artifact_url}
        await asyncio.to_thread(_remove_dirs, job_dirs)
        await asyncio.to_thread(self.deps.slugs.drop_all_but, keep)
        self.deps.uids.forget(app_id)
        if runners:
            log.info("removed the %d jobs of deleted app %s", len(runners), app_id)
        return len(runners)

    # ------------------------------------------------------------------ logs

    def _track(self, runner: JobRunner) -> None:
        pulse = self.log_changed[runner.job.spec.app_id]
        runner.log.also = pulse
        self.runners[runner.id] = runner
        pulse.fire()

    def _app_runners(self, app_id: str, process_type: str | None, job_id: str | None) -> list[JobRunner]:
        return [
            r
            for r in self.runners.values()
            if r.job.spec.app_id == app_id
            and (process_type is None or r.job.spec.process_type == process_type)
            and (job_id is None or r.id == job_id)
        ]

    def app_log(self, app_id: str, lines: int, process_type: str | None, job_id: str | None = None) -> list[LogLine]:
        return merged_tail([r.log for r in self._app_runners(app_id, process_type, job_id)], lines)

    def follow_app_log(
        self,
        app_id: str,
        lines: int,
        process_type: str | None,
        job_id: str | None = None,
        since: datetime | None = None,
    ) -> AsyncIterator[LogLine | None]:
        """The app's last lines, None, then its new lines as they come (jobs started later too) until the host
        shuts down; a None also now and then as a keepalive (see `follow_many`)."""

        def live() -> list[JobLog]:
            cutoff = utcnow() - LIVE_AFTER_END
            return [
                r.log
                for r in self._app_runners(app_id, process_type, job_id)
                if not r.ended.is_set() or (r.job.ended_at or cutoff) > cutoff
            ]

        history = [r.log for r in self._app_runners(app_id, process_type, job_id)]
        return follow_many(history, live, lines, self.log_changed[app_id], lambda: self.deps.events.closed, since)

    def job_log(self, job_id: str, lines: int, follow: bool) -> AsyncIterator[LogLine]:
        runner = self.runner(job_id)
        if follow:
            return runner.log.follow(lines, lambda: runner.ended.is_set() or self.deps.events.closed)
        return _iterate(runner.log.tail(lines))

    # ------------------------------------------------------------------ adoption and history

    async def adopt(self) -> None:
        """Take over what a previous encomd left: running containers keep running (and their ports), records of
        containers that died meanwhile end as crashed, containers without a record are removed."""
        try:
            containers = {c.id: c for c in await self.deps.runc.list()}
        except RuncError as exc:
            log.warning("runc list: %s", exc)
            containers = {}
        for record in sorted(self.dir.glob(f"*/{RECORD}")):
            job = _load(record)
            if job is None:
                continue
            runner = JobRunner(self.deps, job, record.parent)
            self._track(runner)
            if job.state not in RUNNING_HOST_STATES:
                continue
            container = containers.pop(job.id, None)
            if container is not None and container.status == "running" and process.alive(container.pid):
                runner.job = job.model_copy(update={"pid": container.pid})
                if job.port is not None:
                    self.deps.ports.reserve(job.port)
                runner.start(adopted=True)
                log.info("adopted job %s (pid %d)", job.id, container.pid)
            else:
                await self.deps.runc.delete(job.id)
                runner.set_state("crashed", ended_at=utcnow(), error="exited while encomd was not running")
                runner.ended.set()
        for orphan in containers:
            log.warning("removing container %s: no job record", orphan)
            await self.deps.runc.kill(orphan, "KILL")
            await self.deps.runc.delete(orphan)
        await asyncio.to_thread(self._remove_ended_disks)
        self._prune_history()

    def _remove_ended_disks(self) -> None:
        """Disks left mounted by jobs that ended while no encomd (or a crashed one) was watching; a running job
        adopted above keeps its own."""
        for runner in self.runners.values():
            if runner.ended.is_set() and disk.has_disk(runner.paths.dir):
                log.info("removing the disk of ended job %s", runner.id)
                disk.remove(runner.paths.dir)

    def _prune_history(self) -> None:
        """Ended jobs (record and log) go by each app's retention rule (see `logs_to_drop`), so one busy app
        cannot push another's history out."""
        by_app: dict[str, list[Kept]] = defaultdict(list)
        for r in self.runners.values():
            ended = r.ended.is_set()
            when = (r.job.ended_at if ended else None) or r.job.created_at
            by_app[r.job.spec.app_id].append(Kept(r.id, r.log, ended, when))
        for app_logs in by_app.values():
            for job_id in logs_to_drop(app_logs):
                _remove_job_dir(self.runners.pop(job_id).paths.dir)


def _remove_job_dir(directory: Path) -> None:
    disk.remove(directory)  # unmounted first: never walk into a job's filesystem
    shutil.rmtree(directory, ignore_errors=True)


def _remove_dirs(dirs: list[Path]) -> None:
    for directory in dirs:
        _remove_job_dir(directory)


def _load(record: Path) -> HostJob | None:
    try:
        return HostJob.model_validate_json(record.read_text())
    except (OSError, PydanticValidationError) as exc:
        log.warning("ignoring unreadable job record %s: %s", record, exc)
        return None


async def _iterate(lines: list[LogLine]) -> AsyncIterator[LogLine]:
    for line in lines:
        yield line
