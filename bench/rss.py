"""encomd's memory: RSS when idle against RSS after a hostile session, with no app left (issue 11, finding 11).

Runs a real cluster (`python -m encom.bootstrap up --port-base 7000`: roles on 7011-7443, jobs on 9000-9999,
router HTTP on 7080) and stops it at the end. Only what a user has is used: the `encom` CLI, `git` over SSH and
HTTP through the router.

1. idle: encomd's RSS (`VmRSS` of its pid, children not counted) once the cluster is up and has been quiet for
   `--settle` seconds;
2. the session, `--rounds` times, each round one app: create, push a Procfile app whose web job prints
   `--lines` log lines at start, requests through the router (access lines), scale web up and down, one-off
   `encom run`, route churn (add and remove `--routes` routes), `encom log`, then delete the app;
3. after: the RSS once every job has gone and the cluster has been quiet for `--settle` seconds again.

The ratio after / idle is the result (target ≤ 1.5x). RSS after each round is printed too: a leak grows with
the rounds, a one-off cost (imports, caches of fixed size) does not.

    uv run python -m bench.rss [--rounds 5] [--lines 20000]     (or: uv run python -m bench rss …)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.deploy import BenchError, Shell, running_cluster, user_shell

PORT_BASE = 7000
DOMAIN = "encom.localhost"
TARGET_RATIO = 1.5
JOBS_GONE_TIMEOUT = 120.0
NOISY_APP = """\
import http.server, os, sys

LINES = {lines}
LINE_BYTES = {line_bytes}

for i in range(LINES):
    print(f"line {i}: " + "x" * LINE_BYTES)
sys.stdout.flush()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024

Server(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


@dataclass
class Measures:
    idle: int = 0
    rounds: list[int] = field(default_factory=list)
    after: int = 0
    session_seconds: float = 0.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def encomd_pid(state: Path) -> int:
    return int((state / "encomd.pid").read_text().strip())


async def quiet_rss(pid: int, settle: float) -> int:
    """RSS after `settle` seconds: the lowest of the last few samples (a log flush or a heartbeat can be
    caught in the middle)."""
    samples = []
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        samples.append(rss_bytes(pid))
        await asyncio.sleep(1.0)
    samples.append(rss_bytes(pid))
    return min(samples[-5:])


async def new_app(shell: Shell, name: str, lines: int, line_bytes: int) -> Path:
    repo = shell.home / name
    repo.mkdir()
    (repo / "Procfile").write_text("web: exec python3 -u noisy.py\n")
    (repo / "noisy.py").write_text(NOISY_APP.replace("{lines}", str(lines)).replace("{line_bytes}", str(line_bytes)))
    for args in (("git", "init", "-q", "-b", "master"), ("git", "add", "."), ("git", "commit", "-qm", "noisy")):
        await shell.run(*args, cwd=repo)
    await shell.run("encom", "create", name, cwd=repo)
    return repo


async def requests_through_router(router: str, host: str, count: int) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(60):  # the route and the job come up asynchronously
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(router, headers={"Host": host})).status_code == 200:
                    break
            await asyncio.sleep(0.5)
        for _ in range(count // 20):  # answers do not matter here, only that encom handles the requests
            await asyncio.gather(
                *(client.get(router, headers={"Host": host}) for _ in range(20)), return_exceptions=True
            )


async def one_round(shell: Shell, router: str, name: str, args: argparse.Namespace) -> None:
    repo = await new_app(shell, name, args.lines, args.line_bytes)
    await shell.run("git", "push", "-q", "encom", "master", cwd=repo)
    await requests_through_router(router, f"{name}.{DOMAIN}", args.requests)
    await shell.run("encom", "scale", "web=3", cwd=repo)
    await shell.run("encom", "scale", "web=1", cwd=repo)
    await shell.run("encom", "run", "sh", "-c", "seq 1 2000", cwd=repo)
    routes = [
        (await shell.run("encom", "route", "add", "http", f"r{i}-{name}.{DOMAIN}", cwd=repo)).strip()
        for i in range(args.routes)
    ]
    await requests_through_router(router, f"r0-{name}.{DOMAIN}", 100)
    for route in routes:
        await shell.run("encom", "route", "remove", route.splitlines()[-1], cwd=repo)
    await shell.run("encom", "log", "-n", "5000", cwd=repo)
    await shell.run("encom", "delete", "--yes", cwd=repo)


async def no_jobs_left(state: Path) -> None:
    """Every container of the session is gone (runc's state directory of the host is empty)."""
    deadline = time.monotonic() + JOBS_GONE_TIMEOUT
    while time.monotonic() < deadline:
        proc = await asyncio.create_subprocess_exec(
            "runc", "--root", str(state / "host" / "runc"), "list", "-q",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0 or not out.strip():
            return
        await asyncio.sleep(1.0)
    raise BenchError("jobs were still running after the session")


async def run(args: argparse.Namespace, tmp: Path) -> Measures:
    state = tmp / "state"
    router = f"http://127.0.0.1:{args.port_base + 80}/"
    measures = Measures()
    with running_cluster(state, args.port_base) as add_line:
        shell = user_shell(tmp / "home")
        await shell.run("encom", *add_line.split()[1:])
        await shell.run("encom", "key", "add")
        pid = encomd_pid(state)
        measures.idle = await quiet_rss(pid, args.settle)
        print(f"idle: {mib(measures.idle)}", flush=True)

        started = time.monotonic()
        for n in range(1, args.rounds + 1):
            await one_round(shell, router, f"rss{n}", args)
            measures.rounds.append(rss_bytes(pid))
            print(f"round {n}/{args.rounds}: {mib(measures.rounds[-1])}", flush=True)
        measures.session_seconds = time.monotonic() - started
        await no_jobs_left(state)
        measures.after = await quiet_rss(pid, args.settle)
    return measures


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def report(measures: Measures, args: argparse.Namespace) -> str:
    ratio = measures.after / measures.idle
    peak = max(measures.rounds, default=0)
    rows = [
        "| metric | value | target |",
        "| --- | --- | --- |",
        f"| encomd RSS idle (cluster up, no app, {args.settle:.0f} s quiet) | {mib(measures.idle)} |  |",
        f"| … after each round | {', '.join(mib(r) for r in measures.rounds)} |  |",
        f"| … peak during the session | {mib(peak)} |  |",
        f"| encomd RSS after the session (no app left, {args.settle:.0f} s quiet) | {mib(measures.after)} |  |",
        f"| ratio after / idle | {ratio:.2f}x | ≤ {TARGET_RATIO}x |",
        f"| session: {args.rounds} rounds, {measures.session_seconds:.0f} s |  |  |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench rss", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=5, help="apps created, used and deleted (default 5)")
    parser.add_argument("--lines", type=int, default=20_000, help="log lines each web job prints (default 20000)")
    parser.add_argument("--line-bytes", type=int, default=200, help="bytes of each log line (default 200)")
    parser.add_argument("--requests", type=int, default=1_000, help="requests through the router per app")
    parser.add_argument("--routes", type=int, default=10, help="routes added and removed per app")
    parser.add_argument("--settle", type=float, default=40.0, help="quiet seconds before each RSS reading (default 40)")
    parser.add_argument("--port-base", type=int, default=PORT_BASE, help=f"cluster port base (default {PORT_BASE})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="encom-bench-rss-") as tmp:
        measures = asyncio.run(run(args, Path(tmp)))
    print(report(measures, args))
    ratio = measures.after / measures.idle
    print(f"\n{'OK' if ratio <= TARGET_RATIO else 'OVER TARGET'}: after/idle = {ratio:.2f}x (target ≤ {TARGET_RATIO}x)")


if __name__ == "__main__":
    main()
