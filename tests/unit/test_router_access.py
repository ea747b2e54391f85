"""HAProxy's access lines (ACCESS_LOG_FORMAT) read as Heroku-style router log entries."""

from __future__ import annotations

from encom.router.access import parse


def test_a_served_request_names_its_server() -> None:
    found = parse('127.0.0.1:55001 GET "/search?q=a b" 200 12 1534 5f1c1f7e-3a47-4d0b-9d5b-0e7b7f1b2c3d\n')
    assert found is not None
    assert found.server == "127.0.0.1:55001"
    assert found.entry.msg == (
        'method=GET path="/search?q=a b" status=200 service=12ms bytes=1534 '
        "request_id=5f1c1f7e-3a47-4d0b-9d5b-0e7b7f1b2c3d"
    )


def test_lines_without_a_server_or_garbage_are_dropped() -> None:
    assert parse('-:- GET "/" 404 0 120 abc') is None  # answered by HAProxy itself (no such app)
    assert parse('<NOSRV>:0 GET "/" 503 0 120 abc') is None
    assert parse("") is None
    assert parse("not an access line") is None
    assert parse('127.0.0.1:x GET "/" 200 1 2 id') is None
