"""A short schemathesis run against a real controller (see tests/integration/fuzz.py; `make fuzz` runs it for long):
no 5xx, every status and body as the OpenAPI documents them, every route but the two endless streams."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.integration.fuzz import run_fuzz

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
