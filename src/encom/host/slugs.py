"""Slugs: downloaded once per URL from the blobstore into a cache, extracted fresh into each job's /app."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from encom.api.aio import KeyedLocks
from encom.api.files import private_dir
from encom.blobstore.client import BlobstoreClient
from encom.host import unpack

CACHE_KEEP = 20  # cached tarballs kept, newest used first


def blob_path_of(url: str) -> str:
    """An artifact URL is a blobstore path ("/slugs/a/b.tgz"); full blobstore URLs are accepted too."""
    if "://" in url:
        url = url.split("://", 1)[1].partition("/")[2]
    url = url.split("?", 1)[0].lstrip("/")
    return url.removeprefix("blobs/")


def cache_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


class SlugCache:
    def __init__(self, cache_dir: Path, blobstore: BlobstoreClient) -> None:
        self.dir = cache_dir
        self.blobstore = blobstore
        self.locks = KeyedLocks()
        private_dir(cache_dir)

    def drop_all_but(self, urls: set[str]) -> None:
        """Empty the cache but for the slugs of `urls` (an app was deleted: its slugs go, whatever their URLs)."""
        keep = {f"{cache_key(url)}.tgz" for url in urls}
        for tarball in self.dir.glob("*.tgz"):
            if tarball.name not in keep:
                tarball.unlink(missing_ok=True)

    async def fetch(self, url: str) -> Path:
        """The local tarball for `url`, downloading it on first use."""
        key = cache_key(url)
        target = self.dir / f"{key}.tgz"
        async with self.locks.hold(key):
            if target.exists():
                os.utime(target)
                return target
            tmp = target.with_suffix(f".{os.getpid()}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                async for chunk in self.blobstore.download(blob_path_of(url)):
                    os.write(fd, chunk)
                os.close(fd)
                fd = -1
                os.replace(tmp, target)
            finally:
                if fd >= 0:
                    os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        await asyncio.to_thread(self._prune)
        return target

    def _prune(self) -> None:
        tarballs = sorted(self.dir.glob("*.tgz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in tarballs[CACHE_KEEP:]:
            old.unlink(missing_ok=True)


def extract(tarball: Path, dest: Path, uid: int, gid: int, max_bytes: int | None = None) -> None:
    """Unpack a slug into a fresh /app as the app's uid, chrooted there (see `encom.host.unpack`): slugs are made
    by builds, so by user code. Raises UnpackError when the slug is refused."""
    if dest.exists():
        shutil.rmtree(dest)
    unpack.unpack(tarball, dest, uid, gid, max_bytes)
