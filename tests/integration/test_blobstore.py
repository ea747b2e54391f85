"""The blobstore as encomd runs it (the real role on a loopback port), through BlobstoreClient and signed URLs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from encom.api.errors import ApiError
from encom.api.settings import Ports, Settings
from encom.blobstore.client import BlobstoreClient, blob_path
from encom.blobstore.service import run
from tests.integration.roles import WAIT, free_port, running_role, within

PORTS = (21000, 21999)  # the range reserved for these tests


@dataclass
class Blobstore:
    settings: Settings
    client: BlobstoreClient
    anonymous: httpx.AsyncClient  # what a build job holding only signed URLs has

    @property
    def root(self) -> Path:
        return self.settings.dir("blobstore")


@pytest.fixture
async def blobstore(tmp_path: Path) -> AsyncIterator[Blobstore]:
    settings = Settings(data_dir=tmp_path / "data", ports=Ports(blobstore=free_port(*PORTS)))
    async with (
        running_role(run, settings, "blobstore", WAIT, WAIT),
        BlobstoreClient(settings.blobstore_url, settings.internal_secret) as client,
        httpx.AsyncClient(timeout=WAIT) as anonymous,
    ):
        yield Blobstore(settings, client, anonymous)


async def test_put_get_head_delete(blobstore: Blobstore) -> None:
    client = blobstore.client
    body = os.urandom(300_000)
    response = await client.request("PUT", "/blobs/slugs/app/v1.tgz", content=body)
    assert response.status_code == 201
    assert response.json() == {
        "path": "slugs/app/v1.tgz",
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }

    assert await client.get("slugs/app/v1.tgz") == body
    assert await client.exists("slugs/app/v1.tgz")
    head = await client.request("HEAD", "/blobs/slugs/app/v1.tgz")
    assert head.headers["content-length"] == str(len(body))

    await client.put("slugs/app/v1.tgz", b"replaced")
    assert await client.get("slugs/app/v1.tgz") == b"replaced"

    assert await client.delete("slugs/app/v1.tgz")
    assert not await client.exists("slugs/app/v1.tgz")
    assert not await client.delete("slugs/app/v1.tgz")
    with pytest.raises(ApiError) as missing:
        await client.get("slugs/app/v1.tgz")
    assert missing.value.status == 404
    assert not (blobstore.root / "slugs").exists(), "empty directories are pruned after a delete"


async def test_streamed_upload_and_download(blobstore: Blobstore) -> None:
    chunks = [os.urandom(100_000) for _ in range(30)]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    await blobstore.client.put("caches/big", body())
    downloaded = b"".join([c async for c in blobstore.client.download("caches/big")])
    assert downloaded == b"".join(chunks)


async def test_a_directory_is_not_a_blob(blobstore: Blobstore) -> None:
    client = blobstore.client
    await client.put("dir/file", b"x")
    assert not await client.exists("dir")
    with pytest.raises(ApiError) as missing:
        await client.get("dir")
    assert missing.value.status == 404
    with pytest.raises(ApiError) as clash:
        await client.put("dir/file/below", b"y")
    assert clash.value.status == 409
    with pytest.raises(ApiError) as clash:
        await client.put("dir", b"y")
    assert clash.value.status == 409


async def test_signed_urls_grant_one_method_on_one_path(blobstore: Blobstore) -> None:
    client, anonymous = blobstore.client, blobstore.anonymous
    put_url = client.signed_url("builds/app.tgz", "PUT", ttl=60)
    uploaded = await anonymous.put(put_url, content=b"slug bytes")
    assert uploaded.status_code == 201, uploaded.text
    assert await client.get("builds/app.tgz") == b"slug bytes"

    get_url = client.signed_url("builds/app.tgz", ttl=60)
    fetched = await anonymous.get(get_url)
    assert (fetched.status_code, fetched.content) == (200, b"slug bytes")
    head = await anonymous.head(get_url)
    assert (head.status_code, head.headers["content-length"]) == (200, str(len(b"slug bytes")))

    assert (await anonymous.put(get_url, content=b"overwrite")).status_code == 401, "a GET signature cannot PUT"
    assert (await anonymous.delete(get_url)).status_code == 401, "a GET signature cannot DELETE"
    assert (await anonymous.get(put_url)).status_code == 401, "a PUT signature cannot GET"
    assert await client.get("builds/app.tgz") == b"slug bytes"


async def test_expired_tampered_or_missing_signatures_are_refused(blobstore: Blobstore) -> None:
    client, anonymous = blobstore.client, blobstore.anonymous
    await client.put("builds/app.tgz", b"slug")
    base = blobstore.settings.blobstore_url

    expired = client.signed_url("builds/app.tgz", ttl=-5)
    valid = client.signed_url("builds/app.tgz", ttl=60)
    url, _, query = valid.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    flipped = params["sig"][:-1] + ("0" if params["sig"][-1] != "0" else "1")
    refused = {
        "expired": expired,
        "tampered signature": f"{url}?exp={params['exp']}&sig={flipped}",
        "extended expiry": f"{url}?exp={int(params['exp']) + 3600}&sig={params['sig']}",
        "another path": f"{base}/blobs/builds/other.tgz?{query}",
        "no signature": url,
        "no expiry": f"{url}?sig={params['sig']}",
        "garbage expiry": f"{url}?exp=soon&sig={params['sig']}",
        "non-ascii digits": f"{url}?exp=%C2%B2&sig={params['sig']}",
    }
    for why, bad_url in refused.items():
        response = await anonymous.get(bad_url)
        assert response.status_code == 401, f"{why}: {response.status_code} {response.text}"
        assert response.json()["code"] == "unauthorized"

    async with BlobstoreClient(base, "wrong-secret") as intruder:
        with pytest.raises(ApiError) as denied:
            await intruder.get("builds/app.tgz")
        assert denied.value.status == 401
        with pytest.raises(ApiError) as denied:
            await intruder.put("builds/app.tgz", b"evil")
        assert denied.value.status == 401
    assert await client.get("builds/app.tgz") == b"slug"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../outside", "'..'"),
        ("a/../../outside", "'..'"),
        ("%2e%2e/%2e%2e/outside", "'..'"),
        ("a/./b", "'.'"),
        ("/etc/passwd", "relative"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        (".hidden", "hidden"),
        (".tmp/put-x", "hidden"),
        ("a/b c", "may only contain"),
        ("a%5Cb", "may only contain"),
        ("a%00b", "may only contain"),
        ("caf%C3%A9", "may only contain"),
    ],
)
async def test_hostile_paths_are_refused(blobstore: Blobstore, path: str, problem: str) -> None:
    url = "/blobs/" + path if path.startswith("/") else blob_path(path)  # blob_path would strip the leading /
    for method in ("PUT", "GET", "HEAD", "DELETE"):
        with pytest.raises(ApiError) as refused:
            await blobstore.client.request(method, url, content=b"x" if method == "PUT" else None)
        assert refused.value.status == 400, f"{method} {path}: {refused.value}"
        if method != "HEAD":  # HEAD responses carry no body
            assert problem in refused.value.message, refused.value.message
    escaped = blobstore.settings.data_dir / "outside"
    assert not escaped.exists() and not (blobstore.settings.data_dir.parent / "outside").exists()


async def test_client_refuses_dot_segments_instead_of_resolving_them(blobstore: Blobstore) -> None:
    with pytest.raises(ApiError) as refused:
        await blobstore.client.put("a/../b", b"x")
    assert refused.value.status == 400
    assert not await blobstore.client.exists("b")


async def test_concurrent_puts_leave_one_whole_blob(blobstore: Blobstore) -> None:
    client = blobstore.client
    payloads = [bytes([n]) * 400_000 for n in range(8)]

    async def slow_body(payload: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 50_000):
            yield payload[start : start + 50_000]
            await asyncio.sleep(0.005)

    async def reader(stop: asyncio.Event) -> list[bytes]:
        seen = []
        while not stop.is_set():
            with contextlib.suppress(ApiError):  # 404 until the first PUT lands
                seen.append(await client.get("race/blob"))
            await asyncio.sleep(0)
        return seen

    stop = asyncio.Event()
    reading = asyncio.create_task(reader(stop))
    await within(asyncio.gather(*(client.put("race/blob", slow_body(p)) for p in payloads)), "the concurrent PUTs")
    stop.set()
    seen = await within(reading, "the reader")

    final = await client.get("race/blob")
    assert final in payloads
    assert all(blob in payloads for blob in seen), "a reader saw a half-written or mixed blob"
    assert list((blobstore.root / ".tmp").iterdir()) == [], "temp files are cleaned up"


async def test_an_interrupted_put_leaves_nothing(blobstore: Blobstore) -> None:
    client = blobstore.client
    await client.put("cut/blob", b"old")
    gate = asyncio.Event()

    async def body_that_stops() -> AsyncIterator[bytes]:
        yield b"new but partial"
        gate.set()
        await asyncio.sleep(60)
        yield b"never"

    upload = asyncio.create_task(client.put("cut/blob", body_that_stops()))
    await within(gate.wait(), "the upload to start")
    upload.cancel()
    with contextlib.suppress(asyncio.CancelledError, ApiError):
        await upload

    for _ in range(100):  # the server notices the disconnect on its own schedule: poll, for at most 5 s
        if not list((blobstore.root / ".tmp").iterdir()):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the partial upload's temp file was not removed within 5 s")
    assert await client.get("cut/blob") == b"old"


async def test_a_tree_of_blobs_is_deleted_with_the_secret_only(blobstore: Blobstore) -> None:
    client = blobstore.client
    for path in ("slugs/doomed/a.tgz", "slugs/doomed/b.tgz", "slugs/kept/c.tgz", "caches/doomed.tar"):
        await client.put(path, b"data of " + path.encode())
    signed = client.signed_url("slugs/doomed", "DELETE")
    refused = await blobstore.anonymous.delete(signed + "&recursive=true")
    assert refused.status_code == 401
    assert "needs the internal secret" in refused.json()["message"]
    assert await client.exists("slugs/doomed/a.tgz")

    assert await client.delete("slugs/doomed", recursive=True)
    assert await client.delete("caches/doomed.tar", recursive=True)  # a single blob too
    assert not await client.delete("slugs/doomed", recursive=True)  # nothing left: 404
    assert sorted(p.relative_to(blobstore.root).as_posix() for p in blobstore.root.rglob("*")) == [
        ".tmp",
        "slugs",
        "slugs/kept",
        "slugs/kept/c.tgz",
    ]
    with pytest.raises(ApiError) as refused_path:
        await client.delete("slugs/../x", recursive=True)
    assert refused_path.value.status == 400
