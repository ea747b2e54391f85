"""One-off jobs and kill, as a user types them: `encom run`, `run -d`, `encom kill`."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, User, cluster_user, wait_for

pytestmark = pytest.mark.e2e

APP = "runner"


@pytest.fixture(scope="module")
def owner(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    return cluster_user(cluster, tmp_path_factory.mktemp("runner-home"))


@pytest.fixture(scope="module")
def repo(owner: User) -> Path:
    repo = owner.app_repo("python-web", APP)
    owner.encom("create", APP, cwd=repo)
    return repo


def test_run_before_the_first_push(owner: User, repo: Path) -> None:
    failed = owner.fails("encom", "run", "echo", "foo", cwd=repo)
    assert "App has no release, push first" in failed.err
    owner.ok("git", "push", "encom", "master", cwd=repo, timeout=300)


def test_run_prints_the_output_and_exits_with_the_status(owner: User, repo: Path) -> None:
    assert owner.encom("run", "echo", "foo", cwd=repo).out == "foo\n"
    status = owner.run("encom", "run", "-a", APP, "sh", "-c", "echo to-err >&2; exit 42", cwd=repo)
    assert (status.code, status.err) == (42, "to-err\n")
    owner.encom("env", "set", "GREETING=from-env", cwd=repo)
    assert owner.encom("run", "sh", "-c", "echo $GREETING $DYNO", cwd=repo).out.startswith("from-env run.")
    assert owner.encom("run", "python", "-c", "import flask; print('slug')", cwd=repo).out == "slug\n"


def test_run_detached_goes_to_the_log(owner: User, repo: Path) -> None:
    job = owner.run_detached("echo detached-output", cwd=repo)
    wait_for("the detached job's output in the log", lambda: "detached-output" in owner.encom("log", cwd=repo).out)
    wait_for("the one-off job to end", lambda: "down" in owner.encom("ps", "--all", cwd=repo).out)
    listed = [line for line in owner.encom("ps", "--all", cwd=repo).out.splitlines() if job in line]
    assert listed and " run " in listed[0] and "down" in listed[0], listed


def test_kill_replaces_a_formation_job(owner: User, repo: Path) -> None:
    def web_up() -> list[str]:
        return [
            line.split()[0]
            for line in owner.encom("ps", cwd=repo).out.splitlines()
            if " web " in line and " up " in line
        ]

    wait_for("a web job up", lambda: len(web_up()) == 1)
    [victim] = web_up()
    assert owner.encom("kill", victim[:8], cwd=repo).out == f"Job {victim} killed.\n"
    wait_for("a replacement web job", lambda: len(web_up()) == 1 and web_up()[0] != victim)
    assert "no job" in owner.fails("encom", "kill", "nosuchjob", cwd=repo).err
    assert "is not running" in owner.fails("encom", "kill", victim, cwd=repo).err


def test_run_is_attached_to_stdin(owner: User, repo: Path) -> None:
    piped = owner.run("encom", "run", "cat", cwd=repo, input="hello\nno newline at the end", timeout=30)
    assert (piped.code, piped.out) == (0, "hello\nno newline at the end")
    prompt = owner.run(
        "encom", "run", "sh", "-c", 'printf "name? "; read n; echo "hi $n"', cwd=repo, input="bob\n", timeout=30
    )
    assert (prompt.code, prompt.out) == (0, "name? hi bob\n")
    # (not `yes`: a job writing faster than the host's log tailer reads makes the tailer loop for ever)
    closed = owner.run(
        "bash", "-c", "set -o pipefail; encom run sh -c 'while :; do echo y; sleep 0.01; done' | head -n 1",
        cwd=repo, input="", timeout=30,
    )  # fmt: skip
    assert (closed.code, closed.out) == (143, "y\n")  # the job was stopped (SIGTERM) once nobody read its output


class Terminal:
    """The CLI on a pseudo-terminal, as a person at a terminal runs it."""

    def __init__(self, owner: User, repo: Path, *args: str) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.proc = subprocess.Popen(
            list(args), cwd=repo, env=owner.env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        """As a terminal window does (the CLI has no controlling terminal here, so SIGWINCH is sent by hand)."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc.send_signal(signal.SIGWINCH)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, pattern: str, timeout: float = 8.0) -> None:
        """Read until `pattern` shows up in what came since the last match."""
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern.encode(), self.seen)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} did not show up within {timeout}s; got {self.seen!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # EIO: the CLI has exited
                    pytest.fail(f"{pattern!r}: the CLI exited ({self.proc.wait(5)}) after {self.seen!r}")
        self.seen = self.seen[found.end() :]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


def test_run_on_a_terminal_is_interactive(owner: User, repo: Path) -> None:
    term = Terminal(owner, repo, "encom", "run", "sh")
    try:
        term.expect(r"\$ $")
        term.type("echo hello-$((6*7)); stty size\r")
        term.expect(r"\r\nhello-42\r\n30 100\r\n")  # the job's terminal has the local one's size
        term.resize(50, 120)  # reaches the job independently of the keys typed next: wait for it in the job
        term.type('until [ "$(stty size)" = "50 120" ]; do sleep 0.02; done; echo resized-$((2*3))\r')
        term.expect(r"resized-6\r\n")
        term.type("echo sleeping-$((1+1)); sleep 100\r")
        term.expect(r"sleeping-2\r\n")
        term.type("\x03")  # Ctrl-C: the sleep is interrupted, the shell goes on
        term.expect(r"\$ $", timeout=5)
        term.type("echo after-$((1+1))\r")
        term.expect(r"\r\nafter-2\r\n")
        term.type("exit 3\r")
        assert term.proc.wait(timeout=8) == 3
    finally:
        term.close()


def test_ctrl_c_without_a_terminal_interrupts_then_kills(owner: User, repo: Path) -> None:
    def start(script: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["encom", "run", "sh", "-c", script], cwd=repo, env=owner.env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc

    trapping = start("trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.05; done")
    trapping.send_signal(signal.SIGINT)
    assert (trapping.wait(timeout=8), trapping.communicate()[0]) == (9, "got-int\n")

    deaf = start("trap '' INT; echo ready; sleep 100")
    deaf.send_signal(signal.SIGINT)  # ignored by the job
    assert_running(deaf, 0.5)
    deaf.send_signal(signal.SIGINT)  # the second one kills it
    assert deaf.wait(timeout=8) == 137


def assert_running(proc: subprocess.Popen[str], seconds: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=seconds)
    assert proc.returncode is None, "the job ended on the first Ctrl-C although it ignores SIGINT"
