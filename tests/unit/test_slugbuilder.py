"""The slugbuilder and the built-in buildpacks, run directly on temp dirs (no containers)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from encom.build import slugbuilder as sb

BUILDPACKS = sb.BUILDPACKS_DIR
SLUGBUILDER = Path(sb.__file__)
DEBIAN_PYTHON = Path("/usr/bin/python3")


def make_app(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def detected(app: Path, env: dict[str, str] | None = None) -> list[str]:
    return [p.name for p in sb.select_buildpacks(app, BUILDPACKS, env or {})]


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"requirements.txt": "", "package.json": "{}", "index.html": "", "Procfile": "web: x"}, "python"),
        ({"pyproject.toml": "[project]\nname='x'\n"}, "python"),
        ({"package.json": "{}", "index.html": "", "Procfile": "web: x"}, "nodejs"),
        ({"index.html": "<h1>hi</h1>", "Procfile": "web: x"}, "static"),
        ({"Procfile": "web: ./server"}, "procfile"),
    ],
)
def test_detect_order(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    assert detected(make_app(tmp_path / "app", files)) == [expected]


def test_no_buildpack_accepts_a_readme(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"README.md": "just words"})
    with pytest.raises(sb.BuildError, match="Unable to select a buildpack"):
        sb.select_buildpacks(app, BUILDPACKS, {})


def test_detect_prints_the_framework_name(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"package.json": "{}"})
    assert [p.display for p in sb.select_buildpacks(app, BUILDPACKS, {})] == ["Node.js"]


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("nodejs", "nodejs"),
        ("https://github.com/heroku/heroku-buildpack-python.git", "python"),
        ("https://github.com/heroku/heroku-buildpack-nodejs#v200", "nodejs"),
        ("https://github.com/cloudfoundry/staticfile-buildpack", None),
        ("https://example.com/buildpacks/static/", "static"),
        ("ruby", None),
    ],
)
def test_buildpack_url_names_a_builtin(url: str, name: str | None) -> None:
    assert sb.builtin_name(url) == name


def test_buildpack_url_overrides_detection(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {"requirements.txt": "", "index.html": ""})
    assert detected(app, {"BUILDPACK_URL": "static"}) == ["static"]
    with pytest.raises(sb.BuildError, match="not a built-in"):
        detected(app, {"BUILDPACK_URL": "https://github.com/heroku/heroku-buildpack-ruby"})


def test_dot_buildpacks_lists_several(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app", {".buildpacks": "# comment\nnodejs\n\nstatic\n", "index.html": ""})
    assert detected(app) == ["nodejs", "static"]


# ---------------------------------------------------------------- Procfile and bin/release


def test_procfile_parsing() -> None:
    text = (
        "# comment\nweb: gunicorn --bind 0.0.0.0:$PORT app:app\n\nworker:python worker.py  \nnot a line\n web: again\n"
    )
    assert sb.parse_procfile(text) == {"web": "again", "worker": "python worker.py"}


def test_release_output_json_and_yaml() -> None:
    assert sb.parse_release('{"default_process_types": {"web": "npm start"}}') == {"web": "npm start"}
    yaml = "---\naddons: []\ndefault_process_types:\n  web: 'bundle exec puma'\n  worker: rake jobs\nconfig_vars: {}\n"
    assert sb.parse_release(yaml) == {"web": "bundle exec puma", "worker": "rake jobs"}
    assert sb.parse_release("") == {}


def test_procfile_wins_over_buildpack_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = make_app(tmp_path / "app", {"package.json": "{}", "Procfile": "web: node server.js\nworker: node w.js\n"})
    layout = sb.Layout(app=app)
    packs = sb.select_buildpacks(app, BUILDPACKS, {})
    assert sb.process_types(packs, layout, {}) == {"web": "node server.js", "worker": "node w.js"}
    assert "       Procfile declares types -> web, worker" in capsys.readouterr().out


def test_buildpack_defaults_without_procfile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = make_app(tmp_path / "app", {"index.html": "<p>hi</p>"})
    packs = sb.select_buildpacks(app, BUILDPACKS, {})
    processes = sb.process_types(packs, sb.Layout(app=app), {})
    assert processes["web"] == "/app/.encom-static/start"  # nginx, serving the site's root only
    assert "Default types for buildpack -> web" in capsys.readouterr().out


def test_output_is_indented_the_heroku_way() -> None:
    assert sb.indent("Installed 7 packages") == "       Installed 7 packages"
    assert sb.indent("-----> Installing dependencies") == "-----> Installing dependencies"
    assert sb.indent(" !     failure") == " !     failure"
    assert sb.indent("       already") == "       already"


def test_env_dir_holds_only_release_vars(tmp_path: Path) -> None:
    env = {"GREETING": "hi", "CACHE_URL": "secret", "PATH": "/bin", "ENCOM_ENV_KEYS": "GREETING,CACHE_URL,BAD/NAME"}
    sb.write_env_dir(tmp_path / "env", env)
    assert sorted(p.name for p in (tmp_path / "env").iterdir()) == ["GREETING"]
    assert (tmp_path / "env" / "GREETING").read_text() == "hi"


def test_slugignore_removes_listed_paths(tmp_path: Path) -> None:
    app = make_app(
        tmp_path / "app", {".slugignore": "docs\n*.psd\n../outside\n", "docs/a.md": "", "x.psd": "", "k": ""}
    )
    (tmp_path / "outside").write_text("keep")
    sb.apply_slugignore(app)
    assert sorted(p.name for p in app.iterdir()) == [".slugignore", "k"]
    assert (tmp_path / "outside").exists()


# ---------------------------------------------------------------- safe extraction (encom.build.untar; see test_untar)


def tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    "member",
    [
        file_member("../evil"),
        file_member("a/../../evil"),
        file_member("/etc/evil"),
        link_member("hard", "../outside", tarfile.LNKTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "hardlink-up"],
)
def test_extraction_rejects_escaping_members(tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None]) -> None:
    archive = tarball(tmp_path / "src.tar", [file_member("ok.txt"), member])
    dest = tmp_path / "deep" / "app"
    with pytest.raises(sb.BuildError, match=r"absolute|'\.\.'"):
        sb.safe_extract(archive, dest)
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()


def test_extraction_rejects_writing_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    members = [link_member("d", "."), link_member("d/l", ".."), file_member("d/l/escaped")]
    archive = tarball(tmp_path / "src.tar", members)
    with pytest.raises(sb.BuildError, match="below a link"):
        sb.safe_extract(archive, tmp_path / "app")
    assert not (tmp_path / "escaped").exists()


def test_extraction_keeps_files_and_links_and_drops_setuid_and_devices(tmp_path: Path) -> None:
    device = tarfile.TarInfo("null")
    device.type = tarfile.CHRTYPE
    members = [
        file_member("bin/run", b"#!/bin/sh\n", 0o4777),
        file_member("src/app.py", b"print(1)\n"),
        link_member("current", "src"),
        link_member("python", "/usr/bin/python3"),  # kept as is: never followed while extracting
        (device, None),
    ]
    archive = tarball(tmp_path / "src.tar", members)
    dest = tmp_path / "app"
    sb.safe_extract(archive, dest)
    assert (dest / "current" / "app.py").read_text() == "print(1)\n"
    assert (dest / "bin" / "run").stat().st_mode & 0o7777 == 0o755
    assert (dest / "python").readlink() == Path("/usr/bin/python3")
    assert not (dest / "null").exists()


def test_extraction_of_a_dot_rooted_tarball(tmp_path: Path) -> None:
    """What `tar -C dir -cf out .` writes (slugs, caches): a "./" member, then "./x" members."""
    (tmp_path / "src" / "uv").mkdir(parents=True)
    (tmp_path / "src" / "uv" / "wheel").write_text("w")
    (tmp_path / "src" / "link").symlink_to("uv/wheel")
    subprocess.run(["tar", "-C", str(tmp_path / "src"), "-cf", str(tmp_path / "c.tar"), "."], check=True)
    sb.safe_extract(tmp_path / "c.tar", tmp_path / "cache")
    assert (tmp_path / "cache" / "link").read_text() == "w"


# ---------------------------------------------------------------- whole builds against a local blob server


class Blobs(BaseHTTPRequestHandler):
    store: dict[str, bytes] = {}

    def do_GET(self) -> None:
        data = self.store.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def do_PUT(self) -> None:
        self.store[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def blobs() -> Iterator[tuple[str, dict[str, bytes]]]:
    store: dict[str, bytes] = {}
    handler = type("Handler", (Blobs,), {"store": store})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", store
    server.shutdown()
    server.server_close()


def source_tar(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_env(url: str, **extra: str) -> dict[str, str]:
    return {
        "SOURCE_URL": f"{url}/source.tar",
        "CACHE_URL": f"{url}/cache.tar",
        "SOURCE_VERSION": "abc123",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        **extra,
    }


def run_debian_build(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The slugbuilder's build() under Debian's Python 3.11 (what build containers run), on temp dirs."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import slugbuilder as sb\n"
        "root = Path(sys.argv[2])\n"
        "layout = sb.Layout(app=root / 'app', cache=root / 'cache', env=root / 'env', work=root / 'work',"
        " out=root / 'out')\n"
        "try:\n    sb.build(layout, dict(__import__('os').environ))\n"
        "except sb.BuildError as exc:\n    print(' !     ' + str(exc)); sys.exit(1)\n"
    )
    (tmp_path / "app").mkdir(parents=True, exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    args = [str(DEBIAN_PYTHON), "-c", code, str(SLUGBUILDER.parent), str(tmp_path)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_static_build_end_to_end(tmp_path: Path, blobs: tuple[str, dict[str, bytes]]) -> None:
    url, store = blobs
    store["/source.tar"] = source_tar({"index.html": "<h1>hi</h1>", "Procfile": "web: python3 -m http.server $PORT"})
    proc = run_debian_build(tmp_path, build_env(url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "-----> Static app detected"
    assert "       Procfile declares types -> web" in lines
    assert any(line.startswith("-----> Compressing... done, ") and line.endswith("KB") for line in lines)
    out = tmp_path / "out"
    assert json.loads((out / "result.json").read_bytes()) == {
        "processes": {"web": "python3 -m http.server $PORT"},
        "buildpack": "static",
        "slug_size": (out / "slug.tgz").stat().st_size,
        "commit": "abc123",
    }
    with tarfile.open(out / "slug.tgz") as slug:
        names = slug.getnames()
    # the site is at the top of the repository: its web files only are copied into the root nginx serves
    assert "./.encom-static/site/index.html" in names and "./.encom-static/nginx.conf.in" in names
    assert not any(name.startswith("./.encom-static/site/") and name.endswith("Procfile") for name in names)


def test_outputs_replace_what_build_code_left_there(tmp_path: Path, blobs: tuple[str, dict[str, bytes]]) -> None:
    """Build code runs as the slugbuilder's uid and can write /encom/out first: a link there is replaced, not
    written through."""
    url, store = blobs
    store["/source.tar"] = source_tar({"index.html": "hi", "Procfile": "web: true"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "slug.tgz").symlink_to(tmp_path / "target")
    (tmp_path / "out" / "result.json").mkdir()
    proc = run_debian_build(tmp_path, build_env(url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "target").exists()
    assert (tmp_path / "out" / "slug.tgz").is_file() and not (tmp_path / "out" / "slug.tgz").is_symlink()
    assert json.loads((tmp_path / "out" / "result.json").read_bytes())["buildpack"] == "static"


def test_unselectable_repo_fails_the_build(tmp_path: Path, blobs: tuple[str, dict[str, bytes]]) -> None:
    url, store = blobs
    store["/source.tar"] = source_tar({"README.md": "words"})
    proc = run_debian_build(tmp_path, build_env(url))
    assert proc.returncode == 1
    assert " !     Unable to select a buildpack" in proc.stdout
    assert not (tmp_path / "out" / "slug.tgz").exists() and not (tmp_path / "out" / "result.json").exists()


def test_main_requires_the_source_url() -> None:
    proc = subprocess.run([str(DEBIAN_PYTHON), str(SLUGBUILDER)], env={}, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "missing environment: SOURCE_URL" in proc.stdout


def find_uv() -> str | None:
    """The real uv binary (a pyenv shim only works with pyenv's environment)."""
    found = shutil.which("uv")
    if found and Path(found).read_bytes()[:2] == b"#!" and shutil.which("pyenv"):
        proc = subprocess.run(["pyenv", "which", "uv"], capture_output=True, text=True, check=False)
        found = proc.stdout.strip() if proc.returncode == 0 else None
    return found


UV = find_uv()


def test_python_build_with_uv(tmp_path: Path, blobs: tuple[str, dict[str, bytes]]) -> None:
    """An empty requirements.txt needs no network: the venv, the profile script, the cache round trip."""
    assert UV is not None, "uv is not installed (make test installs it)"
    url, store = blobs
    store["/source.tar"] = source_tar({"requirements.txt": "", "Procfile": "web: python app.py\n"})
    env = build_env(url, ENCOM_UV=str(UV), HOME=str(tmp_path))
    first = run_debian_build(tmp_path / "one", env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.startswith("-----> Python app detected\n-----> Installing dependencies with uv")
    venv_python = tmp_path / "one" / "app" / ".venv" / "bin" / "python"
    assert venv_python.exists()
    profile = (tmp_path / "one" / "app" / ".profile.d" / "python.sh").read_text()
    assert f'export PATH="{tmp_path / "one" / "app" / ".venv"}/bin:$PATH"' in profile
    assert json.loads((tmp_path / "one" / "out" / "result.json").read_bytes())["processes"] == {"web": "python app.py"}
