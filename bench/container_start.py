"""Container start-to-listening time for a small web server, next to the same server started as a bare process.

Both are measured in one run, interleaved, so the ratio holds on a noisy machine. The container path is the real
host agent (OCI bundle, `runc run -d`, pidfd watch, TCP health check, discoverd registration): the time runs
from the `PUT /host/jobs/{id}` call until a TCP connect to the job's port succeeds. The bare path is
`subprocess.Popen` of the same command until the same connect succeeds.

    uv run python -m bench.container_start [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.net import free_port, wait_listening
from encom.api.role import RoleContext
from encom.api.settings import Ports, Settings
from encom.api.types import HostJobSpec
from encom.blobstore import service as blobstore_service
from encom.bootstrap.daemon import become_subreaper
from encom.discoverd import service as discoverd_service
from encom.host import service as host_service
from encom.host.client import HostClient

SERVER = ["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1"]
PORT_BASE = 13000  # below the ephemeral range (32768+)


async def bare_start(port: int) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *SERVER, str(port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_listening(port)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        await proc.wait()


async def container_start(host: HostClient) -> float:
    spec = HostJobSpec(
        id=uuid.uuid4().hex,
        app_id="bench",
        app_name="bench",
        release_id="r1",
        port=True,
        stop_grace=0.2,
        args=["/bin/sh", "-c", " ".join(SERVER) + ' "$PORT"'],
    )
    started = time.perf_counter()
    job = await host.add_job(spec)
    assert job.port is not None
    try:
        await wait_listening(job.port)
        return time.perf_counter() - started
    finally:
        await host.stop_job(spec.id)


async def run(runs: int) -> dict[str, list[float]]:
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="encom-bench-") as tmp:
        ports = Ports(
            discoverd=PORT_BASE + 11,
            blobstore=PORT_BASE + 12,
            host=PORT_BASE + 13,
            job_start=PORT_BASE + 2000,
            job_end=PORT_BASE + 2099,
        )
        settings = Settings(data_dir=Path(tmp), ports=ports, roles=["discoverd", "blobstore", "host"])
        tasks = []
        for role in (discoverd_service, blobstore_service, host_service):
            ctx = RoleContext(settings)
            tasks.append(asyncio.create_task(role.run(ctx)))
            await asyncio.wait_for(ctx.ready.wait(), 30)
        times: dict[str, list[float]] = {"container": [], "bare": []}
        try:
            async with HostClient(settings.host_url, settings.internal_secret) as host:
                await container_start(host)  # warm-up: page cache, first bundle
                for _ in range(runs):
                    times["container"].append(await container_start(host))
                    times["bare"].append(await bare_start(free_port(PORT_BASE + 3000)))
        finally:
            for task in reversed(tasks):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return times


def report(times: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"runs: {len(times['container'])} each, interleaved"]
    for name in ("container", "bare"):
        v = sorted(times[name])
        lines.append(
            f"{name:9s} median {med[name] * 1000:7.1f} ms   min {v[0] * 1000:7.1f} ms   max {v[-1] * 1000:7.1f} ms"
        )
    lines.append(f"ratio container/bare (medians): {med['container'] / med['bare']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(report(asyncio.run(run(args.runs))))


if __name__ == "__main__":
    main()
