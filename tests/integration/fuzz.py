"""schemathesis against a real controller: its OpenAPI, every route, real TLS (the cluster's CA), the cluster key.

The controller (and a discoverd, so that its host look-ups get a real answer: no host) run as encomd runs them, on a
temp data dir and loopback ports in 58500-58999; schemathesis runs as a child process, so the controller's event
loop stays free. `make fuzz` runs it for long (`python -m tests.integration.fuzz --max-time 600`); `make test` runs
a short bounded pass (tests/integration/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from encom.api.settings import Ports, Settings
from encom.bootstrap.tls import ensure_tls
from encom.controller import service as controller_service
from encom.discoverd import service as discoverd_service
from tests.integration.roles import free_ports, running_role

PORTS = (58500, 58999)
START = 30.0
# Streams that never end by themselves (SSE, `log --follow`); the attach websocket is not in the OpenAPI.
STREAMS = ("/events", "/apps/{app}/log/stream")
# Per-operation exceptions to schemathesis' checks, each with its reason.
# `positive_data_acceptance` expects a schema-valid request to be accepted; where a rule cannot be said in a schema
# (a key must parse, an artifact must exist, limits depend on the host), such a request gets the documented 400
# naming the rule.
SEMANTIC_400 = {
    ("POST", "/keys"): "the key must parse as an OpenSSH public key of a supported type",
    ("POST", "/releases"): "the artifact must exist; resource limits depend on the host's memory and file limits",
    ("PUT", "/jobs/{job_id}"): "the body's id must be the URL's",
    ("PATCH", "/apps/{app}"): "meta keys have an alphabet; some keys (deploy strategy, stop_grace...) take set values",
    ("POST", "/apps/{app}/deploy"): "the release must be the app's and not its current one",
    ("POST", "/apps/{app}/jobs"): "the app must have a release",
    ("POST", "/apps/{app}/drains"): "the URL's scheme, host and port are checked as a URL",
    ("POST", "/apps/{app}/routes"): "an http route needs a domain of hostname labels; some fields are http or tcp only",
    ("PATCH", "/apps/{app}/routes/{route_ref}"): "a certificate needs its key, and must be valid for the domain",
    ("DELETE", "/apps/{app}/routes/{route_ref}"): "a domain's / route goes after its path routes",
    ("PUT", "/apps/{app}/formations/{release_id}"): "the process types must be the release's",
    ("POST", "/artifacts"): "the URL must be a blobstore path",
}
# `ensure_resource_availability` reads any 404 right after the app was created as "the new app is missing"; on these
# the 404 names something else the request refers to.
OTHER_404 = {
    ("GET", "/apps/{app}/release"): "an app has no release until one is deployed",
    ("POST", "/apps/{app}/deploy"): "the body's release_id may name no release",
    ("GET", "/apps/{app}/log"): "job_id may name no job of the app",
}
# A one-off job needs a host; the fuzzed cluster has none, so a valid request gets the documented 503.
NO_HOST_503 = {("POST", "/apps/{app}/jobs")}
# 503 too: whether a 5xx is allowed is not_a_server_error's to judge (NO_HOST_503).
ACCEPTED_WITH_400 = '["2xx", "3xx", "400", "401", "403", "404", "409", "503"]'


def schemathesis_config() -> str:
    """One `[[operations]]` section per operation with exceptions, named by `include-name` (`include-path` and
    `include-method` would each select on its own: every POST, say)."""
    settings: dict[tuple[str, str], list[str]] = {}
    for operation, reason in SEMANTIC_400.items():
        check = f"checks.positive_data_acceptance.expected-statuses = {ACCEPTED_WITH_400}"
        settings.setdefault(operation, []).append(f"# {reason}\n{check}")
    for operation, reason in OTHER_404.items():
        settings.setdefault(operation, []).append(f"# {reason}\nchecks.ensure_resource_availability.enabled = false")
    for operation in NO_HOST_503:
        check = 'checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]'
        settings.setdefault(operation, []).append(f"# no host: 503\n{check}")
    return "\n".join(
        f'[[operations]]\ninclude-name = "{method} {path}"\n' + "\n".join(lines) + "\n"
        for (method, path), lines in settings.items()
    )


@dataclass
class Target:
    settings: Settings
    schema_url: str
    config: Path


@contextlib.asynccontextmanager
async def fuzz_target(data_dir: Path) -> AsyncIterator[Target]:
    """A controller (with its own discoverd) on `data_dir`, answering until the block ends."""
    # Every port the controller may dial is ours: nothing it does reaches another cluster on this machine.
    controller, discoverd, blobstore, host = free_ports(*PORTS, 4)
    ports = Ports(controller=controller, discoverd=discoverd, blobstore=blobstore, host=host)
    settings = Settings(data_dir=data_dir, ports=ports)
    ensure_tls(settings)
    config = data_dir / "schemathesis.toml"
    config.write_text(schemathesis_config())
    async with (
        running_role(discoverd_service.run, settings, "discoverd", START, START),
        running_role(controller_service.run, settings, "controller", START, START),
    ):
        yield Target(settings, f"{settings.controller_url}/openapi.json", config)


ALL_PHASES = "examples,coverage,fuzzing,stateful"


# Every check is on by default (schemathesis' `--checks all` would also override the per-operation exceptions).
def schemathesis_command(
    target: Target, max_time: int, report_dir: Path, workers: int = 1, phases: str = ALL_PHASES
) -> list[str]:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    return [
        binary,
        "--config-file",
        str(target.config),
        "run",
        target.schema_url,
        "--header",
        f"Authorization: Bearer {target.settings.cluster_key}",
        "--tls-verify",
        str(target.settings.ca_cert_path),
        "--phases",
        phases,
        "--max-time",
        str(max_time),
        "--workers",
        str(workers),
        "--request-timeout",
        "20",
        "--exclude-path",
        STREAMS[0],
        "--exclude-path",
        STREAMS[1],
        "--generation-database",
        "none",
        "--report",
        "junit,ndjson",
        "--report-dir",
        str(report_dir),
        "--no-color",
    ]


async def run_fuzz(
    max_time: int, report_dir: Path, workers: int = 1, echo: bool = False, phases: tuple[str, ...] = (ALL_PHASES,)
) -> tuple[int, str]:
    """schemathesis' exit code and output (printed as it comes instead with `echo`) on a fresh controller: one
    run per entry of `phases`, each for about `max_time` seconds; the first failing run's code."""
    code, outputs = 0, []
    with tempfile.TemporaryDirectory(prefix="encom-fuzz-") as tmp:
        async with fuzz_target(Path(tmp)) as target:
            for group in phases:
                command = schemathesis_command(target, max_time, report_dir, workers, group)
                run_code, output = await _run(command, echo)
                code = code or run_code
                outputs.append(output)
    return code, "\n".join(outputs)


async def _run(command: list[str], echo: bool) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=None if echo else asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, (out or b"").decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--max-time", type=int, default=600, help="seconds of fuzzing (default 600)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-dir", type=Path, default=Path("fuzz-report"))
    args = parser.parse_args()
    # Given the whole budget, schemathesis spends most of it in the fuzzing phase: the stateful phase (sequences of
    # calls that follow the API's links) gets its own half.
    half = max(1, args.max_time // 2)
    phases = ("examples,coverage,fuzzing", "stateful")
    code, _ = asyncio.run(run_fuzz(half, args.report_dir.resolve(), args.workers, echo=True, phases=phases))
    sys.exit(code)


if __name__ == "__main__":
    main()
