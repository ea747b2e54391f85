"""Router config generation: snapshots from routes and servers, the rendered config and maps."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from encom.api.types import Route
from encom.router.config import (
    NOT_FOUND_BACKEND,
    QUEUE_TIMEOUT,
    SERVER_MAXCONN,
    Options,
    Snapshot,
    backend_mode,
    backend_name,
    build_snapshot,
    max_connections,
    render_config,
    render_crt_list,
    render_map,
    server_args,
    server_name,
    servers_in_config,
)
from encom.router.haproxy import parse_show_proc
from encom.router.router import fit_layout, route_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def route(
    n: int, service: str, domain: str | None = None, path: str = "/", port: int | None = None, **kw: object
) -> Route:
    return Route(
        id=f"r{n}", app_id="app", type="tcp" if port else "http", domain=domain, path=path, port=port,
        service=service, created_at=T0 + timedelta(seconds=n), updated_at=T0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_http_routes_become_host_map_entries_and_backends() -> None:
    snap = build_snapshot(
        [route(1, "a-web", "A.Example.com"), route(2, "b-web", "b.example.com")],
        {"a-web": {"127.0.0.1:55000", "127.0.0.1:55001"}, "unrouted": {"127.0.0.1:1"}},
    )
    assert snap.hosts == {"a.example.com": "h_a-web", "b.example.com": "h_b-web"}
    assert set(snap.backends) == {"h_a-web", "h_b-web"}
    assert snap.backends["h_a-web"].servers == {"127.0.0.1:55000", "127.0.0.1:55001"}
    assert snap.backends["h_b-web"].servers == frozenset()


def test_paths_and_wildcards_are_ordered_most_specific_first() -> None:
    snap = build_snapshot(
        [
            route(1, "root", "x.test"),
            route(2, "api", "x.test", "/api"),
            route(3, "v2", "x.test", "/api/v2/"),
            route(4, "any", "*.test"),
            route(5, "deep", "*.y.test"),
        ],
        {},
    )
    assert snap.paths == (("x.test/api/v2/", "h_v2"), ("x.test/api/", "h_api"))
    assert snap.wildcards == ((".y.test", "h_deep"), (".test", "h_any"))
    assert snap.hosts == {"x.test": "h_root"}


def test_oldest_route_wins_a_conflict_and_invalid_routes_are_skipped() -> None:
    snap = build_snapshot(
        [
            route(2, "newer", "dup.test"),
            route(1, "older", "dup.test"),
            route(3, "bad", "has space.test"),
            route(4, "bad2", "ok.test", path="/a b"),
            route(5, "badport", port=70000),
        ],
        {},
    )
    assert snap.hosts == {"dup.test": "h_older"}
    assert "h_bad" not in snap.backends and "h_bad2" not in snap.backends and "t_badport" not in snap.backends


def test_tcp_routes_get_a_frontend_and_a_tcp_backend() -> None:
    snap = build_snapshot([route(1, "db", port=3000), route(2, "db", "db.test")], {"db": {"10.0.0.1:55000"}})
    assert snap.tcp_frontends == {3000: "t_db"}
    assert snap.backends["t_db"].mode == "tcp" and snap.backends["h_db"].mode == "http"


def test_layout_ignores_servers_and_maps() -> None:
    routes = [route(1, "a", "a.test")]
    one = build_snapshot(routes, {"a": {"127.0.0.1:1"}})
    two = build_snapshot([*routes, route(2, "a", "alias.test")], {"a": {"127.0.0.1:2"}})
    assert one.layout() == two.layout()
    assert build_snapshot([route(3, "b", "b.test")], {}).layout() != one.layout()
    assert build_snapshot([*routes, route(4, "a", port=3001)], {}).layout() != one.layout()


def test_names_are_haproxy_identifiers() -> None:
    assert backend_name("my-app-web", "http") == "h_my-app-web"
    assert backend_name("odd/name space", "tcp") == "t_odd_name_space"
    assert server_name("10.0.0.7:55003") == "s_10.0.0.7_55003"


def test_rendered_config(tmp_path: Path) -> None:
    snap = build_snapshot(
        [route(1, "a-web", "a.test"), route(2, "db", port=3000)], {"a-web": {"127.0.0.1:55000"}, "db": set()}
    )
    text = render_config(snap, Options(dir=tmp_path, http_port=8080, maxconn=5000))
    assert "maxconn 5000" in text
    assert f"stats socket {tmp_path}/haproxy.sock mode 600 level admin" in text
    assert "bind 127.0.0.1:8080\n" in text
    assert "option idle-close-on-response" in text
    assert "option forwardfor" in text
    assert "balance random" in text
    assert "retries 3" in text and "option redispatch 1" in text
    # host routes only: one lookup, no variable
    assert f"use_backend %[req.hdr(host),field(1,:),lower,map_str({tmp_path}/hosts.map,encom_not_found)]" in text
    assert "txn.host" not in text
    assert f"default_backend {NOT_FOUND_BACKEND}" in text
    assert "frontend tcp_3000\n    mode tcp\n    bind 127.0.0.1:3000\n    default_backend t_db" in text
    assert f"server s_127.0.0.1_55000 127.0.0.1:55000 weight 100 maxconn {SERVER_MAXCONN}\n" in text
    assert "ssl crt" not in text


def test_https_frontend_only_with_a_certificate(tmp_path: Path) -> None:
    opts = Options(dir=tmp_path, https_port=8443, cert_pem=tmp_path / "c.pem")
    text = render_config(Snapshot(), opts)
    assert f"bind 127.0.0.1:8443 ssl crt {tmp_path}/c.pem crt-list {tmp_path}/certs.list alpn h2,http/1.1" in text
    assert "X-Forwarded-Proto https" in text
    assert "ssl crt" not in render_config(Snapshot(), Options(dir=tmp_path, https_port=8443))


def test_rendered_config_is_valid_haproxy(tmp_path: Path) -> None:
    snap = build_snapshot(
        [
            route(1, "a-web", "a.test"),
            route(2, "a-web", "a.test", "/x"),
            route(3, "w", "*.w.test"),
            route(4, "t", port=3),
        ],
        {"a": {"127.0.0.1:55000", "127.0.0.1:55001"}},
    )
    opts = Options(dir=tmp_path)
    for name, entries in snap.maps().items():
        opts.map_path(name).write_text(render_map(entries))
    opts.config_path.write_text(render_config(snap, opts))
    check = subprocess.run(["/usr/sbin/haproxy", "-c", "-f", str(opts.config_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_render_map() -> None:
    assert render_map([("a.test", "h_a"), ("b.test", "h_b")]) == "a.test h_a\nb.test h_b\n"
    assert render_map([]) == ""


def test_max_connections_stays_within_the_fd_limit() -> None:
    assert max_connections(nofile=20000) == 9488
    assert max_connections(listeners=500, nofile=20000) == 8988
    assert max_connections(nofile=1024) == 256
    assert max_connections() * 2 < 1_000_000


def test_parse_show_proc() -> None:
    text = """#<PID>          <type>          <reloads>       <uptime>        <version>
11740           master          3 [failed: 1]   0d00h00m11s     2.6.12
# workers
11867           worker          0               0d00h00m01s     2.6.12
# old workers
11800           worker          1               0d00h00m05s     2.6.12
# programs
"""
    state = parse_show_proc(text)
    assert (state.master, state.reloads, state.failed, state.workers) == (11740, 3, 1, (11867,))


def test_fit_layout_keeps_the_running_layout() -> None:
    running = build_snapshot([route(1, "a", "a.test")], {"a": {"127.0.0.1:1"}})
    wanted = build_snapshot(
        [route(1, "a", "a.test"), route(2, "a", "alias.test"), route(3, "b", "b.test"), route(4, "c", port=3000)],
        {"a": {"127.0.0.1:2"}, "b": {"127.0.0.1:3"}},
    )
    fitted = fit_layout(wanted, running)
    assert fitted.layout() == running.layout()
    assert fitted.backends["h_a"].servers == {"127.0.0.1:2"}
    assert fitted.hosts == {"a.test": "h_a", "alias.test": "h_a"}


def test_route_keys_accept_typed_ids() -> None:
    assert route_key("http/1234") == route_key("1234") == "1234"


# ---------------------------------------------------------------- sticky, certificates, redirects


def test_one_sticky_route_makes_its_service_backend_sticky() -> None:
    snap = build_snapshot(
        [route(1, "a", "a.test"), route(2, "a", "alias.test", sticky=True), route(3, "b", "b.test"),
         route(4, "a", port=3000, sticky=True)],
        {},
    )  # fmt: skip
    assert snap.backends["h_a"].sticky and not snap.backends["h_b"].sticky
    assert not snap.backends["t_a"].sticky, "TCP backends have no cookies"
    plain = build_snapshot([route(1, "a", "a.test")], {})
    assert snap.layout() != build_snapshot([route(1, "a", "a.test"), route(3, "b", "b.test")], {}).layout()
    assert not plain.backends["h_a"].sticky


def test_sticky_backend_config(tmp_path: Path) -> None:
    snap = build_snapshot(
        [route(1, "a", "a.test", sticky=True), route(2, "b", "b.test")], {"a": {"127.0.0.1:1"}, "b": {"127.0.0.1:2"}}
    )
    text = render_config(snap, Options(dir=tmp_path))
    sticky, plain = text.split("backend h_a\n")[1].split("\n\n")[0], text.split("backend h_b\n")[1]
    assert (
        "    dynamic-cookie-key encom-h_a\n    cookie encom_sticky insert indirect nocache httponly dynamic" in sticky
    )
    assert "server s_127.0.0.1_1 127.0.0.1:1 weight 100" in sticky
    assert "cookie" not in plain


def test_route_certificates_by_domain_oldest_first(tmp_path: Path) -> None:
    snap = build_snapshot(
        [
            route(1, "a", "A.test", certificate="CERT1", key="KEY1"),
            route(2, "a", "a.test", "/api", certificate="CERT2", key="KEY2"),  # same domain: the oldest wins
            route(3, "w", "*.w.test", certificate="CERT3\n", key="KEY3"),
            route(4, "x", "nokey.test", certificate="CERT4"),
            route(5, "y", port=3000, certificate="C", key="K"),
        ],
        {},
    )
    assert [(c.name, c.sni, c.pem) for c in snap.certs] == [
        ("r1", "a.test", "CERT1\nKEY1\n"),
        ("r3", "*.w.test", "CERT3\nKEY3\n"),
    ]
    opts = Options(dir=tmp_path)
    assert render_crt_list(snap, opts) == f"{tmp_path}/certs/r1.pem a.test\n{tmp_path}/certs/r3.pem *.w.test\n"
    changed = build_snapshot([route(1, "a", "a.test", certificate="NEW", key="KEY1")], {})
    assert changed.layout() != build_snapshot([route(1, "a", "a.test", certificate="CERT1", key="KEY1")], {}).layout()


def test_redirect_maps(tmp_path: Path) -> None:
    snap = build_snapshot(
        [
            route(1, "a", "a.test", redirect_https=True),
            route(2, "b", "b.test", "/api", redirect_https=True),
            route(3, "w", "*.w.test", redirect_https=True),
            route(4, "x", "x.w.test"),
        ],
        {},
    )
    assert snap.redirects == {"a.test": "1", "b.test": "1", "x.w.test": "0"}
    assert snap.redirect_wildcards == ((".w.test", "1"),)
    assert snap.maps()["redirects"] == [("a.test", "1"), ("b.test", "1"), ("x.w.test", "0")]
    with_https = render_config(snap, Options(dir=tmp_path, https_port=8443, cert_pem=tmp_path / "c.pem"))
    http_frontend = with_https.split("frontend https")[0]
    assert "redirect location https://%[var(txn.host)]:8443%[pathq] code 301" in http_frontend
    assert "http-request redirect" not in with_https.split("frontend https")[1]
    on_443 = render_config(snap, Options(dir=tmp_path, https_port=443, cert_pem=tmp_path / "c.pem"))
    assert "redirect location https://%[var(txn.host)]%[pathq] code 301" in on_443
    assert "http-request redirect" not in render_config(snap, Options(dir=tmp_path)), "no HTTPS frontend, no redirect"


def test_redirect_lookups_only_while_a_route_redirects(tmp_path: Path) -> None:
    opts = Options(dir=tmp_path, https_port=8443, cert_pem=tmp_path / "c.pem")
    plain = build_snapshot([route(1, "a", "a.test"), route(2, "w", "*.w.test")], {})
    redirecting = build_snapshot([route(1, "a", "a.test"), route(2, "w", "*.w.test", redirect_https=True)], {})
    assert not plain.redirecting and redirecting.redirecting
    assert plain.layout() != redirecting.layout()
    assert "txn.redirect" not in render_config(plain, opts)
    assert "txn.redirect" in render_config(redirecting, opts)

    fitted = fit_layout(redirecting, plain)  # a reload that would add the lookups failed
    assert fitted.layout() == plain.layout()
    assert fitted.redirects == plain.redirects and fitted.redirect_wildcards == ((".w.test", "0"),)


def test_fit_layout_keeps_stickiness_and_certificates() -> None:
    running = build_snapshot([route(1, "a", "a.test", certificate="C", key="K")], {})
    wanted = build_snapshot([route(1, "a", "a.test", sticky=True)], {"a": {"127.0.0.1:2"}})
    fitted = fit_layout(wanted, running)
    assert fitted.layout() == running.layout()
    assert fitted.backends["h_a"].servers == {"127.0.0.1:2"}


def test_rendered_https_config_with_sticky_certs_and_redirects_is_valid_haproxy(tmp_path: Path) -> None:
    from encom.bootstrap.tls import create_ca, issue_cert

    create_ca(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    issue_cert(tmp_path / "ca.pem", tmp_path / "ca-key.pem", ["x.test"], tmp_path / "x.pem", tmp_path / "x-key.pem")
    cert, key = (tmp_path / "x.pem").read_text(), (tmp_path / "x-key.pem").read_text()
    (tmp_path / "default.pem").write_text(cert + key)
    snap = build_snapshot(
        [
            route(1, "a-web", "a.test", sticky=True, redirect_https=True, certificate=cert, key=key),
            route(2, "w", "*.w.test", certificate=cert, key=key),
        ],
        {"a-web": {"127.0.0.1:55000", "127.0.0.1:55001"}},
    )
    opts = Options(dir=tmp_path, https_port=8443, cert_pem=tmp_path / "default.pem")
    for name, entries in snap.maps().items():
        opts.map_path(name).write_text(render_map(entries))
    opts.certs_dir.mkdir()
    for c in snap.certs:
        opts.cert_path(c.name).write_text(c.pem)
    opts.crt_list_path.write_text(render_crt_list(snap, opts))
    opts.config_path.write_text(render_config(snap, opts))
    check = subprocess.run(["/usr/sbin/haproxy", "-c", "-f", str(opts.config_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "[WARNING]" not in check.stdout + check.stderr


def test_http_servers_queue_beyond_their_maxconn_tcp_servers_do_not(tmp_path: Path) -> None:
    snap = build_snapshot(
        [route(1, "a-web", "a.test"), route(2, "db", port=3000)],
        {"a-web": {"127.0.0.1:55000"}, "db": {"127.0.0.1:55001"}},
    )
    text = render_config(snap, Options(dir=tmp_path))
    assert f"    timeout queue {QUEUE_TIMEOUT}\n" in text
    assert "\n    server s_127.0.0.1_55000 127.0.0.1:55000 weight 100 maxconn 100\n" in text
    assert "\n    server s_127.0.0.1_55001 127.0.0.1:55001 weight 100\n" in text
    # what the Runtime API's `add server` gets is what the config file says
    assert backend_mode(backend_name("a-web", "http")) == "http"
    assert backend_mode(backend_name("db", "tcp")) == "tcp"
    assert server_args("http") == "weight 100 maxconn 100"
    assert server_args("tcp") == "weight 100"
    # and the adopted config's servers still read back
    assert servers_in_config(text) == {"h_a-web": {"127.0.0.1:55000"}, "t_db": {"127.0.0.1:55001"}}


def test_queue_timeout_is_short() -> None:
    """A burst beyond the servers' maxconn waits at most a few seconds, then gets a 503 (not a 60 s 504)."""
    assert QUEUE_TIMEOUT.endswith("s") and 1 <= int(QUEUE_TIMEOUT[:-1]) <= 10
