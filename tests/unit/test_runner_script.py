"""The slug runner (the bash that runs a Procfile command in a job) passes signals on and exits with the
command's own status."""

from __future__ import annotations

import signal
import subprocess
import time

from encom.host.bundle import RUNNER

EXITS_ON_TERM = (
    'python3 -c "import os, signal, time; signal.signal(signal.SIGTERM, lambda *a: os._exit(0)); time.sleep(30)"'
)


def run(command: str, term_after: float | None = None) -> int:
    proc = subprocess.Popen(["bash", "-c", RUNNER, "runner", command])
    if term_after is not None:
        time.sleep(term_after)
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=20)


def test_the_commands_status_after_a_forwarded_sigterm() -> None:
    # bash's `wait` returns 143 when the trap fires, even though the command then exits 0: not the status.
    assert [run(EXITS_ON_TERM, term_after=0.3) for _ in range(10)] == [0] * 10


def test_plain_exit_statuses_and_an_unhandled_sigterm() -> None:
    assert run("exit 3") == 3
    assert run("true") == 0
    assert run("sleep 30", term_after=0.3) == 143


def test_a_sigterm_to_the_runner_as_pid_1_stops_the_command() -> None:
    """As PID 1 of its own pid namespace (as in a job) the runner ignores any signal it has no trap for: its traps
    pass SIGTERM on, right after the start too."""
    for _ in range(5):
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "bash", "-c", RUNNER, "runner", "sleep 30"]
        )
        time.sleep(0.05)
        subprocess.run(["pkill", "-TERM", "-P", str(proc.pid), "-x", "bash"], check=False)
        assert proc.wait(timeout=20) == 143
