"""The host role with hostile archives and build outputs: real runc containers, the real blobstore role."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from encom.api.errors import ApiError
from encom.api.types import HostJob, LogLine
from encom.host import disk
from encom.host.outputs import output_dir
from tests.integration.test_host import Cluster, spec
from tests.integration.test_host import cluster as cluster  # the fixture

pytestmark = [
    pytest.mark.integration,
]


def crafted_slug(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o755, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


async def run_to_end(c: Cluster, **changes: Any) -> tuple[HostJob, list[LogLine]]:
    job = await c.host.add_job(spec(**changes))
    ended = await c.wait_job(job.id, "down", "crashed", "failed", seconds=60)
    lines = [line async for line in c.host.job_log(job.id, lines=1000)]
    return ended, lines


def setuid_files(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(st.st_mode):
                found.append(os.path.join(dirpath, name))
    return found


async def test_a_slug_writing_through_a_link_out_never_starts(cluster: Cluster, tmp_path: Path) -> None:
    target = tmp_path / "outside"
    target.mkdir()
    path = f"slugs/app-1/{uuid.uuid4().hex}.tgz"
    members = [
        (entry("./out", tarfile.SYMTYPE, link=str(target)), None),
        (entry("./out/pwned", mode=0o4755), b"#!/bin/sh\nid\n"),
    ]
    await cluster.blobstore.put(path, crafted_slug(members))
    ended, _ = await run_to_end(cluster, artifact_url=f"/{path}", cmd="true")
    assert ended.state == "failed" and ended.error is not None, ended
    assert "slug refused" in ended.error and "below a link" in ended.error, ended.error
    assert list(target.iterdir()) == []
    assert setuid_files(cluster.settings.data_dir) == []


async def test_a_slug_with_setuid_files_and_fifos_runs_without_them(cluster: Cluster) -> None:
    path = f"slugs/app-1/{uuid.uuid4().hex}.tgz"
    members = [
        (entry("./suid", mode=0o6755), b"#!/bin/sh\necho hi\n"),
        (entry("./fifo", tarfile.FIFOTYPE), None),
        (entry("./etc", tarfile.SYMTYPE, link="/etc"), None),
    ]
    await cluster.blobstore.put(path, crafted_slug(members))
    script = 'stat -c "%a %U" /app/suid; ls /app; readlink /app/etc'
    ended, lines = await run_to_end(cluster, artifact_url=f"/{path}", cmd=script)
    assert ended.state == "down", (ended, lines)
    msgs = [line.msg for line in lines if line.source == "app"]
    assert msgs[0].startswith("755 ") and msgs[1:] == ["etc", "suid", "/etc"], msgs


def build_outputs(build_id: str) -> dict[str, str]:
    return {
        "slug": f"slugs/app-b/{build_id}.tgz",
        "cache": "caches/app-b.tar",
        "result": f"builds/app-b/{build_id}.json",
    }


async def run_build(cluster: Cluster, script: str) -> tuple[str, HostJob, list[LogLine]]:
    """A build job of app-b running `script` (as build code would), declaring every output: its id, end, log."""
    build_id = uuid.uuid4().hex
    spec = {"id": build_id, "app_id": "app-b", "args": ["/bin/bash", "-c", script], "builder": True}
    ended, lines = await run_to_end(cluster, **spec, outputs=build_outputs(build_id))
    return build_id, ended, lines


async def test_the_host_uploads_a_builds_outputs_after_it_ends(cluster: Cluster) -> None:
    script = (
        'test -z "$SLUG_URL$RESULT_URL$CACHE_PUT_URL" && echo "no-put-url=ok"; '
        "printf slug > /encom/out/slug.tgz; printf '{\"processes\": {}}' > /encom/out/result.json"
    )
    build_id, ended, lines = await run_build(cluster, script)
    assert ended.state == "down", (ended, lines)
    assert [line.msg for line in lines if line.source == "app"] == ["no-put-url=ok"]
    assert await cluster.blobstore.get(f"slugs/app-b/{build_id}.tgz") == b"slug"
    assert await cluster.blobstore.get(f"builds/app-b/{build_id}.json") == b'{"processes": {}}'
    assert not await cluster.blobstore.exists("caches/app-b.tar")  # not written: not uploaded
    job_dir = cluster.settings.data_dir / "host" / "jobs" / build_id
    assert not output_dir(job_dir).exists() and not disk.image_of(job_dir).exists()


@pytest.mark.parametrize(
    "script, reason",
    [
        ("ln -s /etc/shadow /encom/out/slug.tgz", "is a symbolic link"),
        ("mkfifo /encom/out/slug.tgz", "not a regular file"),
        ("mkdir /encom/out/slug.tgz", "not a regular file"),
        ("echo x > /encom/out/x; ln /encom/out/x /encom/out/slug.tgz", "not the build's own file"),
        ("head -c 70000 /dev/zero > /encom/out/result.json", "larger than"),
    ],
    ids=["symlink", "fifo", "directory", "hardlink", "too-large"],
)
async def test_hostile_outputs_are_refused(cluster: Cluster, script: str, reason: str) -> None:
    build_id, ended, lines = await run_build(cluster, script)
    assert ended.state == "crashed" and ended.exit_status == 0, (ended, lines)
    assert ended.error is not None and reason in ended.error, ended.error
    assert not await cluster.blobstore.exists(f"slugs/app-b/{build_id}.tgz")


async def test_a_failed_build_uploads_nothing(cluster: Cluster) -> None:
    script = "printf slug > /encom/out/slug.tgz; exit 1"
    build_id, ended, _ = await run_build(cluster, script)
    assert ended.state == "crashed" and ended.exit_status == 1
    assert not await cluster.blobstore.exists(f"slugs/app-b/{build_id}.tgz")


@pytest.mark.parametrize(
    "outputs",
    [{"slug": "slugs/other-app/x.tgz"}, {"result": "builds/app-b/../x.json"}, {"secrets": "caches/app-b.tar"}],
    ids=["another-apps-path", "dotdot", "unknown-name"],
)
async def test_outputs_only_go_to_the_apps_own_paths(cluster: Cluster, outputs: dict[str, str]) -> None:
    body = spec(app_id="app-b", args=["true"], builder=True).model_dump() | {"outputs": outputs}
    with pytest.raises(ApiError) as exc:
        await cluster.host.request("PUT", f"/host/jobs/{body['id']}", json=body)
    assert exc.value.status == 400 and "output" in exc.value.message
