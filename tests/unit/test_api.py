import base64

import pytest

from encom.api.auth import key_from_header, key_matches
from encom.api.sse import SSEMessage, parse_sse
from encom.api.types import AppCreate, LogLine


def test_bearer_and_basic_keys_are_read() -> None:
    assert key_from_header("Bearer abc") == "abc"
    basic = base64.b64encode(b":secret").decode()
    assert key_from_header(f"Basic {basic}") == "secret"
    assert key_from_header("Basic !!!") is None
    assert key_from_header(None) is None


def test_key_matches_only_accepted_keys() -> None:
    assert key_matches("a", ["b", "a"])
    assert not key_matches("c", ["a", "b"])
    assert not key_matches(None, ["a"])


async def test_sse_round_trip() -> None:
    messages = [SSEMessage(data='{"a": 1}', event="up", id="7"), SSEMessage(data="two\nlines")]
    encoded = b": keepalive\n\n" + b"".join(m.encode() for m in messages)

    async def lines():  # type: ignore[no-untyped-def]
        for line in encoded.decode().splitlines(keepends=True):
            yield line

    parsed = [m async for m in parse_sse(lines())]
    assert parsed == messages


def test_app_name_rule() -> None:
    AppCreate(name="example-1")
    with pytest.raises(ValueError, match="lowercase"):
        AppCreate(name="Bad_Name")


def test_log_line_format() -> None:
    from datetime import UTC, datetime

    line = LogLine(
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC),
        app_id="a",
        job_id="j",
        process_type="web",
        dyno="web.1",
        msg="hello",
    )
    assert line.format() == "2026-01-02T03:04:05.600000Z app[web.1]: hello"
