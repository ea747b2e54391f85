"""`encom route`: the listing's cells and the PEM file reading."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from encom.api.types import Route
from encom.cli.output import CliError
from encom.cli.routes import read_pem, read_tls, route_row

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def route(**fields: object) -> Route:
    return Route.model_validate({"app_id": "a", "service": "a-web", "created_at": T0, "updated_at": T0, **fields})


def test_route_rows_have_no_empty_cells() -> None:
    http = route(id="u1", type="http", domain="x.localhost", path="/api/", sticky=True)
    own = route(id="u2", type="http", domain="y.localhost", certificate="PEM", key="KEY")
    tcp = route(id="u3", type="tcp", port=3001)
    assert route_row(http) == ["http", "x.localhost", "/api/", "a-web", "true", "default", "http/u1"]
    assert route_row(own) == ["http", "y.localhost", "/", "a-web", "false", "own", "http/u2"]
    assert route_row(tcp) == ["tcp", "3001", "-", "a-web", "false", "-", "tcp/u3"]


def test_pem_files_are_read_with_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("CERT")
    (tmp_path / "k.pem").write_text("KEY")
    (tmp_path / "bin.pem").write_bytes(b"\xff\xfe\x00")
    assert read_tls(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")) == ("CERT", "KEY")
    assert read_tls(None, None) == (None, None)
    with pytest.raises(CliError, match="a certificate needs its key"):
        read_tls(str(tmp_path / "c.pem"), None)
    with pytest.raises(CliError, match="a certificate needs its key"):
        read_tls(None, str(tmp_path / "k.pem"))
    with pytest.raises(CliError, match=r'^key file ".*nope.pem" does not exist$'):
        read_pem(str(tmp_path / "nope.pem"), "key")
    with pytest.raises(CliError, match="is a directory"):
        read_pem(str(tmp_path), "certificate")
    with pytest.raises(CliError, match=r"is not a PEM \(text\) file"):
        read_pem(str(tmp_path / "bin.pem"), "certificate")
