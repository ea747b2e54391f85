"""An adopted HAProxy keeps its servers for a grace period while discoverd (empty after a restart) has none."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from encom.api.types import Route
from encom.router.config import Options, backend_name, build_snapshot, render_config, servers_in_config
from encom.router.router import Router

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def route(n: int, service: str, domain: str) -> Route:
    return Route(id=f"r{n}", app_id="app", type="http", domain=domain, service=service, created_at=T0, updated_at=T0)


def test_servers_in_config_reads_back_what_render_config_wrote(tmp_path: Path) -> None:
    snap = build_snapshot(
        [route(1, "a-web", "a.test"), route(2, "b-web", "b.test"), route(3, "c-web", "c.test")],
        {"a-web": {"127.0.0.1:55000", "127.0.0.1:55001"}, "b-web": {"127.0.0.1:55002"}},
    )
    found = servers_in_config(render_config(snap, Options(dir=tmp_path)))
    assert found == {
        backend_name("a-web", "http"): {"127.0.0.1:55000", "127.0.0.1:55001"},
        backend_name("b-web", "http"): {"127.0.0.1:55002"},
    }


def test_kept_servers_join_discoverd_until_the_grace_ends(tmp_path: Path) -> None:
    router = Router(Options(dir=tmp_path), adopt_grace=0.01)
    router.routes = {"r1": route(1, "a-web", "a.test")}
    name = backend_name("a-web", "http")
    router.kept = {name: frozenset({"127.0.0.1:55000"}), "h_gone": frozenset({"127.0.0.1:1"})}
    assert router.desired().backends[name].servers == {"127.0.0.1:55000"}  # discoverd has none yet
    assert "h_gone" not in router.desired().backends  # no longer routed: not brought back
    router.servers = {"a-web": {"127.0.0.1:55009"}}
    assert router.desired().backends[name].servers == {"127.0.0.1:55009"}  # discoverd has some: it decides

    router.servers = {"a-web": set()}
    asyncio.run(router._end_grace())  # HAProxy is not running here: apply is a no-op
    assert router.kept == {}
    assert router.desired().backends[name].servers == set()
