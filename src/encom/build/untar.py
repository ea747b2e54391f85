"""Extract a hostile tar into a directory without ever following a link: stdlib only.

Used by the slugbuilder inside build containers (Debian's python3 3.11.2, which has no tarfile extraction filters)
and by the host's unpacker (`encom.host.unpack`), which runs it chrooted into the destination as the app's uid.
It does not rely on tarfile's extraction code or filters: tarfile only parses, and every file is made here relative
to directory file descriptors opened with O_NOFOLLOW, so no member can be written through a symlink whatever the
Python version (CVE-2025-4517 and its kind).

Rules:
- names: absolute paths, `..` and members below a symlink are refused (ArchiveError: the whole archive fails);
- symlinks are created as they are and never followed here: they resolve only inside the namespace of the job that
  later reads them;
- hard links must name a regular file already extracted from the same archive;
- devices and FIFOs are skipped; setuid, setgid and sticky bits are dropped; owners are whoever extracts.
"""

from __future__ import annotations

import os
import stat
import tarfile

TYPE_CHECKING = False  # what typing.TYPE_CHECKING is, without importing typing (mypy takes the name as true)
if TYPE_CHECKING:
    from typing import BinaryIO

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_DIRS = 64  # directory fds kept open between members (archives list a directory's files together)
CHUNK = 1 << 20


class ArchiveError(Exception):
    """The archive was refused (it tries to leave its directory, or is malformed) or could not be unpacked."""


class Report:
    def __init__(self) -> None:
        self.files = self.dirs = self.links = self.bytes = 0
        self.skipped: list[str] = []  # devices and FIFOs


def member_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name; "." (the archive's root) is ()."""
    if name.startswith("/"):
        raise ArchiveError(f"absolute path in archive: {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"'..' in archive path: {name!r}")
    return parts


def file_mode(mode: int, directory: bool) -> int:
    """Permission bits only (no setuid, setgid or sticky), no write for others, the owner always able to use it."""
    mode &= 0o755
    return mode | (0o700 if directory else 0o600)


class Extractor:
    def __init__(self, root_fd: int, max_bytes: int | None) -> None:
        self.root_fd = root_fd
        self.max_bytes = max_bytes
        self.report = Report()
        self.dirs: dict[tuple[str, ...], int] = {}  # in use order, most recent last

    def close(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    def directory(self, parts: tuple[str, ...], member: str) -> int:
        """An fd of the directory at `parts`, made (0700) where missing; a symlink or file on the way is refused."""
        if not parts:
            return self.root_fd
        fd = self.dirs.pop(parts, None)
        if fd is not None:
            self.dirs[parts] = fd
            return fd
        parent = self.directory(parts[:-1], member)
        name = parts[-1]
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            self.report.dirs += 1
        except FileExistsError:
            pass
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:  # ELOOP (a symlink) or ENOTDIR (a file)
            raise ArchiveError(f"archive member below a link or file: {member!r}") from exc
        self.dirs[parts] = fd
        if len(self.dirs) > OPEN_DIRS:  # the oldest is never the parent just used: that one is second newest
            os.close(self.dirs.pop(next(iter(self.dirs))))
        return fd

    def pinned_directory(self, parts: tuple[str, ...], member: str) -> int:
        """Like `directory`, as an fd of the caller's own (closing it is the caller's job): later lookups may close
        the cached one."""
        return os.dup(self.directory(parts, member))

    def replace(self, parent: int, name: str, member: str) -> None:
        """Clear the way for a non-directory member: an earlier file or link of that name goes, a directory stays."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise ArchiveError(f"archive member replaces a directory: {member!r}")
        os.unlink(name, dir_fd=parent)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = member_parts(member.name)
        if not parts:
            return  # "./": the destination itself, whose owner and mode the caller decides
        if member.isdir():
            fd = self.directory(parts, member.name)
            os.chmod(fd, file_mode(member.mode, directory=True))
            return
        if not (member.isreg() or member.issym() or member.islnk()):
            self.report.skipped.append(member.name)  # devices, FIFOs, anything tarfile does not know
            return
        parent = self.pinned_directory(parts[:-1], member.name)
        try:
            name = parts[-1]
            self.replace(parent, name, member.name)
            if member.issym():
                os.symlink(member.linkname, name, dir_fd=parent)
                self.report.links += 1
            elif member.islnk():
                self.hard_link(member, parent, name)
            else:
                self.write_file(tar, member, parent, name)
        finally:
            os.close(parent)

    def hard_link(self, member: tarfile.TarInfo, parent: int, name: str) -> None:
        target = member_parts(member.linkname)
        if not target:
            raise ArchiveError(f"hard link to the archive's root: {member.name!r}")
        target_parent = self.pinned_directory(target[:-1], member.name)
        try:
            try:
                st = os.stat(target[-1], dir_fd=target_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise ArchiveError(f"hard link to a missing file: {member.name!r} -> {member.linkname!r}") from None
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError(f"hard link to something not a file: {member.name!r} -> {member.linkname!r}")
            os.link(target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(target_parent)
        self.report.links += 1

    def write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str) -> None:
        if self.max_bytes is not None and self.report.bytes + member.size > self.max_bytes:
            limit = f"{self.max_bytes >> 20} MiB" if self.max_bytes >= 1 << 20 else f"{self.max_bytes} bytes"
            raise ArchiveError(f"archive unpacks to more than {limit} (the job's disk)")
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has contents
        fd = os.open(name, FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            remaining = member.size
            while remaining > 0:
                chunk = source.read(min(CHUNK, remaining))
                if not chunk:
                    raise ArchiveError(f"archive ends inside {member.name!r}")
                os.write(fd, chunk)
                remaining -= len(chunk)
            os.fchmod(fd, file_mode(member.mode, directory=False))
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.report.files += 1
        self.report.bytes += member.size


def extract(source: BinaryIO, root_fd: int, max_bytes: int | None = None) -> Report:
    """Unpack the tar (optionally compressed) read from `source` into the directory `root_fd`."""
    extractor = Extractor(root_fd, max_bytes)
    try:
        with tarfile.open(fileobj=source, mode="r|*") as tar:
            for member in tar:
                try:
                    extractor.add(tar, member)
                except OSError as exc:  # a name too long, a full disk...
                    raise ArchiveError(f"cannot unpack {member.name!r}: {exc.strerror or exc}") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"invalid archive: {exc}") from exc
    finally:
        extractor.close()
    return extractor.report


def extract_into(path: str, dest: str, max_bytes: int | None = None) -> Report:
    """Unpack the tar file at `path` into the directory `dest` (made if missing)."""
    os.makedirs(dest, exist_ok=True)
    root_fd = os.open(dest, DIR_FLAGS)
    try:
        with open(path, "rb") as source:
            return extract(source, root_fd, max_bytes)
    finally:
        os.close(root_fd)
