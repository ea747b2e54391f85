"""`encom cluster add` against a real local TLS server holding a certificate from `encom.bootstrap.tls`."""

from __future__ import annotations

import json
import ssl
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from encom.api.settings import Settings
from encom.bootstrap.tls import controller_cert_paths, controller_pin, ensure_tls
from encom.cli.clusters import check_pin, fetch_certificate
from encom.cli.config import cert_path, config_path, load_config
from encom.cli.main import cli
from encom.cli.output import CliError

KEY = "the-cluster-key"


class KeysOnly(BaseHTTPRequestHandler):
    """Enough of a controller for `cluster add`'s key check and `encom key`: GET /keys with the key."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self.reply(401, {"code": "unauthorized", "message": "invalid or missing key"})
        elif self.path == "/keys":
            self.reply(200, [])
        else:
            self.reply(404, {"code": "not_found", "message": "no such thing"})

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class TlsServer:
    url: str
    port: int
    pin: str


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TlsServer]:
    settings = Settings(data_dir=tmp_path / "cluster")
    ensure_tls(settings)
    cert, key = controller_cert_paths(settings)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), KeysOnly)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        yield TlsServer(f"https://127.0.0.1:{port}", port, controller_pin(settings))
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def test_pin_of_the_served_certificate(server: TlsServer) -> None:
    der = fetch_certificate("127.0.0.1", server.port)
    check_pin(der, server.pin, "here")
    wrong = "A" * 43 + "="
    with pytest.raises(CliError, match="TLS pin mismatch"):
        check_pin(der, wrong, "here")


def test_wrong_pin_is_refused_and_nothing_saved(server: TlsServer, xdg: Path) -> None:
    result = CliRunner().invoke(cli, ["cluster", "add", "-p", "A" * 43 + "=", "local", server.url, KEY])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: TLS pin mismatch")
    assert not config_path().exists() and not cert_path("local").exists()


def test_wrong_key_is_refused_and_nothing_saved(server: TlsServer, xdg: Path) -> None:
    result = CliRunner().invoke(cli, ["cluster", "add", "-p", server.pin, "local", server.url, "bad-key"])
    assert result.exit_code == 1
    assert "key was refused" in result.stderr
    assert not config_path().exists() and not cert_path("local").exists()


def test_add_saves_the_cluster_and_its_certificate(server: TlsServer, xdg: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["cluster", "add", "-p", server.pin, "local", server.url, KEY])
    assert result.exit_code == 0, result.output
    assert result.stdout == 'Cluster "local" added.\n'
    assert KEY not in result.output
    config = load_config()
    assert config.default == "local"
    saved = config.clusters[0]
    assert (saved.url, saved.key, saved.tls_pin) == (server.url, KEY, server.pin)
    assert saved.git_url == "ssh://git@127.0.0.1:2222"
    assert stat.S_IMODE(config_path().stat().st_mode) == 0o600
    assert cert_path("local").read_text().startswith("-----BEGIN CERTIFICATE-----")

    # Later calls trust exactly the saved certificate.
    listed = runner.invoke(cli, ["key"])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout == "FINGERPRINT  COMMENT\n"

    again = runner.invoke(cli, ["cluster", "add", "-p", server.pin, "local", server.url, KEY])
    assert again.exit_code == 1 and 'cluster "local" already exists' in again.stderr
    second = runner.invoke(
        cli, ["cluster", "add", "-f", "-d", "-g", "ssh://git@h:2", "-p", server.pin, "local", server.url, KEY]
    )
    assert second.exit_code == 0, second.output
    assert load_config().clusters[0].git_url == "ssh://git@h:2"

    conflict = runner.invoke(cli, ["cluster", "add", "-p", server.pin, "other", server.url, KEY])
    assert conflict.exit_code == 1 and 'conflicts with cluster "local"' in conflict.stderr
    forced = runner.invoke(cli, ["cluster", "add", "-f", "-p", server.pin, "other", server.url, KEY])
    assert forced.exit_code == 0, forced.output
    assert [c.name for c in load_config().clusters] == ["other"] and load_config().default == "other"
    assert not cert_path("local").exists()


def test_api_errors_are_one_line(server: TlsServer, xdg: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["cluster", "add", "-p", server.pin, "local", server.url, KEY]).exit_code == 0
    result = runner.invoke(cli, ["apps"])
    assert result.exit_code == 1
    assert result.stderr == "error: no such thing\n"


def test_unreachable_controller(xdg: Path) -> None:
    result = CliRunner().invoke(cli, ["cluster", "add", "-p", "x", "local", "https://127.0.0.1:1", KEY])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot connect to 127.0.0.1:1")
