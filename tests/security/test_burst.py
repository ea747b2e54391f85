"""Finding 12: a burst of requests to a slow app queues in the router instead of timing out.

3,000 simultaneous requests to an app that serves 20 requests at a time, a second each, used to pile up in the
app until HAProxy's `timeout server` answered 504 after 60 s (about 1,800 of them). Each web job now gets at most
`maxconn` requests at once; the rest wait in the router's queue for at most `timeout queue`, then get a 503.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from dataclasses import dataclass

from encom.router.config import QUEUE_TIMEOUT, SERVER_MAXCONN
from tests.e2e.conftest import Cluster, User, curl, wait_for
from tests.security.conftest import Victim, attacker_repo, victim_serves

BURST = 3_000
SERVICE_SECONDS = 1.0
APP_CONCURRENCY = 20  # like a gunicorn with 20 threads
CLIENT_TIMEOUT = 70.0  # past HAProxy's 60 s `timeout server`: a 504 would be seen
# A queued request gets its 503 once the queue timeout is over; one given to the app waits at most for the
# `maxconn` requests ahead of it. The slack is for this loaded 2-core machine; the old failure took 60 s.
SLACK_SECONDS = 6.0
IN_APP_SECONDS = SERVER_MAXCONN / APP_CONCURRENCY * SERVICE_SECONDS
ANSWER_WITHIN = float(QUEUE_TIMEOUT.removesuffix("s")) + IN_APP_SECONDS + SLACK_SECONDS

# An HTTP server that serves APP_CONCURRENCY requests at a time, a second each; never refusing (a big backlog).
SLOW_APP = f"""\
import asyncio, os

async def serve(reader, writer):
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
        async with slots:
            await asyncio.sleep({SERVICE_SECONDS})
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nslow\\n")
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()

async def main():
    global slots
    slots = asyncio.Semaphore({APP_CONCURRENCY})
    server = await asyncio.start_server(serve, "0.0.0.0", int(os.environ["PORT"]), backlog=4096)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no HTTP answer (connection error or timeout)
    seconds: float
    error: str = ""


async def one_request(port: int, host: str, start: asyncio.Event) -> Answer:
    await start.wait()
    began = time.monotonic()
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                status_line = await reader.readline()
                await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        return Answer(0, time.monotonic() - began, type(exc).__name__)
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return Answer(status, time.monotonic() - began)


async def burst(port: int, host: str, count: int) -> list[Answer]:
    """`count` requests released at once, each on its own connection."""
    start = asyncio.Event()
    tasks = [asyncio.create_task(one_request(port, host, start)) for _ in range(count)]
    await asyncio.sleep(0)  # every task is waiting on the event
    start.set()
    return await asyncio.gather(*tasks)


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        assert hard == resource.RLIM_INFINITY or hard >= needed, f"RLIMIT_NOFILE hard limit {hard} < {needed}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_a_burst_to_a_slow_app_is_served_or_refused_quickly(cluster: Cluster, user: User, victim: Victim) -> None:
    repo = attacker_repo(user, "burst", {"Procfile": "web: python3 slow.py\n", "slow.py": SLOW_APP})
    user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    host = "burst.encom.localhost"
    wait_for("the slow app to answer", lambda: curl(cluster.router_port, host)[0] == 200)
    raise_fd_limit(BURST + 1024)

    with victim_serves(cluster, victim, "a burst of 3,000 requests to another app"):
        answers = asyncio.run(burst(cluster.router_port, host, BURST))

    statuses = Counter(a.status for a in answers)
    errors = Counter(a.error for a in answers if a.error)
    slowest = max(a.seconds for a in answers)
    assert set(statuses) <= {200, 503}, f"answers: {dict(statuses)}, errors: {dict(errors)}"
    assert statuses[200] >= 100, f"the app should have served a queue's worth: {dict(statuses)}"
    print(f"burst: {dict(statuses)}, slowest answer {slowest:.1f} s")
    assert slowest <= ANSWER_WITHIN, f"the slowest answer took {slowest:.1f} s (queue timeout {QUEUE_TIMEOUT})"
    user.encom("delete", "--yes", cwd=repo)
