"""The static buildpack: its compile step (Debian's python3, as in a build) and the nginx it configures, run as an
unprivileged user on a loopback port in 9000-9999."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from encom.build.slugbuilder import BUILDPACKS_DIR

pytestmark = [pytest.mark.integration]

COMPILE = BUILDPACKS_DIR / "static" / "bin" / "compile"
DEBIAN_PYTHON = "/usr/bin/python3"
PORTS = range(9300, 9400)
INDEX = "<!doctype html><h1>the site</h1>" + "<p>text that compresses</p>" * 40
CSS = "body { color: #333; }\n" * 40
REPO_SECRETS = {
    ".env": "SECRET_KEY=hunter2\n",
    "app.json": '{"env": {"SECRET_KEY": "hunter2"}}',
    "Dockerfile": "FROM debian\n",
    "Procfile": "worker: sleep infinity\n",
    ".git/HEAD": "ref: refs/heads/master\n",
    "static.json": "{}",
    "package.json": "{}",
}


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def site() -> Iterator[Path]:
    """A build directory nobody can read (as an app's /app is readable by its own uid only)."""
    top = Path(tempfile.mkdtemp(prefix="encom-static-"))
    top.chmod(0o755)
    try:
        yield top / "app"
    finally:
        shutil.rmtree(top)


def compile_site(app: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DEBIAN_PYTHON, str(COMPILE), str(app), "/nonexistent-cache", "/nonexistent-env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise AssertionError("no free port in 9300-9399")


@pytest.fixture
def serve(site: Path) -> Iterator[Callable[[], str]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        shutil.chown(site.parent, "nobody")
        subprocess.run(["chown", "-R", "nobody:nogroup", str(site)], check=True)
        port = free_port()
        env = {"PATH": "/usr/bin:/bin", "PORT": str(port), "ENCOM_STATIC_RUN": str(site.parent / "run")}
        proc = subprocess.Popen(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(site / ".encom-static" / "start")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert proc.poll() is None, "nginx exited"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}"
            time.sleep(0.05)
        raise AssertionError("nginx did not listen within 15 s")

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_only_public_is_served_with_gzip_and_cache_headers(site: Path, serve: Callable[[], str]) -> None:
    write(site, {**REPO_SECRETS, "public/index.html": INDEX, "public/css/site.css": CSS, "public/.htpasswd": "x"})
    (site / "public" / "env.txt").symlink_to("../.env")
    proc = compile_site(site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "-----> Serving public/ (2 files) with nginx" in proc.stdout
    base = serve()
    with httpx.Client(base_url=base, headers={"Accept-Encoding": "gzip"}) as client:
        home = client.get("/")
        assert home.status_code == 200 and home.text == INDEX
        assert home.headers["content-encoding"] == "gzip" and home.headers["cache-control"] == "no-cache"
        assert home.headers["server"] == "nginx"  # no version
        css = client.get("/css/site.css")
        assert css.headers["content-type"].startswith("text/css") and css.headers["content-encoding"] == "gzip"
        assert css.headers["cache-control"] == "public, max-age=3600" and "etag" in css.headers
        for path in ["/.env", "/app.json", "/Dockerfile", "/Procfile", "/.git/HEAD", "/static.json",
                     "/package.json", "/.htpasswd", "/env.txt", "/public/index.html", "/%2eenv"]:  # fmt: skip
            response = client.get(path)
            assert response.status_code == 404, path
            assert "hunter2" not in response.text


def test_a_top_level_site_gets_its_web_files_only(site: Path, serve: Callable[[], str]) -> None:
    write(site, {**REPO_SECRETS, "index.html": INDEX, "css/site.css": CSS, "notes.md": "private", "bin/x.sh": "x"})
    write(site, {"node_modules/lib/index.js": "x", "img/.secret.png": "x", "data/list.json": "[]"})
    proc = compile_site(site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    served = sorted(str(p.relative_to(site / ".encom-static" / "site")) for p in site.rglob("*") if p.is_file()
                    and (site / ".encom-static" / "site") in p.parents)  # fmt: skip
    assert served == ["css/site.css", "data/list.json", "index.html"]
    base = serve()
    with httpx.Client(base_url=base) as client:
        assert client.get("/").text == INDEX
        assert client.get("/data/list.json").json() == []
        for path in ["/.env", "/app.json", "/package.json", "/notes.md", "/node_modules/lib/index.js"]:
            assert client.get(path).status_code == 404, path


def test_static_json_root_clean_urls_error_page_and_headers(site: Path, serve: Callable[[], str]) -> None:
    static = {
        "root": "dist/",
        "clean_urls": True,
        "error_page": "errors/404.html",
        "headers": {"/assets/**": {"Cache-Control": "public, max-age=31536000, immutable", "X-Kind": "asset"}},
    }
    write(site, {**REPO_SECRETS, "static.json": json.dumps(static), "public/index.html": "not this one"})
    write(site, {"dist/index.html": INDEX, "dist/about.html": "about", "dist/errors/404.html": "lost"})
    write(site, {"dist/assets/app.js": "console.log(1)\n"})
    proc = compile_site(site)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    base = serve()
    with httpx.Client(base_url=base) as client:
        assert client.get("/").text == INDEX
        assert client.get("/about").text == "about"
        missing = client.get("/nope")
        assert missing.status_code == 404 and missing.text == "lost"
        asset = client.get("/assets/app.js")
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.headers["x-kind"] == "asset"
        assert "x-kind" not in client.get("/").headers


@pytest.mark.parametrize(
    ("static", "message"),
    [
        ('{"root": "../etc"}', "must be a visible directory inside the repository"),
        ('{"root": ".git"}', "must be a visible directory inside the repository"),
        ('{"root": "missing/"}', "missing/ is not a directory"),
        ('{"root": 3}', '"root" must be a string'),
        ('{"clean_urls": "yes"}', '"clean_urls" must be true or false'),
        ('{"error_page": "../.env"}', '"error_page" must be a visible file'),
        ('{"headers": {"/": {"X-A": "a\\"; evil"}}}', "has"),
        ('{"headers": {"/": {"Bad Name": "a"}}}', "is not a valid header"),
        ('{"encoding": "utf-8; evil"}', '"encoding" must be a character set name'),
        ("[1]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_bad_static_json_fails_the_build_with_a_reason(site: Path, static: str, message: str) -> None:
    write(site, {"static.json": static, "public/index.html": INDEX})
    proc = compile_site(site)
    assert proc.returncode == 1
    assert proc.stdout.startswith(" !     ") and message in proc.stdout, proc.stdout


def test_a_root_through_a_symlink_is_refused(site: Path) -> None:
    write(site, {"static.json": '{"root": "www"}', "public/index.html": INDEX})
    os.symlink("/etc", site / "www")
    proc = compile_site(site)
    assert proc.returncode == 1 and "goes through a symbolic link" in proc.stdout
