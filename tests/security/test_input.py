"""Finding 2 and 8 of issue 11: unbounded input through the CLI and the API.

A count of 10**30 once made the scheduler loop inside encomd's only event loop; hostile env keys, route
services and pushes were stored as given. Each is now refused with a 400 (or a refused push) naming the rule,
nothing stored changes, the API keeps answering, and the victim keeps serving.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from encom.api.client import ca_context
from encom.api.settings import Settings
from tests.e2e.conftest import Cluster, User
from tests.security.conftest import Victim, attacker_repo, victim_serves

ATTACKER = "hoarder"
API_DEADLINE = 2.0  # seconds: the most GET /apps may take, TLS handshake included
SLEEPERS = 100  # the largest formation allowed by default (max_processes_per_type)


def api(cluster: Cluster) -> httpx.Client:
    settings = Settings.load(cluster.state_dir)
    headers = {"Authorization": f"Bearer {settings.cluster_key}"}
    return httpx.Client(
        base_url=settings.controller_url, verify=ca_context(settings.ca_cert_path), headers=headers, timeout=30
    )


@dataclass
class ApiProbe:
    """GET /apps on a new connection (a new TLS handshake) every 0.25 s from a thread, timed."""

    cluster: Cluster
    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with api(self.cluster) as http:
                    status = http.get("/apps", timeout=10).status_code
                if status != 200:
                    self.errors.append(f"HTTP {status}")
            except httpx.HTTPError as exc:
                self.errors.append(type(exc).__name__)
            self.times.append(time.monotonic() - started)
            self.stop.wait(0.25)


@contextlib.contextmanager
def probing(cluster: Cluster) -> Iterator[ApiProbe]:
    probe = ApiProbe(cluster)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    try:
        yield probe
    finally:
        probe.stop.set()
        thread.join(15)


@pytest.fixture(scope="module")
def hoarder(user: User) -> Path:
    """An app whose only process type sleeps: 100 of them cost little but still go through every step."""
    repo = attacker_repo(user, ATTACKER, {"Procfile": "sleeper: sleep 100000\n"})
    user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    # Each job's disk is a sparse image the host reserves room for: 100 of the default 1 GiB may not fit here.
    user.encom("limit", "set", "sleeper", "temp_disk=16MB", cwd=repo)
    return repo


def current_release_id(http: httpx.Client, app: str) -> str:
    return str(http.get(f"/apps/{app}/release").json()["id"])


def up_count(http: httpx.Client, app: str) -> int:
    return sum(1 for job in http.get(f"/apps/{app}/jobs").json() if job["state"] == "up")


def test_unbounded_scale_is_refused_and_the_largest_formation_keeps_the_api_answering(
    cluster: Cluster, user: User, victim: Victim, hoarder: Path
) -> None:
    with victim_serves(cluster, victim, "an unbounded scale and the largest formation"), api(cluster) as http:
        refused = user.fails("encom", "scale", f"sleeper={10**30}", cwd=hoarder)
        assert "max_processes_per_type" in refused.text, refused.text
        release_id = current_release_id(http, ATTACKER)
        answer = http.put(f"/apps/{ATTACKER}/formations/{release_id}", json={"processes": {"sleeper": 10**30}})
        assert answer.status_code == 400 and "max_processes_per_type" in answer.json()["message"], answer.text
        started = time.monotonic()
        assert http.get("/apps").status_code == 200
        assert time.monotonic() - started < API_DEADLINE
        assert http.get(f"/apps/{ATTACKER}/formations/{release_id}").json()["processes"] == {"sleeper": 0}

        with probing(cluster) as probe:
            user.ok("encom", "scale", "-t", "600", f"sleeper={SLEEPERS}", cwd=hoarder, timeout=660)
        assert up_count(http, ATTACKER) == SLEEPERS
        assert not probe.errors, probe.errors
        assert len(probe.times) >= 4, f"only {len(probe.times)} probes ran"
        slowest = max(probe.times)
        print(f"GET /apps while {SLEEPERS} jobs started: {len(probe.times)} probes, slowest {slowest:.3f}s")
        assert slowest < API_DEADLINE, f"GET /apps took {slowest:.2f}s while {SLEEPERS} jobs started"

        user.ok("encom", "scale", "-t", "600", "sleeper=0", cwd=hoarder, timeout=660)
        assert up_count(http, ATTACKER) == 0


HOSTILE_KEYS = ["A=B", "", "A\x00B", "K" * 10_000, "1A", "A\nB", "A B"]


def test_hostile_env_keys_and_values_are_refused(cluster: Cluster, user: User, victim: Victim, hoarder: Path) -> None:
    with victim_serves(cluster, victim, "hostile env"), api(cluster) as http:
        for arg in ("1A=x", "A-B=x", "K" * 10_000 + "=x"):
            refused = user.fails("encom", "env", "set", arg, cwd=hoarder)
            assert "env key" in refused.text, refused.text
        big = user.fails("encom", "env", "set", "BIG=" + "x" * 40_000, cwd=hoarder)
        assert "32 KiB" in big.text, big.text

        app = http.get(f"/apps/{ATTACKER}").json()
        versions = len(http.get(f"/apps/{ATTACKER}/releases").json())
        current = http.get(f"/apps/{ATTACKER}/release").json()
        for key in HOSTILE_KEYS:
            body = {"app_id": app["id"], "artifact_id": current["artifact_id"], "env": {key: "x"}}
            body["processes"] = current["processes"]
            answer = http.post("/releases", json=body)
            assert answer.status_code == 400 and "env key" in answer.json()["message"], (key[:20], answer.text)
        assert len(http.get(f"/apps/{ATTACKER}/releases").json()) == versions

        user.encom("env", "set", "GOOD=1", cwd=hoarder)  # the next deploy is not broken
        assert user.encom("env", "get", "GOOD", cwd=hoarder).out.strip() == "1"


HOSTILE_SERVICES = ["evil\nbackend x", "evil\n", "a#b", "../../etc", "Evil-web", "web web"]


def test_hostile_route_services_are_refused(cluster: Cluster, user: User, victim: Victim, hoarder: Path) -> None:
    with victim_serves(cluster, victim, "hostile route services"), api(cluster) as http:
        routes = http.get("/routes").json()
        for service in HOSTILE_SERVICES:
            refused = user.fails("encom", "route", "add", "http", "-s", service, "evil.encom.localhost", cwd=hoarder)
            assert "invalid route service" in refused.text, refused.text
        (own,) = http.get(f"/apps/{ATTACKER}/routes").json()
        for service in HOSTILE_SERVICES:
            answer = http.patch(f"/apps/{ATTACKER}/routes/{own['id']}", json={"service": service})
            assert answer.status_code == 400 and "invalid route service" in answer.json()["message"]
        long_path = http.post(f"/apps/{ATTACKER}/routes", json={"domain": own["domain"], "path": "/" + "a" * 10_000})
        assert long_path.status_code == 400 and "2048" in long_path.json()["message"]
        assert http.get("/routes").json() == routes


@contextlib.contextmanager
def push_limit(cluster: Cluster, limit: int) -> Iterator[None]:
    """The cluster's max_push_bytes for the block (gitreceive reads it at each push)."""
    original = Settings.load(cluster.state_dir)
    original.model_copy(update={"max_push_bytes": limit}).save()
    try:
        yield
    finally:
        original.save()


def test_a_push_over_the_limit_is_refused_with_a_clear_message(cluster: Cluster, user: User, victim: Victim) -> None:
    repo = attacker_repo(user, "bigpush", {"Procfile": "web: sleep 1000\n"})
    (repo / "blob.bin").write_bytes(os.urandom(3 << 20))  # random: git cannot compress it below the limit
    user.ok("git", "add", "blob.bin", cwd=repo)
    user.ok("git", "commit", "-q", "-m", "3 MiB", cwd=repo)
    with push_limit(cluster, 1 << 20), victim_serves(cluster, victim, "an over-limit push"):
        refused = user.fails("git", "push", "encom", "master", cwd=repo, timeout=120)
    assert "push refused: it is larger than 1 MiB (1048576 bytes)" in refused.text, refused.text
    assert "max_push_bytes" in refused.text
    with api(cluster) as http:
        app_id = http.get("/apps/bigpush").json()["id"]
    stored = cluster.state_dir / "gitreceive" / "repos" / f"{app_id}.git"
    assert not list((stored / "refs" / "heads").iterdir())  # no ref was updated
    kept = sum(p.stat().st_size for p in stored.rglob("*") if p.is_file())
    assert kept < 1 << 20, f"the refused push left {kept} bytes in {stored}"


def encomd_rss(cluster: Cluster) -> int:
    """encomd's resident memory, in bytes."""
    pid = int((cluster.state_dir / "encomd.pid").read_text())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


@dataclass
class RssProbe:
    cluster: Cluster
    peak: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, encomd_rss(self.cluster))
            self.stop.wait(0.1)


def test_a_large_push_is_streamed_not_held(cluster: Cluster, user: User, victim: Victim) -> None:
    """A 150 MB push (under the limit) goes through without encomd holding it: asyncssh let the pusher run far
    ahead of git when read in small pieces, and encomd grew by most of the push."""
    repo = attacker_repo(user, "bulky", {"Procfile": "worker: sleep 100000\n"})
    (repo / "blob.bin").write_bytes(os.urandom(150 << 20))
    user.ok("git", "add", "blob.bin", cwd=repo)
    user.ok("git", "commit", "-q", "-m", "150 MB", cwd=repo)
    before = encomd_rss(cluster)
    probe = RssProbe(cluster)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    try:
        with victim_serves(cluster, victim, "a 150 MB push"):
            user.ok("git", "push", "encom", "master", cwd=repo, timeout=600)
    finally:
        probe.stop.set()
        thread.join(5)
    grown = (probe.peak - before) >> 20
    print(f"encomd RSS {before >> 20} MiB before a 150 MB push, at most {probe.peak >> 20} MiB during it")
    assert grown < 48, f"encomd grew by {grown} MiB during a 150 MB push"
