"""`encom log` as a Heroku user expects it: `-f` follows every job of the app live (jobs that start later too),
`-j` one job, `--raw` messages only, `-s` stderr apart, `-n` checked.

Tests run in file order and build on each other (one app on the session's cluster, its own user).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, Follow, User, cluster_user, start_follow, stop_follow, wait_for

pytestmark = pytest.mark.e2e

APP = "logs"
PROCFILE = (
    "web: exec python3 -m http.server $PORT\n"
    'ticker: for i in 1 2 3 4 5; do echo "tick $i $(date +%s.%N)"; echo "tock $i" >&2; sleep 1; done; '
    "exec sleep 3600\n"
)
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (app|router|encom)\[[\w.]+\]: ")


@pytest.fixture(scope="module")
def owner(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    return cluster_user(cluster, tmp_path_factory.mktemp("logs-home"))


@pytest.fixture(scope="module")
def repo(owner: User) -> Path:
    repo = owner.procfile_repo(APP, PROCFILE, "a web and a ticker")
    owner.encom("create", APP, cwd=repo)
    owner.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    return repo


def ticker_lines(follow: Follow) -> list[tuple[float, str]]:
    return [(t, text) for t, text in follow.snapshot() if "app[ticker.1]: tick " in text]


def test_follow_shows_a_new_jobs_lines_within_a_second(owner: User, repo: Path) -> None:
    follow = start_follow(owner, repo, "-n", "5")
    try:
        wait_for("the history (the web job's lines)", lambda: len(follow.snapshot()) >= 1, timeout=15)
        time.sleep(0.5)  # history printed; the follow is live
        owner.encom("scale", "ticker=1", cwd=repo)
        wait_for("five ticks through encom log -f", lambda: len(ticker_lines(follow)) >= 5, timeout=20)
        lines = follow.snapshot()
        assert follow.proc.poll() is None, "encom log -f ended by itself"
    finally:
        err = stop_follow(follow)
    assert all(LINE.match(text) for _, text in lines), lines
    ticks = ticker_lines(follow)
    assert [text.split("tick ")[1].split()[0] for _, text in ticks] == ["1", "2", "3", "4", "5"], ticks
    latencies = [arrived - float(text.split()[-1]) for arrived, text in ticks]
    print(f"encom log -f: echo-to-terminal latency {min(latencies):.3f}-{max(latencies):.3f} s")
    assert max(latencies) < 1.0, latencies
    assert any("encom[ticker.1]: State changed from starting to up" in text for _, text in lines), lines
    assert "Traceback" not in err, err


def ticker_job(owner: User, repo: Path) -> str:
    rows = [line.split() for line in owner.encom("ps", cwd=repo).out.splitlines()]
    [job] = [row[0] for row in rows if len(row) > 1 and row[1] == "ticker"]
    return job


def test_one_job_raw_and_split_stderr(owner: User, repo: Path) -> None:
    job = ticker_job(owner, repo)
    wait_for("the ticker's fifth tick", lambda: "tick 5 " in owner.encom("log", "-j", job, cwd=repo).out, 15)
    raw = owner.encom("log", "-j", job, "--raw", cwd=repo).out.splitlines()
    assert [m.split()[:2] for m in raw if m.startswith("tick ")] == [["tick", str(i)] for i in range(1, 6)], raw
    assert "tock 1" in raw and "State changed from starting to up" in raw, raw
    assert not any(LINE.match(m) for m in raw), raw
    mine = owner.encom("log", "-j", job, cwd=repo).out.splitlines()
    assert mine and all("[ticker.1]: " in text for text in mine), mine

    split = owner.encom("log", "-j", job, "-s", "--raw", cwd=repo)
    assert "tock 3" in split.err.splitlines() and "tock 3" not in split.out, split
    assert "tick 3" in split.out and "tick 3" not in split.err, split


def test_long_lines_are_split_and_binary_output_breaks_nothing(owner: User, repo: Path) -> None:
    script = "head -c 10050 /dev/zero | tr '\\0' a; echo; printf 'bin \\377\\376 end\\n'; printf 'no newline'"
    job = owner.run_detached(cwd=repo, script=script)
    wait_for("the job's last line", lambda: "no newline" in owner.encom("log", "-j", job, "--raw", cwd=repo).out, 20)
    raw = owner.encom("log", "-j", job, "--raw", cwd=repo).out.splitlines()
    long = [m for m in raw if m.startswith("a")]
    assert [len(m) for m in long] == [10_000, 50] and set("".join(long)) == {"a"}, [len(m) for m in raw]
    assert "bin \ufffd\ufffd end" in raw, raw
    assert "no newline" in raw  # the rest is flushed when the job ends
    assert "Traceback" not in owner.encom("log", "-n", "50", cwd=repo).err  # the app's log still reads


def test_bad_input_is_refused_clearly(owner: User, repo: Path) -> None:
    assert "0 is not in the range 1<=x<=10000" in owner.fails("encom", "log", "-n", "0", cwd=repo).err
    assert "10001 is not in the range" in owner.fails("encom", "log", "-f", "-n", "10001", cwd=repo).err
    missing = owner.fails("encom", "log", "-j", "no-such-job", cwd=repo)
    assert f"no job no-such-job in app {APP}" in missing.err, missing.err
    assert "Traceback" not in missing.err
    owner.encom("scale", "ticker=0", cwd=repo)
