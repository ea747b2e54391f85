"""Slugs are unpacked by the real unpacker: a child chrooted into the job's /app, running as a non-root uid.

Every crafted archive here is unpacked through `slugs.extract` exactly as the host does it (root is required, as
for every container test). Each test checks that nothing appeared or changed outside the destination and that
nothing setuid, setgid, device or FIFO exists inside it.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from encom.host.slugs import blob_path_of, extract
from encom.host.unpack import UnpackError

UID = GID = 100_977  # an app uid nobody else uses
PATH_MAX = 4096


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", mode: int = 0o644, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.mtime = 1_700_000_000
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, io.BytesIO(data)
    return info, None


def slug(path: Path, members: list[tuple], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, data)
    return path


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root except `skip`'s subtree: its mode, owner and size."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            seen[os.path.join(dirpath, name)] = (st.st_mode, st.st_uid, st.st_size)
    return seen


def assert_harmless(dest: Path) -> None:
    """Nothing setuid, setgid, sticky, a device or a FIFO; everything owned by the app's uid."""
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), name
            assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode), name
            assert (st.st_uid, st.st_gid) == (UID, GID), name


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A job directory with a secret beside its /app, as the host has (root's, 0700)."""
    job_dir = tmp_path / "job"
    job_dir.mkdir(mode=0o700)
    (job_dir / "secret").write_text("root's")
    return job_dir


def unpack_hostile(tmp_path: Path, job: Path, members: list[tuple]) -> tuple[Path, Exception | None]:
    """Unpack; the error if refused. Asserts nothing outside /app changed and nothing dangerous is inside."""
    archive = slug(tmp_path / "s.tgz", members)
    before = snapshot(tmp_path, job / "app")
    error: Exception | None = None
    try:
        extract(archive, job / "app", UID, GID)
    except UnpackError as exc:
        error = exc
    after = snapshot(tmp_path, job / "app")
    after.pop(str(job / "app"), None)
    assert after == before
    assert_harmless(job / "app")
    return job / "app", error


def test_a_normal_slug_is_unpacked_as_the_apps_uid(tmp_path: Path, job: Path) -> None:
    members = [
        member(".", tarfile.DIRTYPE, mode=0o755),
        member("./app.py", data=b"print(1)\n"),
        member("./bin/run", data=b"#!/bin/sh\n", mode=0o755),
        member("./.venv/bin/python", tarfile.SYMTYPE, link="/usr/bin/python3"),
        member("./current", tarfile.SYMTYPE, link="bin"),
        member("./bin/again", tarfile.LNKTYPE, link="./bin/run"),
    ]
    dest, error = unpack_hostile(tmp_path, job, members)
    assert error is None
    assert (dest / "app.py").read_text() == "print(1)\n"
    assert (dest / "bin" / "run").stat().st_mode & 0o777 == 0o755
    assert (dest / "bin" / "run").stat().st_mtime == 1_700_000_000
    assert (dest / "bin" / "again").stat().st_ino == (dest / "bin" / "run").stat().st_ino
    assert os.readlink(dest / ".venv" / "bin" / "python") == "/usr/bin/python3"  # resolved in the job, not here
    assert (dest / "current" / "run").read_text() == "#!/bin/sh\n"


def test_a_fresh_dir_replaces_an_old_one(tmp_path: Path, job: Path) -> None:
    (job / "app").mkdir()
    (job / "app" / "stale").write_text("old")
    extract(slug(tmp_path / "s.tgz", [member("./app.py")]), job / "app", UID, GID)
    assert sorted(p.name for p in (job / "app").iterdir()) == ["app.py"]


@pytest.mark.parametrize("name", ["/etc/encom-evil", "../escaped", "./a/../../escaped", "a/../../../escaped"], ids=str)
def test_absolute_and_dotdot_names_are_refused(tmp_path: Path, job: Path, name: str) -> None:
    _, error = unpack_hostile(tmp_path, job, [member("./ok"), member(name)])
    assert error is not None and ("absolute" in str(error) or "'..'" in str(error))
    assert not Path("/etc/encom-evil").exists()


def test_an_absolute_host_path_is_refused(tmp_path: Path, job: Path) -> None:
    _, error = unpack_hostile(tmp_path, job, [member(str(job / "escaped"))])
    assert error is not None and "absolute" in str(error)


@pytest.mark.parametrize("target", ["..", "../..", "/", "JOB"], ids=["up", "up2", "root", "job-dir"])
def test_a_file_through_a_symlink_out_is_refused(tmp_path: Path, job: Path, target: str) -> None:
    target = str(job) if target == "JOB" else target
    members = [member("./out", tarfile.SYMTYPE, link=target), member("./out/escaped", data=b"pwned")]
    _, error = unpack_hostile(tmp_path, job, members)
    assert error is not None and "below a link" in str(error)
    assert not (job / "escaped").exists() and not Path("/escaped").exists()


def test_a_symlinked_directory_cannot_be_written_through_later(tmp_path: Path, job: Path) -> None:
    """The directory exists first, then is replaced by a link to the outside, then written through."""
    members = [
        member("./d", tarfile.DIRTYPE, mode=0o755),
        member("./d", tarfile.SYMTYPE, link=str(job)),
        member("./d/escaped"),
    ]
    _, error = unpack_hostile(tmp_path, job, members)
    assert error is not None
    assert not (job / "escaped").exists()


@pytest.mark.parametrize("target", ["../secret", "JOB/secret", "/etc/passwd", "./missing"])
def test_hard_links_to_files_outside_are_refused(tmp_path: Path, job: Path, target: str) -> None:
    target = target.replace("JOB", str(job))
    _, error = unpack_hostile(tmp_path, job, [member("./h", tarfile.LNKTYPE, link=target)])
    assert error is not None
    assert (job / "secret").stat().st_nlink == 1


def test_a_hard_link_through_a_symlink_is_refused(tmp_path: Path, job: Path) -> None:
    members = [member("./l", tarfile.SYMTYPE, link=str(job)), member("./h", tarfile.LNKTYPE, link="./l/secret")]
    _, error = unpack_hostile(tmp_path, job, members)
    assert error is not None and "below a link" in str(error)
    assert (job / "secret").stat().st_nlink == 1


def test_devices_and_fifos_are_skipped(tmp_path: Path, job: Path) -> None:
    null = member("./null", tarfile.CHRTYPE, mode=0o666)
    null[0].devmajor, null[0].devminor = 1, 3
    disk = member("./sda", tarfile.BLKTYPE, mode=0o666)
    disk[0].devmajor, disk[0].devminor = 8, 0
    members = [null, disk, member("./fifo", tarfile.FIFOTYPE), member("./kept")]
    dest, error = unpack_hostile(tmp_path, job, members)
    assert error is None
    assert sorted(p.name for p in dest.iterdir()) == ["kept"]


def test_setuid_setgid_and_sticky_bits_are_dropped(tmp_path: Path, job: Path) -> None:
    members = [
        member("./suid", mode=0o4755),
        member("./sgid", mode=0o2755),
        member("./sticky", tarfile.DIRTYPE, mode=0o3777),
        member("./world", mode=0o666),
    ]
    dest, error = unpack_hostile(tmp_path, job, members)
    assert error is None
    assert (dest / "suid").stat().st_mode & 0o7777 == 0o755
    assert (dest / "sgid").stat().st_mode & 0o7777 == 0o755
    assert (dest / "sticky").stat().st_mode & 0o7777 == 0o755
    assert (dest / "world").stat().st_mode & 0o7777 == 0o644


def test_a_symlink_chain_longer_than_path_max_does_not_escape(tmp_path: Path, job: Path) -> None:
    """CVE-2025-4517's shape: nested long directory names reached through one-letter links, so that the
    resolved path outgrows PATH_MAX and os.path.realpath stops checking, then a link climbing back out and a file
    written through it."""
    long = "d" * 247
    steps = "abcdefghijklmnop"
    members = []
    path = ""
    for step in steps:
        members.append(member(os.path.join(path, long), tarfile.DIRTYPE, mode=0o755))
        members.append(member(os.path.join(path, step), tarfile.SYMTYPE, link=long))
        path = os.path.join(path, long)
    assert len(os.path.join(path, "l" * 254)) > PATH_MAX  # what the link below resolves through
    climb = os.path.join(*steps, "l" * 254)
    members.append(member(climb, tarfile.SYMTYPE, link=os.path.join(*[".."] * len(steps))))
    members.append(member("escape", tarfile.SYMTYPE, link=climb + "/../../../.."))
    members.append(member("escape/escaped", data=b"pwned"))
    members.append(member("flag", tarfile.LNKTYPE, link="escape/secret"))
    _, error = unpack_hostile(tmp_path, job, members)
    assert error is not None and "below a link" in str(error)
    assert not (tmp_path / "escaped").exists() and not (job / "escaped").exists()


def test_a_slug_larger_than_the_limit_is_refused(tmp_path: Path, job: Path) -> None:
    archive = slug(tmp_path / "s.tgz", [member("./a", data=b"a" * 4096), member("./b", data=b"b" * 4096)])
    with pytest.raises(UnpackError, match="more than 6000 bytes"):
        extract(archive, job / "app", UID, GID, max_bytes=6000)


def test_garbage_is_refused_with_a_reason(tmp_path: Path, job: Path) -> None:
    (tmp_path / "s.tgz").write_bytes(b"\x1f\x8bnot really gzip" * 100)
    with pytest.raises(UnpackError, match="slug refused"):
        extract(tmp_path / "s.tgz", job / "app", UID, GID)


def test_plain_tar_works_too(tmp_path: Path, job: Path) -> None:
    extract(slug(tmp_path / "s.tar", [member("./x", data=b"plain")], mode="w"), job / "app", UID, GID)
    assert (job / "app" / "x").read_bytes() == b"plain"


def test_never_as_root(tmp_path: Path, job: Path) -> None:
    with pytest.raises(UnpackError, match="never unpacked as root"):
        extract(slug(tmp_path / "s.tgz", [member("./x")]), job / "app", 0, 0)


def test_artifact_urls_map_to_blob_paths() -> None:
    assert blob_path_of("/slugs/a/b.tgz") == "slugs/a/b.tgz"
    assert blob_path_of("http://127.0.0.1:1112/blobs/slugs/a/b.tgz?exp=1&sig=x") == "slugs/a/b.tgz"
