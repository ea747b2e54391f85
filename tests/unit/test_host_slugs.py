"""Slug extraction refuses hostile tarballs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from encom.host.slugs import blob_path_of, extract


def tarball(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            data = b"x" * info.size
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def file(name: str, size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def test_extracts_into_a_fresh_dir(tmp_path: Path) -> None:
    slug = tarball(tmp_path / "s.tgz", [file("./app.py", 3), file("./.profile.d/a.sh")])
    dest = tmp_path / "app"
    dest.mkdir()
    (dest / "stale").write_text("old")
    extract(slug, dest)
    assert sorted(p.name for p in dest.iterdir()) == [".profile.d", "app.py"]


@pytest.mark.parametrize("member", [file("../escape"), link("./l", "/etc/passwd"), link("./l", "../../x")])
def test_refuses_paths_out_of_the_tree(tmp_path: Path, member: tarfile.TarInfo) -> None:
    slug = tarball(tmp_path / "s.tgz", [member])
    with pytest.raises(tarfile.FilterError):
        extract(slug, tmp_path / "app")
    assert not (tmp_path / "escape").exists()


def test_absolute_paths_land_inside(tmp_path: Path) -> None:
    extract(tarball(tmp_path / "s.tgz", [file("/etc/evil")]), tmp_path / "app")
    assert (tmp_path / "app/etc/evil").is_file()


def test_artifact_urls_map_to_blob_paths() -> None:
    assert blob_path_of("/slugs/a/b.tgz") == "slugs/a/b.tgz"
    assert blob_path_of("http://127.0.0.1:1112/blobs/slugs/a/b.tgz?exp=1&sig=x") == "slugs/a/b.tgz"
