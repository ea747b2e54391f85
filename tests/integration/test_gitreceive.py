"""git push over SSH against the real roles: build in a container, release, deploy, first web job up.

Starts the roles (discoverd, blobstore, host, controller, scheduler, gitreceive: `encom.<role>.service.run`) in a
child process that runs them the way encomd does, in a temp data dir on loopback ports 25000-25999, and pushes with
the stock git + ssh client from a temp HOME. Needs root and runc (builds and apps run in real containers), and PyPI
for the Python example's dependencies.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from encom.api.client import ca_context
from encom.api.settings import Settings
from encom.api.types import Job, Release
from encom.blobstore.client import BlobstoreClient
from encom.bootstrap.tls import ensure_tls
from encom.controller.client import ControllerClient
from tests.integration.roles import cluster_ports

pytestmark = [
    pytest.mark.integration,
]

REPO = Path(__file__).resolve().parents[2]
ROLES = ["discoverd", "blobstore", "host", "controller", "scheduler", "gitreceive"]
PORTS = cluster_ports(25000)
FIRST_PUSH = [
    "-----> Building example...",
    "-----> Python app detected",
    "Procfile declares types -> web",
    "-----> Compressing... done, ",
    "-----> Creating release...",
    "=====> Scaling initial release to web=1",
    "-----> web job ",
    "=====> Application deployed",
]

ROLE_START_TIMEOUT = 60.0

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Push:
    code: int
    output: str  # git's stderr, where `remote:` lines go
    seconds: float


@dataclass
class Pusher:
    """A user at a shell: a HOME with its own SSH key, pushing with the system git and ssh."""

    home: Path
    key: Path
    settings: Settings

    @property
    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "GIT_AUTHOR_NAME": "Test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "Test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
            "GIT_SSH_COMMAND": f"ssh -i {self.key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        }

    def git(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def repo(self, name: str, files: dict[str, str] | None = None, example: str | None = None) -> Path:
        path = self.home / name
        if example:
            shutil.copytree(REPO / "examples" / example, path)
        for rel, content in (files or {}).items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(content)
        for args in (("init", "-q", "-b", "master"), ("add", "-A"), ("commit", "-q", "-m", "initial")):
            assert self.git(*args, cwd=path).returncode == 0
        return path

    def push(self, repo: Path, app: str, *refspec: str) -> Push:
        url = f"ssh://git@127.0.0.1:{self.settings.ports.gitreceive}/{app}.git"
        started = time.monotonic()
        proc = self.git("push", url, *(refspec or ("master",)), cwd=repo)
        return Push(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)


def make_key(home: Path) -> Path:
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    key = home / ".ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def controller(settings: Settings) -> ControllerClient:
    return ControllerClient(settings.controller_url, settings.cluster_key, verify=ca_context(settings.ca_cert_path))


async def add_key_and_app(settings: Settings, key: Path, app: str) -> None:
    async with controller(settings) as client:
        await client.add_key(key.with_suffix(".pub").read_text())
        await client.create_app(app)


async def create_app(settings: Settings, app: str) -> None:
    async with controller(settings) as client:
        await client.create_app(app)


async def current_release(settings: Settings, app: str) -> Release | None:
    async with controller(settings) as client:
        return await client.current_release(app)


async def web_jobs(settings: Settings, app: str) -> list[Job]:
    async with controller(settings) as client:
        return [j for j in await client.list_jobs(app) if j.type == "web" and j.state == "up"]


async def blob_exists(settings: Settings, path: str) -> bool:
    async with BlobstoreClient(settings.blobstore_url, settings.internal_secret) as blobs:
        return await blobs.exists(path)


# encomd's way of running roles (one event loop, main thread, subreaper), in a child process of the test.
ROLES_RUNNER = """
import asyncio, importlib, signal, sys
from pathlib import Path
from encom.api.role import RoleContext
from encom.api.settings import Settings
from encom.bootstrap.daemon import become_subreaper

async def main() -> None:
    settings = Settings.load(Path(sys.argv[1]))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = []
    try:
        for name in settings.roles:
            ctx = RoleContext(settings)
            task = asyncio.create_task(importlib.import_module(f"encom.{name}.service").run(ctx))
            tasks.append((ctx, task))
            ready = asyncio.create_task(ctx.ready.wait())
            done, _ = await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                print(f"role {name} did not start", flush=True)
                if task.done():
                    task.result()
                return
        print("roles ready", flush=True)
        await stop.wait()
    finally:
        for ctx, task in reversed(tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

become_subreaper()
asyncio.run(main())
"""


def start_roles(settings: Settings) -> subprocess.Popen[bytes]:
    log = settings.log_dir / "roles.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", ROLES_RUNNER, str(settings.data_dir)], stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + ROLE_START_TIMEOUT * len(ROLES)
    while time.monotonic() < deadline and proc.poll() is None:
        if b"roles ready" in log.read_bytes():
            return proc
        time.sleep(0.1)
    stop_roles(proc)
    raise AssertionError(f"the roles did not start:\n{log.read_text()}")


def stop_roles(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_leftover_containers(settings: Settings) -> None:
    """Nothing this test started may outlive it, even if the host role failed to stop it."""
    root = settings.data_dir / "host" / "runc"
    if not root.exists():
        return
    listing = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True, check=False)
    for container in listing.stdout.split():
        subprocess.run(["runc", "--root", str(root), "delete", "--force", container], capture_output=True, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("encom-git"), ports=PORTS, roles=ROLES)
    ensure_tls(settings)
    settings.save()
    roles = start_roles(settings)
    try:
        yield settings
    finally:
        stop_roles(roles)
        kill_leftover_containers(settings)


@pytest.fixture(scope="module")
def pusher(cluster: Settings, tmp_path_factory: pytest.TempPathFactory) -> Pusher:
    home = tmp_path_factory.mktemp("home")
    key = make_key(home)
    run(add_key_and_app(cluster, key, "example"))
    return Pusher(home, key, cluster)


@pytest.fixture(scope="module")
def example(pusher: Pusher) -> Path:
    return pusher.repo("example", example="python-web")


def assert_in_order(output: str, lines: list[str]) -> None:
    position = 0
    for line in lines:
        found = output.find(line, position)
        assert found >= 0, f"push output lacks {line!r} (in order):\n{output}"
        position = found


def test_first_push_builds_releases_and_starts_web(pusher: Pusher, example: Path, cluster: Settings) -> None:
    push = pusher.push(example, "example")
    assert push.code == 0, push.output
    assert_in_order(push.output, FIRST_PUSH)
    print(f"{push.output}\nfirst push (cold build): {push.seconds:.1f}s")

    release = run(current_release(cluster, "example"))
    assert release is not None
    assert release.processes["web"].cmd == "gunicorn --bind 0.0.0.0:$PORT --workers 2 app:app"
    commit = pusher.git("rev-parse", "HEAD", cwd=example).stdout.strip()
    assert release.meta["git.commit"] == commit
    jobs = run(web_jobs(cluster, "example"))
    assert len(jobs) == 1 and jobs[0].release_id == release.id and jobs[0].port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{jobs[0].port}/", timeout=10) as response:
        body = response.read().decode()
    assert body.startswith(f"Hello from example: dyno=web.1 job={jobs[0].id} port={jobs[0].port} greeting=none")


def test_slug_is_in_the_blobstore(cluster: Settings) -> None:
    release = run(current_release(cluster, "example"))
    assert release is not None and release.artifact_id is not None

    async def artifact_url() -> str:
        async with controller(cluster) as client:
            return (await client.get_artifact(str(release.artifact_id))).url

    url = run(artifact_url())
    assert url.startswith("/slugs/") and url.endswith(".tgz")
    assert run(blob_exists(cluster, url))
    # the pushed source was the build's alone: gone once the build has ended (the repository keeps the commit)
    source = url.replace("/slugs/", "sources/", 1).removesuffix(".tgz") + ".tar"
    assert not run(blob_exists(cluster, source))


def test_second_push_keeps_counts_and_uses_the_cache(pusher: Pusher, example: Path, cluster: Settings) -> None:
    before = run(current_release(cluster, "example"))
    assert pusher.git("commit", "-q", "--allow-empty", "-m", "again", cwd=example).returncode == 0
    push = pusher.push(example, "example")
    assert push.code == 0, push.output
    assert_in_order(push.output, ["-----> Building example...", "-----> Creating release...", "Application deployed"])
    assert "Scaling initial release" not in push.output
    print(f"{push.output}\nsecond push (warm build): {push.seconds:.1f}s")
    after = run(current_release(cluster, "example"))
    assert before is not None and after is not None and after.version == before.version + 1


def test_failed_build_leaves_the_release_and_rejects_the_push(pusher: Pusher, cluster: Settings) -> None:
    before = run(current_release(cluster, "example"))
    readme = pusher.repo("readme-only", files={"README.md": "nothing to build\n"})
    push = pusher.push(readme, "example", "--force", "master")
    assert push.code != 0
    assert "Unable to select a buildpack" in push.output, push.output
    assert "pre-receive hook declined" in push.output
    after = run(current_release(cluster, "example"))
    assert before is not None and after is not None and after.id == before.id


def test_push_without_master_or_main_is_refused(pusher: Pusher, example: Path) -> None:
    push = pusher.push(example, "example", "master:refs/heads/feature")
    assert push.code != 0
    assert "push must include a change to the master or main branch" in push.output


def test_unknown_app_is_refused(pusher: Pusher, example: Path) -> None:
    push = pusher.push(example, "nope")
    assert push.code != 0
    assert 'app "nope" does not exist; create it with "encom create nope"' in push.output


def test_unknown_key_is_refused(pusher: Pusher, example: Path, tmp_path: Path) -> None:
    stranger = Pusher(tmp_path, make_key(tmp_path), pusher.settings)
    push = stranger.push(example, "example")
    assert push.code != 0
    assert "Permission denied (publickey)" in push.output


def test_only_receive_pack_is_allowed(pusher: Pusher, tmp_path: Path) -> None:
    proc = pusher.git("clone", f"ssh://git@127.0.0.1:{pusher.settings.ports.gitreceive}/example.git", cwd=tmp_path)
    assert proc.returncode != 0
    assert "only git push is supported" in proc.stderr


def test_nodejs_example_builds_and_answers(pusher: Pusher, cluster: Settings) -> None:
    run(create_app(cluster, "example-node"))
    repo = pusher.repo("example-node", example="nodejs-web")
    push = pusher.push(repo, "example-node")
    assert push.code == 0, push.output
    assert_in_order(push.output, ["-----> Node.js app detected", "npm ci", "Procfile declares types -> web"])
    assert "=====> Application deployed" in push.output
    print(f"{push.output}\nnode push: {push.seconds:.1f}s")
    jobs = run(web_jobs(cluster, "example-node"))
    assert len(jobs) == 1 and jobs[0].port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{jobs[0].port}/", timeout=10) as response:
        assert response.read().decode().startswith("Hello from example: dyno=web.1 job=")
