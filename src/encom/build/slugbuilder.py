#!/usr/bin/python3
"""The slugbuilder: runs INSIDE a build container with the host stack's /usr/bin/python3 (stdlib only).

Environment (set by gitreceive): SOURCE_URL (signed GET of the tar of the commit), CACHE_URL (signed GET of the app's
build cache, may 404), SOURCE_VERSION (commit sha), ENCOM_ENV_KEYS (comma-separated names of the release env vars,
which are also in the environment), optionally BUILDPACK_URL. No URL lets the build write anything.

Steps: download and safely extract the source into /app, restore the cache into /tmp/cache, pick the buildpacks,
run `bin/compile /app /tmp/cache /tmp/env`, read `bin/release`, then write the outputs into /encom/out: `slug.tgz`
(tar.gz of /app), `cache.tar` (only when the cache changed) and `result.json` (`{"processes": {type: command},
"buildpack": name, ...}`). The host uploads them after the build has ended (encom.host.outputs). Exit 1 with a
message on any failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

try:
    from encom.build import untar
except ImportError:  # run as /encom/build/slugbuilder.py in a build container: untar.py is beside it
    import untar  # type: ignore[no-redef,import-not-found]

BUILDPACKS_DIR = Path(__file__).resolve().parent / "buildpacks"
BUILTIN_ORDER = ("python", "nodejs", "static", "procfile")
INDENT = " " * 7
HEADER_PREFIXES = ("----->", "=====>", " !")
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
MAX_PROCFILE_BYTES = 64 << 10
HTTP_TIMEOUT = 300.0
# Variables that describe the build itself; never written to the env dir.
BUILD_VARS = ("SOURCE_URL", "CACHE_URL", "ENCOM_ENV_KEYS")
OUTPUT_DIR = Path("/encom/out")  # collected by the host once the build has ended


class BuildError(Exception):
    """A failure explained to the pusher; the message is printed as ` !     <message>`."""


@dataclass(frozen=True)
class Buildpack:
    name: str  # built-in directory name: "python"
    path: Path
    display: str  # what bin/detect printed: "Python"


@dataclass
class Layout:
    app: Path = Path("/app")
    cache: Path = Path("/tmp/cache")
    env: Path = Path("/tmp/env")
    work: Path = Path("/tmp/build")
    buildpacks: Path = BUILDPACKS_DIR
    out: Path = OUTPUT_DIR


@dataclass
class Result:
    processes: dict[str, str]
    buildpack: str
    slug_size: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {"processes": self.processes, "buildpack": self.buildpack, "slug_size": self.slug_size, **self.extra}
        return json.dumps(body).encode()


def say(line: str = "") -> None:
    print(line, flush=True)


def indent(line: str) -> str:
    """Heroku's output style: headers (`----->`, ` !`) and already-indented lines as is, the rest indented."""
    if not line.strip() or line.startswith(HEADER_PREFIXES) or line.startswith(INDENT):
        return line
    return INDENT + line


# ---------------------------------------------------------------- HTTP


def download(url: str, dest: Path) -> bool:
    """GET url into dest. False when the blob does not exist (404)."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise BuildError(f"download failed: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise BuildError(f"download failed: {exc}") from exc
    return True


# ---------------------------------------------------------------- outputs


def output_file(path: Path) -> int:
    """A new file for an output, opened for writing. Build code runs as this same uid and may have left anything at
    that name: it is removed, and the new file is created without following links."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract a hostile tarball into dest (see untar: nothing is written through a link)."""
    try:
        untar.extract_into(str(tar_path), str(dest))
    except untar.ArchiveError as exc:
        raise BuildError(str(exc)) from None


# ---------------------------------------------------------------- Procfile and buildpacks


def parse_procfile(text: str) -> dict[str, str]:
    """`<type>: <command>` lines in order; comments and other lines are ignored, a repeated type wins last."""
    processes: dict[str, str] = {}
    for raw in text.splitlines():
        match = PROCFILE_LINE.match(raw.strip())
        if match:
            processes[match.group(1)] = match.group(2).strip()
    return processes


def read_procfile(app: Path) -> dict[str, str] | None:
    path = app / "Procfile"
    if path.is_symlink() or not path.is_file():
        return None
    with open(path, "rb") as f:
        data = f.read(MAX_PROCFILE_BYTES + 1)
    if len(data) > MAX_PROCFILE_BYTES:
        raise BuildError("Procfile is larger than 64 KiB")
    return parse_procfile(data.decode("utf-8", errors="replace"))


def builtin_name(url: str) -> str | None:
    """A BUILDPACK_URL naming a built-in: `python`, or `https://github.com/heroku/heroku-buildpack-python.git`."""
    last = url.strip().rstrip("/").rsplit("/", 1)[-1].split("#", 1)[0]
    last = last.removesuffix(".git").removeprefix("heroku-buildpack-").removeprefix("buildpack-").lower()
    aliases = {"node": "nodejs", "staticfile": "static", "static-site": "static"}
    name = aliases.get(last, last)
    return name if name in BUILTIN_ORDER else None


def run_detect(path: Path, app: Path) -> str | None:
    """The framework name bin/detect prints, or None when it declines."""
    detect = path / "bin" / "detect"
    proc = subprocess.run([str(detect), str(app)], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else path.name.capitalize()


def requested_buildpacks(app: Path, env: dict[str, str]) -> list[str] | None:
    """Buildpacks named by BUILDPACK_URL or `.buildpacks`, or None to detect."""
    urls: list[str] = []
    if env.get("BUILDPACK_URL", "").strip():
        urls = [env["BUILDPACK_URL"]]
    elif (app / ".buildpacks").is_file() and not (app / ".buildpacks").is_symlink():
        lines = (app / ".buildpacks").read_text(errors="replace").splitlines()
        urls = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not urls:
        return None
    names = []
    for url in urls:
        name = builtin_name(url)
        if name is None:
            builtins = ", ".join(BUILTIN_ORDER)
            raise BuildError(f"buildpack {url!r} is not a built-in buildpack ({builtins}); only built-ins run here")
        names.append(name)
    return names


def select_buildpacks(app: Path, buildpacks_dir: Path, env: dict[str, str]) -> list[Buildpack]:
    requested = requested_buildpacks(app, env)
    if requested is not None:
        return [Buildpack(n, buildpacks_dir / n, run_detect(buildpacks_dir / n, app) or _title(n)) for n in requested]
    for name in BUILTIN_ORDER:
        display = run_detect(buildpacks_dir / name, app)
        if display is not None:
            return [Buildpack(name, buildpacks_dir / name, display)]
    raise BuildError("Unable to select a buildpack")


def _title(name: str) -> str:
    return {"nodejs": "Node.js"}.get(name, name.capitalize())


def write_env_dir(env_dir: Path, env: dict[str, str]) -> None:
    """The release's config vars, one file per variable (the buildpack API's ENV_DIR)."""
    env_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in env.get("ENCOM_ENV_KEYS", "").split(",") if k and k not in BUILD_VARS]
    for key in keys:
        if key in env and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            (env_dir / key).write_text(env[key])


def stream(args: list[str], env: dict[str, str], cwd: Path) -> int:
    """Run a command, printing its merged output line by line in Heroku's indented style."""
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    for raw in proc.stdout:
        say(indent(raw.decode("utf-8", errors="replace").rstrip("\r\n")))
    return proc.wait()


def compile_app(pack: Buildpack, layout: Layout, env: dict[str, str]) -> None:
    args = [str(pack.path / "bin" / "compile"), str(layout.app), str(layout.cache), str(layout.env)]
    if stream(args, env, layout.app) != 0:
        raise BuildError(f"Push rejected, failed to compile {pack.display} app")


def default_process_types(pack: Buildpack, app: Path, env: dict[str, str]) -> dict[str, str]:
    release = pack.path / "bin" / "release"
    if not release.exists():
        return {}
    proc = subprocess.run([str(release), str(app)], capture_output=True, text=True, env=env, timeout=60, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{pack.display} buildpack: bin/release failed: {proc.stderr.strip()}")
    return parse_release(proc.stdout)


def parse_release(text: str) -> dict[str, str]:
    """bin/release output: JSON, or the YAML subset Heroku buildpacks print (`default_process_types:` block)."""
    try:
        data = json.loads(text)
    except ValueError:
        return _release_yaml_types(text)
    types = data.get("default_process_types") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in types.items()} if isinstance(types, dict) else {}


def _release_yaml_types(text: str) -> dict[str, str]:
    types: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if not line.strip() or line.strip() == "---":
            continue
        if not line[0].isspace():
            inside = line.split(":", 1)[0].strip() == "default_process_types"
            continue
        if inside:
            key, _, value = line.strip().partition(":")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            if key and value:
                types[key.strip()] = value
    return types


def process_types(packs: Iterable[Buildpack], layout: Layout, env: dict[str, str]) -> dict[str, str]:
    processes: dict[str, str] = {}
    for pack in packs:
        processes.update(default_process_types(pack, layout.app, env))
    procfile = read_procfile(layout.app)
    if procfile is None:
        if processes:
            say(f"{INDENT}Default types for buildpack -> {', '.join(processes)}")
        else:
            say(f"{INDENT}Procfile declares types -> (none)")
        return processes
    say(f"{INDENT}Procfile declares types -> {', '.join(procfile) or '(none)'}")
    return {**processes, **procfile}


def apply_slugignore(app: Path) -> None:
    """Delete what `.slugignore` lists (glob patterns relative to the app) before compiling."""
    ignore = app / ".slugignore"
    if not ignore.is_file() or ignore.is_symlink():
        return
    root = app.resolve()
    for raw in ignore.read_text(errors="replace").splitlines():
        pattern = raw.strip().lstrip("/")
        if not pattern or pattern.startswith("#") or ".." in PurePosixPath(pattern).parts:
            continue
        for path in list(root.glob(pattern)):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)


# ---------------------------------------------------------------- slug and cache


def tar_into(directory: Path, out: Path, compress: bool) -> str | None:
    """`tar` of the directory's contents (members relative to it) into a fresh output file; the error, if any."""
    cmd = ["tar", "-C", str(directory), "--owner=0", "--group=0", *(["-I", "gzip -1"] if compress else []), "-cf"]
    fd = output_file(out)
    try:
        proc = subprocess.run([*cmd, "-", "."], stdout=fd, stderr=subprocess.PIPE, text=True, check=False)
    finally:
        os.close(fd)
    if proc.returncode == 0:
        return None
    return proc.stderr.strip() or f"tar exited with status {proc.returncode}"


def make_slug(app: Path, out: Path) -> int:
    """tar.gz of the app directory's contents (members relative to /app); returns the size in bytes."""
    error = tar_into(app, out, compress=True)
    if error is not None:
        raise BuildError(f"compressing the slug failed: {error}")
    return out.stat().st_size


def tree_fingerprint(root: Path) -> list[tuple[str, int, int]]:
    """Cheap change detection for the cache: every entry's path, size and mtime."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            entries.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
    entries.sort()
    return entries


def restore_cache(url: str, layout: Layout) -> bool:
    layout.cache.mkdir(parents=True, exist_ok=True)
    tar_path = layout.work / "cache.tar"
    if not url or not download(url, tar_path):
        return False
    try:
        safe_extract(tar_path, layout.cache)
    except BuildError:  # a broken cache only costs time
        shutil.rmtree(layout.cache, ignore_errors=True)
        layout.cache.mkdir(parents=True, exist_ok=True)
        return False
    finally:
        tar_path.unlink(missing_ok=True)
    return True


def save_cache(layout: Layout) -> None:
    """The cache as an output (the host stores it for the next build)."""
    out = layout.out / "cache.tar"
    error = tar_into(layout.cache, out, compress=False)
    if error is not None:
        out.unlink(missing_ok=True)
        say(f"{INDENT}not saving the build cache: {error}")


def write_result(result: Result, layout: Layout) -> None:
    fd = output_file(layout.out / "result.json")
    with os.fdopen(fd, "wb") as out:
        out.write(result.to_json())


# ---------------------------------------------------------------- the build


def build_env(env: dict[str, str]) -> dict[str, str]:
    """The environment buildpacks run with: no build URLs (they grant blobstore access)."""
    clean = {k: v for k, v in env.items() if k not in BUILD_VARS}
    clean.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    clean.setdefault("HOME", "/app")
    clean.setdefault("LANG", "C.UTF-8")
    clean.setdefault("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    clean.setdefault("STACK", "encom-host")
    return clean


def fetch_source(url: str, layout: Layout) -> None:
    tar_path = layout.work / "source.tar"
    if not download(url, tar_path):
        raise BuildError("the pushed source is missing from the blobstore")
    try:
        safe_extract(tar_path, layout.app)
    finally:
        tar_path.unlink(missing_ok=True)


def compile_and_release(layout: Layout, env: dict[str, str]) -> Result:
    """Detect, compile and read process types: everything that needs no network but PyPI/npm."""
    layout.env.mkdir(parents=True, exist_ok=True)
    write_env_dir(layout.env, env)
    apply_slugignore(layout.app)
    packs = select_buildpacks(layout.app, layout.buildpacks, env)
    say(f"-----> {' + '.join(p.display for p in packs)} app detected")
    child_env = build_env(env)
    for pack in packs:
        compile_app(pack, layout, child_env)
    processes = process_types(packs, layout, child_env)
    return Result(processes=processes, buildpack=",".join(p.name for p in packs))


def human_size(size: int) -> str:
    return f"{size / (1 << 20):.1f}MB" if size >= 100 << 10 else f"{max(1, size >> 10)}KB"


def build(layout: Layout, env: dict[str, str]) -> Result:
    layout.work.mkdir(parents=True, exist_ok=True)
    layout.cache.mkdir(parents=True, exist_ok=True)
    fetch_source(env["SOURCE_URL"], layout)
    restore_cache(env.get("CACHE_URL", ""), layout)
    before = tree_fingerprint(layout.cache)
    result = compile_and_release(layout, env)
    result.slug_size = make_slug(layout.app, layout.out / "slug.tgz")
    say(f"-----> Compressing... done, {human_size(result.slug_size)}")
    if tree_fingerprint(layout.cache) != before:
        save_cache(layout)
    if env.get("SOURCE_VERSION"):
        result.extra["commit"] = env["SOURCE_VERSION"]
    write_result(result, layout)
    return result


def main() -> int:
    env = dict(os.environ)
    if not env.get("SOURCE_URL"):
        say(" !     slugbuilder: missing environment: SOURCE_URL")
        return 2
    try:
        build(Layout(), env)
    except BuildError as exc:
        say(f" !     {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
