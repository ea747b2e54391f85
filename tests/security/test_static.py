"""Finding 10: the static buildpack served the whole repository (`/.env`, `/app.json`, `/Dockerfile`…) from
`python3 -m http.server`. It now serves the site's root only (`public/` here) from nginx."""

from __future__ import annotations

import http.client

from tests.e2e.conftest import Cluster, User, curl, wait_for
from tests.security.conftest import Victim, attacker_repo, victim_serves

APP = "static-site"
HOST = f"{APP}.encom.localhost"
INDEX = "<!doctype html><title>site</title>" + "<p>the public page, long enough to be compressed</p>" * 20
SECRET = "sk_live_do_not_serve"
REPO = {
    ".env": f"STRIPE_KEY={SECRET}\n",
    ".gitignore": "*.log\n",
    "app.json": f'{{"name": "{APP}", "env": {{"STRIPE_KEY": {{"value": "{SECRET}"}}}}}}\n',
    "Dockerfile": f"FROM debian\nENV STRIPE_KEY={SECRET}\n",
    "Procfile": "worker: sleep infinity\n",
    "public/index.html": INDEX,
    "public/css/site.css": "body { color: #222; }\n" * 50,
}
NEVER_SERVED = [
    "/.env", "/app.json", "/Dockerfile", "/Procfile", "/.git/HEAD", "/.git/config", "/.gitignore",
    "/public/index.html", "/.encom-static/nginx.conf.in", "/.profile.d/", "/%2eenv", "/../.env",
]  # fmt: skip


def get(port: int, path: str, gzip: bool = False) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": HOST, **({"Accept-Encoding": "gzip"} if gzip else {})}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_static_site_serves_its_public_root_only(cluster: Cluster, user: User, victim: Victim) -> None:
    repo = attacker_repo(user, APP, REPO)
    with victim_serves(cluster, victim, "a static site's push and the requests for its secrets"):
        push = user.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
        assert "Serving public/ (2 files) with nginx" in push.err + push.out
        wait_for("the static site to answer", lambda: curl(cluster.router_port, HOST)[0] == 200)

        status, headers, body = get(cluster.router_port, "/")
        assert status == 200 and body.decode() == INDEX
        assert headers["server"] == "nginx"  # nginx, without its version
        assert headers["cache-control"] == "no-cache" and "etag" in headers

        status, headers, _ = get(cluster.router_port, "/css/site.css", gzip=True)
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert headers["cache-control"] == "public, max-age=3600"

        for path in NEVER_SERVED:
            status, _, body = get(cluster.router_port, path)
            assert status in (400, 404), f"{path} answered {status}"
            assert SECRET.encode() not in body, path

    processes = user.encom("ps", cwd=repo).out.splitlines()[1:]
    assert [line.split()[1:3] for line in processes] == [["web", "up"]], processes
    user.encom("delete", "--yes", cwd=repo)
