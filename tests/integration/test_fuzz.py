"""A short schemathesis run against a real controller (see tests/integration/fuzz.py; `make fuzz` runs it for long):
no 5xx, every status and body as the OpenAPI documents them, every route but the two endless streams."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from encom.api.auth import bearer
from encom.api.client import ca_context
from tests.integration.fuzz import Target, fuzz_target, run_fuzz

pytestmark = [pytest.mark.integration]

FUZZ_SECONDS = 40  # schemathesis' budget; loading the schema and starting the controller add a few seconds


async def test_schemathesis_finds_no_server_error_or_spec_violation(tmp_path: Path) -> None:
    started = time.monotonic()
    code, output = await run_fuzz(FUZZ_SECONDS, tmp_path / "report", workers=1)
    assert code == 0, f"schemathesis found problems (exit {code}):\n{output[-20000:]}"
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-5000:]
    assert int(tested[1]) == int(selected[1]) >= 30, "schemathesis did not test every selected route"
    assert time.monotonic() - started < FUZZ_SECONDS + 60


JOB = {"id": "j1", "app_id": "a", "release_id": "r", "type": "", "state": "up"}
STAMPS = {"created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}


async def test_what_the_fuzzer_found_is_a_400_and_stores_nothing(tmp_path: Path) -> None:
    """Found by `make fuzz`: a lone surrogate (valid JSON, invalid Unicode) stored in an app's meta made every later
    GET /apps a 500; an integer beyond SQLite's 64 bits in a job was a 500; an app name ending in a dash was refused
    for its route's domain."""
    async with fuzz_target(tmp_path) as target, controller_http(target) as http:
        assert (await http.post("/apps", json={"name": "a"})).status_code == 201
        refused = [
            ("PATCH", "/apps/a", '{"meta": {"k": "\\ud800"}}'),
            ("PATCH", "/apps/a", '{"meta": {"\\udfff": "v"}}'),
            ("POST", "/apps", '{"name": "b\\ud800"}'),
            ("PUT", "/jobs/j1", json.dumps(JOB | STAMPS | {"restarts": -(10**32)})),
            ("PUT", "/jobs/j1", json.dumps(JOB | STAMPS | {"port": 10**20})),
        ]
        for method, path, body in refused:
            response = await http.request(method, path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, f"{method} {path} {body}: {response.status_code} {response.text}"
            assert response.json()["code"] == "validation_error"
        trailing_dash = await http.post("/apps", json={"name": "web-"})  # its route web-.<domain> is no host name
        assert trailing_dash.status_code == 400 and "end with a letter or digit" in trailing_dash.json()["message"]
        apps = await http.get("/apps")
        assert apps.status_code == 200 and [(a["name"], a["meta"]) for a in apps.json()] == [("a", {})]
        assert (await http.get("/jobs?all=true")).json() == []
        pair = '{"meta": {"k": "\\ud83d\\ude00"}}'  # a surrogate pair is one character: accepted
        paired = await http.patch("/apps/a", content=pair, headers={"content-type": "application/json"})
        assert paired.status_code == 200 and paired.json()["meta"] == {"k": "\U0001f600"}


@contextlib.asynccontextmanager
async def controller_http(target: Target) -> AsyncIterator[httpx.AsyncClient]:
    settings = target.settings
    async with httpx.AsyncClient(
        base_url=settings.controller_url,
        verify=ca_context(settings.ca_cert_path),
        headers=bearer(settings.cluster_key),
        timeout=20.0,
    ) as http:
        yield http
