"""A fresh encom cluster started the way a user starts it, and a user's shell around the real CLI."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from encom.host.process import zombie_children

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PORT_BASE = int(os.environ.get("ENCOM_E2E_PORT_BASE", "30000"))  # another base lets two e2e runs coexist
RATE = 50.0  # requests per second of a steady load, sent on schedule whatever the answers (open loop)


@dataclass
class Result:
    args: list[str]
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass
class User:
    """A person at a shell: their own HOME, SSH key and git identity, the encom CLI on PATH."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, cwd: Path | None = None, input: str | None = None, timeout: float = 180) -> Result:
        proc = subprocess.run(
            list(args),
            cwd=cwd or self.home,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(list(args), proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, cwd: Path | None = None, input: str | None = None, timeout: float = 180) -> Result:
        result = self.run(*args, cwd=cwd, input=input, timeout=timeout)
        assert result.code == 0, f"{' '.join(args)} exited {result.code}:\n{result.out}\n{result.err}"
        return result

    def fails(self, *args: str, cwd: Path | None = None, timeout: float = 180) -> Result:
        result = self.run(*args, cwd=cwd, timeout=timeout)
        assert result.code != 0, f"{' '.join(args)} should have failed:\n{result.out}\n{result.err}"
        return result

    def encom(self, *args: str, cwd: Path | None = None, input: str | None = None) -> Result:
        return self.ok("encom", *args, cwd=cwd, input=input)

    def run_detached(self, script: str, cwd: Path) -> str:
        """`encom run -d sh -c SCRIPT`: the job's id, as the CLI prints it."""
        out = self.encom("run", "-d", "sh", "-c", script, cwd=cwd).out
        match = re.search(r"as job (\S+);", out)
        assert match, out
        return match.group(1)

    def app_repo(self, example: str, name: str) -> Path:
        """A copy of an example app as a git repo with one commit."""
        repo = self.home / name
        shutil.copytree(REPO / "examples" / example, repo)
        return self._commit_all(repo, "initial")

    def procfile_repo(self, name: str, procfile: str, message: str) -> Path:
        """A git repo with one commit holding only this Procfile (the Procfile-only buildpack builds it)."""
        repo = self.home / name
        repo.mkdir()
        (repo / "Procfile").write_text(procfile)
        return self._commit_all(repo, message)

    def _commit_all(self, repo: Path, message: str) -> Path:
        self.ok("git", "init", "-q", "-b", "master", cwd=repo)
        self.ok("git", "add", ".", cwd=repo)
        self.ok("git", "commit", "-q", "-m", message, cwd=repo)
        return repo


def make_user(home: Path, key_name: str = "id_ed25519") -> User:
    home.mkdir(parents=True, exist_ok=True)
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    key = home / ".ssh" / key_name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {
        "HOME": str(home),
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "GIT_AUTHOR_NAME": "Test User",
        "GIT_AUTHOR_EMAIL": "user@example.com",
        "GIT_COMMITTER_NAME": "Test User",
        "GIT_COMMITTER_EMAIL": "user@example.com",
        "GIT_SSH_COMMAND": f"ssh -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
    }
    return User(home=home, env=env)


@dataclass
class Cluster:
    state_dir: Path
    add_line: str
    router_port: int
    log: Path


def cluster_user(cluster: Cluster, home: Path) -> User:
    """A user with this cluster added and their SSH key uploaded."""
    user = make_user(home)
    user.encom(*cluster.add_line.split()[1:])
    user.encom("key", "add")
    return user


def start_cluster(state: Path, port_base: int) -> Cluster:
    """`python -m encom.bootstrap up` as `make up` runs it, on a compact high-port layout."""
    up = subprocess.run(
        [
            sys.executable,
            "-m",
            "encom.bootstrap",
            "up",
            "--state-dir",
            str(state),
            "--port-base",
            str(port_base),
            "--no-cli",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    log = state / "log" / "encomd.log"
    assert up.returncode == 0, f"bootstrap failed:\n{up.stdout}\n{up.stderr}\n{log.read_text() if log.exists() else ''}"
    line = next(ln.strip() for ln in up.stdout.splitlines() if ln.strip().startswith("encom cluster add"))
    return Cluster(state_dir=state, add_line=line, router_port=port_base + 80, log=log)


def stop_cluster(state: Path) -> None:
    """`make down`: encomd and everything it started."""
    subprocess.run(
        [sys.executable, "-m", "encom.bootstrap", "down", "--state-dir", str(state)],
        capture_output=True,
        timeout=120,
        cwd=REPO,
    )
    reap_adopted_zombies()


def reap_adopted_zombies() -> None:
    """When this test process is a child subreaper (host tests make it one), encomd and what it started
    re-parent to it once bootstrap exits; reap them so later tests see no zombies."""
    for pid in zombie_children():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def running_cluster(state: Path, port_base: int) -> Iterator[Cluster]:
    """A cluster for the duration of a `with` block, stopped (`make down`) even when the block fails."""
    try:
        yield start_cluster(state, port_base)
    finally:
        stop_cluster(state)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("encom-state"), PORT_BASE) as cluster:
        yield cluster


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def curl(port: int, host: str, path: str = "/") -> tuple[int, str]:
    """One request through the router with a Host header, as `curl -H 'Host: …'` sends it."""
    proc = subprocess.run(
        [
            "curl",
            "-s",
            "-m",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            f"Host: {host}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


@dataclass
class SteadyLoad:
    """Requests through the router at a fixed rate from a background thread; every answer but a 200 (or no
    answer within 5 s) is a failure."""

    port: int
    host: str
    bodies: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def one(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": self.host})
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
            with self.lock:
                if response.status == 200:
                    self.bodies.append(body)
                else:
                    self.failures[f"HTTP {response.status}"] += 1
        except OSError as exc:
            with self.lock:
                self.failures[type(exc).__name__] += 1
        finally:
            conn.close()

    def run(self) -> None:
        started, sent, workers = time.monotonic(), 0, []
        while not self.stop.is_set():
            due = started + sent / RATE
            time.sleep(max(0.0, due - time.monotonic()))
            worker = threading.Thread(target=self.one, daemon=True)
            worker.start()
            workers.append(worker)
            sent += 1
        for worker in workers:
            worker.join(10)

    @property
    def total(self) -> int:
        return len(self.bodies) + sum(self.failures.values())


@contextlib.contextmanager
def steady_load_on(cluster: Cluster, host: str) -> Iterator[SteadyLoad]:
    """Steady load through the router to `host` for the duration of the block (plus 1 s before and after)."""
    load = SteadyLoad(cluster.router_port, host)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    time.sleep(1.0)  # load before the change, too
    try:
        yield load
    finally:
        time.sleep(1.0)  # and after it
        load.stop.set()
        thread.join(20)


def assert_no_failures(load: SteadyLoad, what: str) -> None:
    assert load.total >= RATE * 2, f"only {load.total} requests were sent during {what}"
    failed = sum(load.failures.values())
    assert not failed, f"{failed} of {load.total} requests failed during {what}: {dict(load.failures)}"


@pytest.fixture(scope="session")
def user(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    u = make_user(tmp_path_factory.mktemp("home"))
    u.encom(*cluster.add_line.split()[1:])
    return u


os.environ.setdefault("ENCOM_E2E", "1")


@dataclass
class Follow:
    """`encom log -f` running, its stdout read line by line with the time each line arrived."""

    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            with self.lock:
                self.lines.append((time.time(), text.rstrip("\n")))

    def snapshot(self) -> list[tuple[float, str]]:
        with self.lock:
            return list(self.lines)


def start_follow(owner: User, repo: Path, *args: str) -> Follow:
    command = ["encom", "log", "-f", *args]
    pipe = subprocess.PIPE
    proc = subprocess.Popen(command, cwd=repo, env=owner.env, stdout=pipe, stderr=pipe, text=True)
    follow = Follow(proc)
    threading.Thread(target=follow.read, daemon=True).start()
    return follow


def stop_follow(follow: Follow) -> str:
    follow.proc.terminate()
    try:
        _, err = follow.proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        follow.proc.kill()
        _, err = follow.proc.communicate(timeout=10)
    return err
