"""The real `encom` CLI against the real controller role (HTTPS on a loopback port, pinned certificate).

The controller runs in a thread with its own event loop, because the CLI runs its own with asyncio.run. The
test plays the scheduler where one is needed (reporting job states through the controller's job API).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner, Result

from encom.api.client import ca_context
from encom.api.role import RoleContext
from encom.api.settings import Ports, Settings
from encom.api.types import ArtifactCreate, Job, JobState, ProcessType, Release, ReleaseCreate
from encom.bootstrap.tls import controller_pin, ensure_tls
from encom.cli.main import cli
from encom.controller.client import ControllerClient
from encom.controller.service import run
from tests.integration.roles import free_port
from tests.unit.test_routes_tls import tls_pair

pytestmark = pytest.mark.integration

START_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0
ENCOM = Path(sys.executable).parent / "encom"
PORTS = (27000, 27999)  # the range reserved for these tests
T = TypeVar("T")


class ControllerThread:
    """The controller role serving from a background thread until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        ctx = RoleContext(self.settings)
        self.task = asyncio.create_task(run(ctx))
        ready = asyncio.create_task(ctx.ready.wait())
        await asyncio.wait({self.task, ready}, return_when=asyncio.FIRST_COMPLETED)
        self.ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(START_TIMEOUT):
            raise AssertionError(f"the controller did not start within {START_TIMEOUT:.0f}s")
        if self.error is not None or self.task is None or self.task.done():
            raise AssertionError(f"the controller failed to start: {self.error!r}")

    def stop(self) -> None:
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the controller did not stop within 15s"


@dataclass
class Cluster:
    settings: Settings
    pin: str
    home: Path

    @property
    def url(self) -> str:
        return self.settings.controller_url

    def api(self, fn: Callable[[ControllerClient], Awaitable[T]]) -> T:
        """A direct controller call (what gitreceive or the scheduler would do)."""

        async def go() -> T:
            verify = ca_context(self.settings.ca_cert_path)
            async with ControllerClient(self.url, self.settings.cluster_key, verify=verify) as client:
                return await fn(client)

        return asyncio.run(go())

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "GIT_"))}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"))
        return env


@contextlib.contextmanager
def controller_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ports: tuple[int, int]) -> Iterator[Cluster]:
    """A real controller on a free port in `ports`, and a user HOME for the CLI (shared by CLI-level tests)."""
    settings = Settings(data_dir=tmp_path / "data", ports=Ports(controller=free_port(*ports)))
    ensure_tls(settings)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.chdir(home)
    controller = ControllerThread(settings)
    controller.start()
    try:
        yield Cluster(settings, controller_pin(settings), home)
    finally:
        controller.stop()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with controller_cluster(tmp_path, monkeypatch, PORTS) as cluster:
        yield cluster


def encom(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def ok(*args: str) -> str:
    result = encom(*args)
    assert result.exit_code == 0, f"encom {' '.join(args)} exited {result.exit_code}:\n{result.output}"
    return result.stdout


def fails(*args: str) -> str:
    result = encom(*args)
    assert result.exit_code == 1, f"encom {' '.join(args)} should have failed:\n{result.output}"
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output, result.output
    return result.stderr


def add_cluster(cluster: Cluster) -> None:
    assert ok("cluster", "add", "-p", cluster.pin, "local", cluster.url, cluster.settings.cluster_key) == (
        'Cluster "local" added.\n'
    )


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=30).stdout


def push_release(cluster: Cluster, app: str, env: dict[str, str] | None = None) -> Release:
    """What gitreceive does after a build: artifact, release, deploy (all counts 0)."""

    async def go(client: ControllerClient) -> Release:
        found = await client.get_app(app)
        artifact = await client.create_artifact(ArtifactCreate(url=f"/slugs/{found.id}/{uuid.uuid4()}.tgz"))
        processes = {"web": ProcessType(cmd="python app.py"), "worker": ProcessType(cmd="python worker.py")}
        release = await client.create_release(
            ReleaseCreate(app_id=found.id, artifact_id=artifact.id, env=env or {}, processes=processes)
        )
        await client.deploy_and_wait(found.id, release.id, {"web": 0, "worker": 0})
        return release

    return cluster.api(go)


def test_cluster_add_errors(cluster: Cluster) -> None:
    assert "TLS pin mismatch" in fails("cluster", "add", "-p", "A" * 43 + "=", "x", cluster.url, "k")
    assert "key was refused" in fails("cluster", "add", "-p", cluster.pin, "x", cluster.url, "wrong-key")
    assert "no cluster configured" in fails("apps")
    add_cluster(cluster)
    assert 'cluster "local" already exists' in fails("cluster", "add", "-p", cluster.pin, "local", cluster.url, "k")
    assert ok("cluster").splitlines() == ["NAME             URL", f"local (default)  {cluster.url}"]


def test_keys(cluster: Cluster) -> None:
    add_cluster(cluster)
    ssh = cluster.home / ".ssh"
    ssh.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", str(ssh / "id_ed25519")])
    added = ok("key", "add")
    match = re.fullmatch(r"Key (SHA256:\S+) added\.\n", added)
    assert match, added
    fingerprint = match.group(1)
    header, row = ok("key").splitlines()
    assert header.split() == ["FINGERPRINT", "COMMENT"] and row.split() == [fingerprint, "me@laptop"]
    assert "exists" in fails("key", "add", str(ssh / "id_ed25519.pub")).lower()
    assert ok("key", "remove", fingerprint) == f"Key {fingerprint} removed.\n"
    assert ok("key") == "FINGERPRINT  COMMENT\n"


def test_app_lifecycle(cluster: Cluster) -> None:
    add_cluster(cluster)
    repo = cluster.home / "example"
    repo.mkdir()
    git(repo, "init", "-q")
    os.chdir(repo)
    assert ok("create", "example") == "Created example\n"
    assert git(repo, "remote", "get-url", "encom").strip() == "ssh://git@127.0.0.1:2222/example.git"
    assert ok("create", "-r", "", "other") == "Created other\n"
    assert "conflict" in fails("create", "example").lower() or "exists" in fails("create", "example").lower()

    apps = ok("apps").splitlines()
    assert apps[0].split() == ["ID", "NAME"]
    assert [line.split()[1] for line in apps[1:]] == ["example", "other"]

    assert ok("info").splitlines() == [
        "=== example",
        "Git URL: ssh://git@127.0.0.1:2222/example.git",
        "Web URL: http://example.encom.localhost",
    ]
    assert ok("info", "-a", "other").splitlines()[0] == "=== other"

    assert fails("scale") == "error: app has no release; push first\n"
    assert fails("env", "set", "A=1") == "error: app has no release; push first\n"

    deleted = encom("delete", input="n\n")
    assert deleted.exit_code == 1 and 'Are you sure you want to delete the app "example"? [y/N]' in deleted.output
    deleted = encom("delete", input="y\n")
    assert deleted.exit_code == 0, deleted.output
    assert "Deleted example (removed 1 routes, deleted 0 releases)" in deleted.stdout
    assert git(repo, "remote") == ""
    assert "no app given" in fails("info")
    assert "not found" in fails("delete", "-y", "-a", "example").lower()
    assert ok("delete", "-y", "-a", "other") == "Deleted other (removed 1 routes, deleted 0 releases)\n"


def test_env_and_releases(cluster: Cluster) -> None:
    add_cluster(cluster)
    ok("create", "example")
    push_release(cluster, "example", {"BASE": "1"})
    assert ok("env", "-a", "example") == "BASE=1\n"
    assert ok("env", "set", "-a", "example", "A=var", "B=2") == "Created release v2.\n"
    assert ok("env", "-a", "example") == "A=var\nB=2\nBASE=1\n"
    assert ok("env", "get", "-a", "example", "A") == "var\n"
    assert ok("env", "unset", "-a", "example", "A") == "Created release v3.\n"
    assert fails("env", "get", "-a", "example", "A") == "error: env var A is not set\n"
    assert 'invalid argument "NOPE"' in fails("env", "set", "-a", "example", "NOPE")

    releases = ok("release", "-a", "example").splitlines()
    assert releases[0].split() == ["VERSION", "ID", "CREATED", "DESCRIPTION"]
    assert releases[1].split()[:2] == ["*", "v3"]
    assert re.findall(r"^\*?\s*(v\d+)", "\n".join(releases), re.M) == ["v3", "v2", "v1"]
    assert releases[1].endswith("Unset A") and releases[2].endswith("Set A, B")


def route_table(app: str) -> dict[str, list[str]]:
    """`encom route` as {ID: cells}, after checking the header."""
    table = ok("route", "-a", app).splitlines()
    assert table[0].split() == ["TYPE", "DOMAIN/PORT", "PATH", "SERVICE", "STICKY", "TLS", "ID"]
    return {line.split()[-1]: line.split() for line in table[1:]}


def test_routes(cluster: Cluster) -> None:
    add_cluster(cluster)
    ok("create", "example")
    assert 'need its "/" route first' in fails("route", "add", "http", "-a", "example", "example.com/api")
    root = ok("route", "add", "http", "-a", "example", "example.com")
    assert re.fullmatch(r"http/[0-9a-f-]+\n", root), root
    added = ok("route", "add", "http", "-a", "example", "--sticky", "example.com/api")
    assert re.fullmatch(r"http/[0-9a-f-]+\n", added), added
    ref = added.strip()
    assert "Duplicate route" in fails("route", "add", "http", "-a", "example", "example.com/api")
    tcp = ok("route", "add", "tcp", "-a", "example", "--port", "3333")
    match = re.fullmatch(r"(tcp/[0-9a-f-]+) listening on port 3333\n", tcp)
    assert match, tcp

    rows = route_table("example")
    assert rows[ref] == ["http", "example.com", "/api/", "example-web", "true", "default", ref]
    assert rows[root.strip()] == ["http", "example.com", "/", "example-web", "false", "default", root.strip()]
    assert rows[match.group(1)] == ["tcp", "3333", "-", "example-web", "false", "-", match.group(1)]
    assert any(r[1] == "example.encom.localhost" for r in rows.values())

    assert ok("route", "remove", "-a", "example", ref) == f"Route {ref} removed.\n"
    bare = match.group(1).split("/", 1)[1]
    assert ok("route", "remove", "-a", "example", bare) == f"Route {bare} removed.\n"
    assert len(ok("route", "-a", "example").splitlines()) == 3
    assert fails("route", "remove", "-a", "example", ref).startswith("error: ")


def test_route_certificates_and_update(cluster: Cluster) -> None:
    add_cluster(cluster)
    ok("create", "example")
    cert, key = tls_pair("www.example.com")
    (cluster.home / "cert.pem").write_text(cert)
    (cluster.home / "key.pem").write_text(key)
    other_cert, other_key = tls_pair("*.example.com")
    (cluster.home / "other.pem").write_text(other_cert)
    (cluster.home / "other-key.pem").write_text(other_key)

    assert fails("route", "add", "http", "-a", "example", "-c", "missing.pem", "-k", "key.pem", "www.example.com") == (
        'error: certificate file "missing.pem" does not exist\n'
    )
    assert fails("route", "add", "http", "-a", "example", "-c", "cert.pem", "www.example.com") == (
        "error: a certificate needs its key: give both -c CERT.pem and -k KEY.pem\n"
    )
    assert fails(
        "route", "add", "http", "-a", "example", "-c", "cert.pem", "-k", "other-key.pem", "www.example.com"
    ) == ("error: certificate does not match its key\n")
    assert fails("route", "add", "http", "-a", "example", "-c", "cert.pem", "-k", "key.pem", "api.example.com") == (
        'error: certificate is not valid for "api.example.com" (it covers: www.example.com)\n'
    )
    ref = ok("route", "add", "http", "-a", "example", "-c", "cert.pem", "-k", "key.pem", "www.example.com").strip()
    api = ok("route", "add", "http", "--cluster", "local", "-a", "example", "api.example.com").strip()
    rows = route_table("example")
    assert rows[ref][1:] == ["www.example.com", "/", "example-web", "false", "own", ref]
    assert rows[api][5] == "default"

    assert ok("route", "update", "-a", "example", api, "-c", "other.pem", "-k", "other-key.pem", "--sticky") == (
        f"Updated {api}\n"
    )
    bare = ref.split("/", 1)[1]
    assert ok("route", "update", "-a", "example", bare, "--remove-cert", "-s", "example-admin-web") == (
        f"Updated {ref}\n"
    )
    rows = route_table("example")
    assert rows[api][1:] == ["api.example.com", "/", "example-web", "true", "own", api]
    assert rows[ref][1:] == ["www.example.com", "/", "example-admin-web", "false", "default", ref]
    assert ok("route", "update", "-a", "example", api, "--no-sticky") == f"Updated {api}\n"
    assert route_table("example")[api][4] == "false"

    assert "nothing to update" in fails("route", "update", "-a", "example", api)
    assert "--remove-cert cannot go with -c/-k" in fails(
        "route", "update", "-a", "example", api, "--remove-cert", "-c", "cert.pem", "-k", "key.pem"
    )
    assert fails("route", "update", "-a", "example", api, "-c", "cert.pem", "-k", "key.pem") == (
        'error: certificate is not valid for "api.example.com" (it covers: www.example.com)\n'
    )
    assert 'route "http/nope" not found' in fails("route", "update", "-a", "example", "http/nope", "--sticky")
    tcp = ok("route", "add", "tcp", "-a", "example").split()[0]
    assert fails("route", "update", "-a", "example", tcp, "--sticky") == "error: sticky is for http routes\n"


def report(cluster: Cluster, release: Release, job_id: str, state: JobState, port: int | None = None) -> None:
    """Play the scheduler: record a job state in the controller."""
    now = datetime.now(UTC)
    job = Job(
        id=job_id, app_id=release.app_id, release_id=release.id, type="web", state=state, port=port,
        error="boom" if state == "crashed" else None, created_at=now, updated_at=now,
    )  # fmt: skip
    cluster.api(lambda c: c.put_job(job))


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def web_count(cluster: Cluster, release: Release) -> int:
    formation = cluster.api(lambda c: c.get_formation(release.app_id, release.id))
    return formation.processes.get("web", 0) if formation else 0


def run_cli(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(ENCOM), *args], env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the CLI did not finish within {CLI_TIMEOUT:.0f}s:\n{out}\n{err}") from None
    return proc.returncode, out, err


def test_scale_and_ps(cluster: Cluster) -> None:
    add_cluster(cluster)
    ok("create", "example")
    release = push_release(cluster, "example")
    assert ok("scale", "-a", "example") == "web=0 worker=0\n"
    assert fails("scale", "-a", "example", "foo=1") == 'error: unknown process types: "foo"\n'
    assert ok("scale", "-a", "example", "-n", "worker=1") == "scaling worker: 0=>1\n"
    assert ok("scale", "-a", "example") == "web=0 worker=1\n"

    # Scale up: the CLI follows the job events until both web jobs are up.
    proc = run_cli(cluster, "scale", "-a", "example", "web=2")
    wait_for("the formation to ask for 2 web jobs", lambda: web_count(cluster, release) == 2)
    jobs = [str(uuid.uuid4()) for _ in range(2)]
    for i, job_id in enumerate(jobs):
        report(cluster, release, job_id, "starting")
        report(cluster, release, job_id, "up", port=27000 + i)
    code, out, err = finish(proc)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "scaling web: 0=>2"
    for job_id in jobs:
        assert re.search(rf"^\d\d:\d\d:\d\d\.\d{{3}} ==> web {job_id} up$", out, re.M), out
    assert re.fullmatch(r"scale completed in \d+\.\d{3}s", lines[-1]), out

    ps = ok("ps", "-a", "example").splitlines()
    assert ps[0].split() == ["ID", "TYPE", "STATE", "PORT", "RELEASE", "RESTARTS", "STARTED"]
    assert sorted(line.split()[:5] for line in ps[1:]) == sorted(
        [job_id, "web", "up", str(27000 + i), "v1"] for i, job_id in enumerate(jobs)
    )

    # Scale down: done once the extra job is down.
    proc = run_cli(cluster, "scale", "-a", "example", "web=1")
    wait_for("the formation to ask for 1 web job", lambda: web_count(cluster, release) == 1)
    report(cluster, release, jobs[1], "stopping")
    report(cluster, release, jobs[1], "down")
    code, out, err = finish(proc)
    assert code == 0, out + err
    assert out.splitlines()[0] == "scaling web: 2=>1" and f"==> web {jobs[1]} down" in out, out
    assert "scale completed in" in out
    assert len(ok("ps", "-a", "example").splitlines()) == 2
    assert len(ok("ps", "-a", "example", "--all").splitlines()) == 3

    # A crash while scaling up fails the scale with the job's reason.
    proc = run_cli(cluster, "scale", "-a", "example", "web=2")
    wait_for("the formation to ask for 2 web jobs", lambda: web_count(cluster, release) == 2)
    crasher = str(uuid.uuid4())
    report(cluster, release, crasher, "starting")
    report(cluster, release, crasher, "crashed")
    code, out, err = finish(proc)
    assert code == 1 and err == f"error: web job {crasher} crashed: boom\n", out + err

    # No job comes: the timeout names the type that did not reach its count.
    code, out, err = finish(run_cli(cluster, "scale", "-a", "example", "-t", "1", "web=3"))
    assert code == 1 and err == "error: timed out after 1s waiting for web=3 (1 up)\n", out + err


def test_meta_holds_the_deploy_settings(cluster: Cluster) -> None:
    add_cluster(cluster)
    ok("create", "example")
    assert ok("meta", "-a", "example") == ""
    assert ok("meta", "set", "-a", "example", "strategy=all-at-once", "stop_grace=5") == (
        "Updated example: strategy=all-at-once, stop_grace=5\n"
    )
    assert ok("meta", "-a", "example") == "stop_grace=5\nstrategy=all-at-once\n"
    assert 'unknown deploy strategy "blue-green"' in fails("meta", "set", "-a", "example", "strategy=blue-green")
    assert "stop_grace must be a number of seconds" in fails("meta", "set", "-a", "example", "stop_grace=soon")
    assert ok("meta", "-a", "example") == "stop_grace=5\nstrategy=all-at-once\n"  # nothing stored
    assert ok("meta", "unset", "-a", "example", "strategy") == "Removed from example: strategy\n"
    assert "has no meta key strategy" in fails("meta", "unset", "-a", "example", "strategy")
    assert ok("meta", "-a", "example") == "stop_grace=5\n"
