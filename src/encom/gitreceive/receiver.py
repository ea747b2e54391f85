"""The pre-receive hook of every app repo: build the pushed commit in a container, release it, deploy it.

Run by git-receive-pack (see `service.py`) with the ref updates on stdin and ENCOM_DATA_DIR, ENCOM_APP_ID,
ENCOM_APP_NAME in the environment. Everything printed reaches the pusher as `remote:` lines; a non-zero exit
rejects the push, so a failed build leaves both the repo and the running release as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from encom.api.client import ca_context
from encom.api.errors import ApiError
from encom.api.settings import Settings
from encom.api.types import (
    BUILD_MEMORY,
    ENDED_JOB_STATES,
    RELEASE_TYPE,
    ArtifactCreate,
    Deployment,
    HealthCheck,
    HostJob,
    HostJobSpec,
    Job,
    ProcessType,
    Release,
    ReleaseCreate,
    Resources,
)
from encom.blobstore.client import BlobstoreClient
from encom.controller.client import ControllerClient
from encom.discoverd.client import DiscoverdClient
from encom.gitreceive import appjson
from encom.host.client import HostClient, pick_host

ZERO_SHA = "0" * 40
DEPLOY_REFS = ("refs/heads/master", "refs/heads/main")
SLUGBUILDER_ARGS = ["/usr/bin/python3", "/encom/build/slugbuilder.py"]
BUILD_TIMEOUT = 30 * 60.0
JOB_END_TIMEOUT = 30.0
DEPLOY_TIMEOUT = 45 * 60.0  # the deployer bounds every step; this only guards against a lost controller
JOB_LOG_LINES = 500
PROCESS_TYPE_RE = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
LOCK_FILE = "encom-build.lock"


class PushFailed(Exception):
    """Why the push is rejected, printed as ` !     <message>`."""


@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    ref: str


def parse_updates(text: str) -> list[RefUpdate]:
    """pre-receive's stdin: one `<old-sha> <new-sha> <ref>` line per updated ref."""
    updates = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            updates.append(RefUpdate(*parts))
    return updates


def deploy_update(updates: list[RefUpdate]) -> RefUpdate | None:
    """The master (or else main) branch update that creates or moves the branch; deletions do not deploy."""
    for ref in DEPLOY_REFS:
        for update in updates:
            if update.ref == ref and update.new != ZERO_SHA:
                return update
    return None


def say(line: str = "", out: TextIO | None = None) -> None:
    print(line, file=out or sys.stdout, flush=True)


def indent(text: str) -> str:
    return "       " + text


@dataclass(frozen=True)
class BlobPaths:
    app_id: str
    build_id: str

    @property
    def source(self) -> str:
        return f"sources/{self.app_id}/{self.build_id}.tar"

    @property
    def slug(self) -> str:
        return f"slugs/{self.app_id}/{self.build_id}.tgz"

    @property
    def cache(self) -> str:
        return f"caches/{self.app_id}.tar"

    @property
    def result(self) -> str:
        return f"builds/{self.app_id}/{self.build_id}.json"


def build_env(urls: dict[str, str], commit: str, release_env: dict[str, str]) -> dict[str, str]:
    """The build job's environment: the release's config vars, then the build's own (which win)."""
    return {**release_env, **urls, "SOURCE_VERSION": commit, "ENCOM_ENV_KEYS": ",".join(release_env)}


def release_processes(
    commands: dict[str, str], previous: Release | None, checks: dict[str, HealthCheck] | None = None
) -> dict[str, ProcessType]:
    """The Procfile's commands with app.json's health checks, keeping each type's env and resources from the
    previous release."""
    processes = {}
    for name, cmd in commands.items():
        old = previous.processes.get(name) if previous else None
        check = (checks or {}).get(name)
        if old is None:
            processes[name] = ProcessType(cmd=cmd, check=check)
        else:
            processes[name] = ProcessType(cmd=cmd, env=dict(old.env), resources=old.resources.model_copy(), check=check)
    return processes


def parse_result(data: bytes) -> dict[str, str]:
    """The slugbuilder's result JSON → process types; anything unexpected is an error (the build is hostile)."""
    try:
        body = json.loads(data)
        processes = body["processes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PushFailed(f"the build produced an invalid result: {exc}") from None
    if not isinstance(processes, dict) or not all(isinstance(v, str) for v in processes.values()):
        raise PushFailed("the build produced an invalid result: processes must map names to commands")
    bad = [k for k in processes if not PROCESS_TYPE_RE.match(str(k))]
    if bad:
        raise PushFailed(f"invalid process type names in Procfile: {', '.join(map(repr, bad))}")
    return {str(k): v for k, v in processes.items()}


def job_failure(job: HostJob) -> str:
    if job.state == "failed":
        return f"the build job could not start: {job.error or 'unknown error'}"
    if job.error and "memory" in job.error:
        return f"the build ran out of memory (limit {BUILD_MEMORY >> 30} GiB)"
    if job.exit_status == 0 and job.error:  # the build succeeded but its outputs were refused
        return job.error
    detail = f"exit status {job.exit_status}" if job.exit_status is not None else job.error or job.state
    return f"build failed ({detail})"


class Receiver:
    """One push: source → build job → artifact → release → deploy."""

    def __init__(self, settings: Settings, app_id: str, app_name: str, commit: str) -> None:
        self.settings = settings
        self.app_id = app_id
        self.app_name = app_name
        self.commit = commit
        self.paths = BlobPaths(app_id, uuid.uuid4().hex)
        verify = ca_context(settings.ca_cert_path)
        self.controller = ControllerClient(settings.controller_url, settings.cluster_key, verify=verify)
        self.blobstore = BlobstoreClient(settings.blobstore_url, settings.internal_secret)
        self.discoverd = DiscoverdClient(settings.discoverd_url, settings.internal_secret)

    async def aclose(self) -> None:
        for client in (self.controller, self.blobstore, self.discoverd):
            await client.aclose()

    async def run(self) -> None:
        say(f"-----> Building {self.app_name}...")
        previous = await self.controller.current_release(self.app_id)
        await self.upload_source()
        try:
            app_json = self.app_json(await self.read_file("app.json"))  # before the build: fail early
            commands = await self.build(previous)
        finally:  # only the build reads it: the repository keeps the commit
            with contextlib.suppress(ApiError):
                await self.blobstore.delete(self.paths.source)
        say("-----> Creating release...")
        release = await self.create_release(commands, self.checks(app_json, commands))
        await self.deploy(release)
        say("=====> Application deployed")

    # ------------------------------------------------------------ source

    async def git(self, *args: str) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            "git", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        return await proc.wait(), out

    async def read_file(self, path: str) -> bytes | None:
        """A file of the pushed commit, None when it has none; one larger than app.json may be is refused."""
        found, size = await self.git("cat-file", "-s", f"{self.commit}:{path}")
        if found != 0:
            return None
        if int(size) > appjson.MAX_SIZE:
            raise PushFailed(f"{path} is too large: {int(size)} bytes (at most {appjson.MAX_SIZE})")
        _, data = await self.git("cat-file", "blob", f"{self.commit}:{path}")
        return data

    async def upload_source(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            "git", "archive", "--format=tar", self.commit,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        stdout = proc.stdout

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await stdout.read(1 << 16):
                yield chunk

        errors = asyncio.create_task(proc.stderr.read())
        await self.blobstore.put(self.paths.source, chunks())
        if await proc.wait() != 0:
            raise PushFailed(f"git archive failed: {(await errors).decode(errors='replace').strip()}")

    # ------------------------------------------------------------ build

    async def pick_host(self) -> HostClient:
        try:
            return await pick_host(self.discoverd, self.settings.internal_secret, prefer=self.settings.host_id)
        except ApiError as exc:
            raise PushFailed(f"cannot run the build: {exc.message}") from None

    def job_spec(self, previous: Release | None) -> HostJobSpec:
        """The build reads its inputs with signed GETs of the app's own source and cache, and gets no way to write:
        its outputs are uploaded by the host from the build's /encom/out once it has ended."""
        ttl = BUILD_TIMEOUT + 600
        signed = self.blobstore.signed_url
        urls = {
            "SOURCE_URL": signed(self.paths.source, "GET", ttl),
            "CACHE_URL": signed(self.paths.cache, "GET", ttl),
        }
        outputs = {"slug": self.paths.slug, "cache": self.paths.cache, "result": self.paths.result}
        return HostJobSpec(
            id=self.paths.build_id,
            app_id=self.app_id,
            app_name=self.app_name,
            release_id=previous.id if previous else "",
            args=list(SLUGBUILDER_ARGS),
            env=build_env(urls, self.commit, previous.env if previous else {}),
            resources=Resources.for_build(),
            builder=True,
            outputs=outputs,
            stop_grace=5.0,
        )

    async def build(self, previous: Release | None) -> dict[str, str]:
        host = await self.pick_host()
        job: HostJob | None = None
        try:
            await host.add_job(self.job_spec(previous))
            async with asyncio.timeout(BUILD_TIMEOUT):
                await self.stream_log(host)
                job = await self.wait_ended(host)
        except TimeoutError:
            raise PushFailed(f"the build did not finish within {BUILD_TIMEOUT / 60:.0f} minutes") from None
        finally:
            if job is None:  # cancelled (the pusher hung up), timed out or lost: do not leave it running
                with contextlib.suppress(ApiError):
                    await host.stop_job(self.paths.build_id)
            await host.aclose()
        assert job is not None
        if job.state != "down" or job.exit_status not in (0, None):
            raise PushFailed(job_failure(job))
        try:
            return parse_result(await self.blobstore.get(self.paths.result))
        except ApiError as exc:
            if exc.status != 404:
                raise
            raise PushFailed("the build produced no result") from None

    async def stream_log(self, host: HostClient) -> None:
        try:
            async for line in host.job_log(self.paths.build_id, lines=100_000, follow=True):
                say(line.msg)
        except ApiError as exc:
            say(indent(f"(build output interrupted: {exc})"))

    async def wait_ended(self, host: HostClient) -> HostJob:
        """The job's final state. The log stream ends when the job has, so this is normally immediate."""
        async with asyncio.timeout(JOB_END_TIMEOUT):
            return await host.wait_ended(self.paths.build_id)

    # ------------------------------------------------------------ release and deploy

    @staticmethod
    def app_json(data: bytes | None) -> dict[str, list[appjson.RawCheck]]:
        try:
            return appjson.parse_app_json(data)
        except appjson.AppJsonError as exc:
            raise PushFailed(str(exc)) from None

    @staticmethod
    def checks(app_json: dict[str, list[appjson.RawCheck]], commands: dict[str, str]) -> dict[str, HealthCheck]:
        try:
            return appjson.health_checks(app_json, commands)
        except appjson.AppJsonError as exc:
            raise PushFailed(str(exc)) from None

    async def create_release(self, commands: dict[str, str], checks: dict[str, HealthCheck]) -> Release:
        # Read again: config may have changed during the build.
        current = await self.controller.current_release(self.app_id)
        artifact = await self.controller.create_artifact(
            ArtifactCreate(url=f"/{self.paths.slug}", meta={"commit": self.commit})
        )
        body = ReleaseCreate(
            app_id=self.app_id,
            artifact_id=artifact.id,
            env=dict(current.env) if current else {},
            processes=release_processes(commands, current, checks),
            meta={"git": "true", "git.commit": self.commit},
        )
        return await self.controller.create_release(body)

    async def current_counts(self) -> dict[str, int] | None:
        """The app's current formation counts, or None when it has never had one."""
        app = await self.controller.get_app(self.app_id)
        if app.release_id is None:
            return None
        formation = await self.controller.get_formation(self.app_id, app.release_id)
        return dict(formation.processes) if formation else None

    async def deploy(self, release: Release) -> None:
        counts = await self.current_counts() or {}
        processes = None
        if "web" in release.processes and "web" not in counts:
            say("=====> Scaling initial release to web=1")
            processes = {t: n for t, n in counts.items() if t in release.processes} | {"web": 1}
        if RELEASE_TYPE in release.processes:
            say("-----> Running release command...")
        progress = DeployProgress(release)
        try:
            async with asyncio.timeout(DEPLOY_TIMEOUT):
                deployment = await self.controller.deploy_and_wait(self.app_id, release.id, processes, progress.job)
        except TimeoutError:
            raise PushFailed(f"the deployment did not finish within {DEPLOY_TIMEOUT / 60:.0f} minutes") from None
        if deployment.release_job_id:
            await self.show_job_log(deployment.release_job_id)
        if deployment.status == "failed":
            await self.explain_failure(deployment, progress.failed)

    async def show_job_log(self, job_id: str) -> None:
        with contextlib.suppress(ApiError):
            for line in await self.controller.app_log(self.app_id, lines=JOB_LOG_LINES, job_id=job_id):
                if line.source == "app":
                    say(indent(line.msg))

    async def explain_failure(self, deployment: Deployment, failed: Job | None) -> None:
        say(f" !     Deploy failed: {deployment.error or 'unknown error'}")
        if failed is not None:
            await self.show_job_log(failed.id)
        if deployment.old_release_id:
            old = await self.controller.get_release(deployment.old_release_id)
            say(f" !     Rolled back: v{old.version} is still serving")
        raise PushFailed("the new release was not deployed; see `encom log`")


class DeployProgress:
    """Push output while a deployment runs: each new job up, each old one retired."""

    def __init__(self, release: Release) -> None:
        self.release = release
        self.failed: Job | None = None
        self.said: set[tuple[str, str]] = set()

    def job(self, job: Job) -> None:
        if not job.type or (job.id, job.state) in self.said:
            return
        self.said.add((job.id, job.state))
        new = job.release_id == self.release.id
        if new and job.state == "up":
            say(f"-----> {job.type} job {job.id[:12]} up (v{self.release.version})")
        elif not new and job.state == "stopping":
            say(f"-----> {job.type} job {job.id[:12]} of the previous release retired")
        elif new and job.state in ENDED_JOB_STATES and self.failed is None:
            self.failed = job


# ---------------------------------------------------------------- the hook


def lock_app(repo: Path, app_name: str) -> int:
    """One build at a time per app: a second push waits for the first."""
    fd = os.open(repo / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"-----> Waiting for another push to {app_name} to finish...")
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def run_push(settings: Settings, app_id: str, app_name: str, commit: str) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    receiver = Receiver(settings, app_id, app_name, commit)
    try:
        await receiver.run()
    finally:
        await receiver.aclose()


def main() -> int:
    app_id = os.environ["ENCOM_APP_ID"]
    app_name = os.environ["ENCOM_APP_NAME"]
    update = deploy_update(parse_updates(sys.stdin.read()))
    if update is None:
        say(" !     push must include a change to the master or main branch")
        return 1
    settings = Settings.load(Path(os.environ["ENCOM_DATA_DIR"]))
    lock = lock_app(Path.cwd(), app_name)
    try:
        asyncio.run(run_push(settings, app_id, app_name, update.new))
    except PushFailed as exc:
        say(f" !     {exc}")
        say(f" !     Push rejected to {app_name}")
        return 1
    except ApiError as exc:
        say(f" !     {exc}")
        say(f" !     Push rejected to {app_name}")
        return 1
    except asyncio.CancelledError:
        return 1
    finally:
        os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
