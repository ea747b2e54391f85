#!/usr/bin/python3
"""The slugbuilder: runs INSIDE a build container with the host stack's /usr/bin/python3 (stdlib only).

Environment (set by gitreceive): SOURCE_URL (tar of the commit), SLUG_URL (PUT target of the slug .tgz),
CACHE_URL / CACHE_PUT_URL (the app's build cache, GET may 404), RESULT_URL (PUT target of the result JSON),
SOURCE_VERSION (commit sha), ENCOM_ENV_KEYS (comma-separated names of the release env vars, which are also in
the environment), optionally BUILDPACK_URL.

Steps: download and safely extract the source into /app, restore the cache into /tmp/cache, pick the buildpacks,
run `bin/compile /app /tmp/cache /tmp/env`, read `bin/release`, tar.gz /app to SLUG_URL, save the cache, PUT
`{"processes": {type: command}, "buildpack": name}` to RESULT_URL. Exit 1 with a message on any failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

BUILDPACKS_DIR = Path(__file__).resolve().parent / "buildpacks"
BUILTIN_ORDER = ("python", "nodejs", "static", "procfile")
INDENT = " " * 7
HEADER_PREFIXES = ("----->", "=====>", " !")
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
MAX_PROCFILE_BYTES = 64 << 10
HTTP_TIMEOUT = 300.0
# Variables that describe the build itself; never written to the env dir.
BUILD_VARS = ("SOURCE_URL", "SLUG_URL", "CACHE_URL", "CACHE_PUT_URL", "RESULT_URL", "ENCOM_ENV_KEYS")


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


def upload(url: str, data: Path | bytes, content_type: str = "application/octet-stream") -> None:
    try:
        if isinstance(data, bytes):
            _put(url, data, len(data), content_type)
        else:
            with open(data, "rb") as body:
                _put(url, body, data.stat().st_size, content_type)
    except urllib.error.HTTPError as exc:
        raise BuildError(f"upload failed: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise BuildError(f"upload failed: {exc}") from exc


def _put(url: str, body: object, size: int, content_type: str) -> None:
    headers = {"Content-Type": content_type, "Content-Length": str(size)}
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)  # type: ignore[arg-type]
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        response.read()


# ---------------------------------------------------------------- safe extraction


class UnsafeMember(BuildError):
    pass


def _inside(dest: Path, relative: PurePosixPath) -> bool:
    target = os.path.normpath(os.path.join(dest, *relative.parts)) if relative.parts else str(dest)
    return target == str(dest) or target.startswith(str(dest) + os.sep)


def check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """Refuse what the "data" extraction filter refuses: absolute or escaping paths and links, devices, FIFOs."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not _inside(dest, name):
        raise UnsafeMember(f"unsafe path in archive: {member.name!r}")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeMember(f"special file in archive: {member.name!r}")
    if member.issym():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or not _inside(dest, name.parent / link):
            raise UnsafeMember(f"symlink leaving the directory: {member.name!r} -> {member.linkname!r}")
    if member.islnk():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or ".." in link.parts or not _inside(dest, link):
            raise UnsafeMember(f"hard link leaving the directory: {member.name!r} -> {member.linkname!r}")


def _sanitized(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner, no setuid/setgid/sticky bits, no group/other write (what the "data" filter does)."""
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    if member.isfile() or member.isdir():
        member.mode &= 0o755
        if member.isdir():
            member.mode |= 0o700
        else:
            member.mode |= 0o600
    return member


def safe_members(archive: tarfile.TarFile, dest: Path, skip_unsafe: bool) -> Iterator[tarfile.TarInfo]:
    for member in archive:
        try:
            check_member(member, dest)
        except UnsafeMember:
            if not skip_unsafe:
                raise
            continue
        yield _sanitized(member)


def safe_extract(tar_path: Path, dest: Path, skip_unsafe: bool = False) -> None:
    """Extract a hostile tarball into dest: unsafe members fail the build (or are skipped, for caches)."""
    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            for member in safe_members(archive, dest, skip_unsafe):
                name = PurePosixPath(os.path.normpath(member.name))
                if name == PurePosixPath("."):
                    continue  # the archive's root ("./", as `tar -C dir .` writes it) is dest itself
                _prepare_target(dest, name)
                _extract_one(archive, member, dest)
    except (tarfile.TarError, EOFError) as exc:
        raise BuildError(f"invalid archive: {exc}") from exc


def _prepare_target(dest: Path, name: PurePosixPath) -> None:
    """Symlinks extracted earlier must not redirect this member: its parent must really be inside dest, and an
    existing symlink at its own path is replaced rather than written through."""
    target = dest.joinpath(*name.parts) if name.parts else dest
    parent = os.path.realpath(target.parent)
    if parent != str(dest) and not parent.startswith(str(dest) + os.sep):
        raise UnsafeMember(f"archive member below a symlink: {str(name)!r}")
    if target != dest and target.is_symlink():
        target.unlink()


def _extract_one(archive: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        archive.extract(member, dest, set_attrs=True, filter="data")
    else:  # Debian 12's Python 3.11.2 predates extraction filters; check_member did the same checks.
        archive.extract(member, dest, set_attrs=True)


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


def make_slug(app: Path, out: Path) -> int:
    """tar.gz of the app directory's contents (members relative to /app); returns the size in bytes."""
    cmd = ["tar", "-C", str(app), "--owner=0", "--group=0", "-I", "gzip -1", "-cf", str(out), "."]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"compressing the slug failed: {proc.stderr.strip()}")
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
        safe_extract(tar_path, layout.cache, skip_unsafe=True)
    except BuildError:  # a broken cache only costs time
        shutil.rmtree(layout.cache, ignore_errors=True)
        layout.cache.mkdir(parents=True, exist_ok=True)
        return False
    finally:
        tar_path.unlink(missing_ok=True)
    return True


def save_cache(url: str, layout: Layout) -> None:
    tar_path = layout.work / "cache.tar"
    cmd = ["tar", "-C", str(layout.cache), "--owner=0", "--group=0", "-cf", str(tar_path), "."]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        say(f"{INDENT}not saving the build cache: {proc.stderr.strip()}")
        return
    try:
        upload(url, tar_path)
    except BuildError as exc:
        say(f"{INDENT}not saving the build cache: {exc}")
    finally:
        tar_path.unlink(missing_ok=True)


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
    slug = layout.work / "slug.tgz"
    result.slug_size = make_slug(layout.app, slug)
    upload(env["SLUG_URL"], slug)
    say(f"-----> Compressing... done, {human_size(result.slug_size)}")
    if env.get("CACHE_PUT_URL") and tree_fingerprint(layout.cache) != before:
        save_cache(env["CACHE_PUT_URL"], layout)
    if env.get("SOURCE_VERSION"):
        result.extra["commit"] = env["SOURCE_VERSION"]
    upload(env["RESULT_URL"], result.to_json(), "application/json")
    return result


def main() -> int:
    env = dict(os.environ)
    missing = [name for name in ("SOURCE_URL", "SLUG_URL", "RESULT_URL") if not env.get(name)]
    if missing:
        say(f" !     slugbuilder: missing environment: {', '.join(missing)}")
        return 2
    try:
        build(Layout(), env)
    except BuildError as exc:
        say(f" !     {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
