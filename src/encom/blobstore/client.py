"""Client of the blobstore.

API (auth: the internal secret as Bearer, or a signed URL's `exp` and `sig` query parameters):
  PUT    /blobs/{path}   raw body (streamed) -> 201 {"path", "size", "sha256"}
  GET    /blobs/{path}   -> raw body (404 when missing)
  HEAD   /blobs/{path}   -> 200 with Content-Length, or 404
  DELETE /blobs/{path}   -> 204 (404 when missing); with ?recursive=true (internal secret only) `path` may also be
                            a directory: every blob under it goes
Paths are relative, `/`-separated, made of [A-Za-z0-9._-] segments; `..`, empty and hidden segments are refused
with 400. A signed URL grants one method on one path until `exp` (unix seconds):
  sig = hex(HMAC-SHA256(secret, f"{METHOD}\\n/blobs/{path}\\n{exp}"))
Build jobs get signed URLs instead of the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

from encom.api.client import ApiClient
from encom.api.errors import ApiError


def app_blob_paths(app_id: str) -> list[str]:
    """Where an app's blobs live (see `encom.gitreceive.receiver.BlobPaths`): its sources, slugs and build results
    under its id, and its build cache. Deleting these deletes everything the blobstore has of the app."""
    return [f"sources/{app_id}", f"slugs/{app_id}", f"builds/{app_id}", f"caches/{app_id}.tar"]


def blob_signature(secret: str, method: str, path: str, exp: int) -> str:
    """`path` is the full request path, starting with /blobs/."""
    message = f"{method.upper()}\n{path}\n{exp}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def blob_path(path: str) -> str:
    # httpx would resolve "." and ".." segments away and silently address another blob; sending them
    # percent-encoded lets the server refuse the path instead.
    segments = ("%2E" * len(s) if s in (".", "..") else s for s in path.lstrip("/").split("/"))
    return "/blobs/" + "/".join(segments)


class BlobstoreClient(ApiClient):
    def __init__(self, url: str, secret: str) -> None:
        super().__init__(url, secret, timeout=120.0)
        self.secret = secret

    def signed_url(self, path: str, method: str = "GET", ttl: float = 3600) -> str:
        exp = int(time.time() + ttl)
        full = blob_path(path)
        query = urlencode({"exp": exp, "sig": blob_signature(self.secret, method, full, exp)})
        return f"{self.base_url}{full}?{query}"

    async def put(self, path: str, data: bytes | AsyncIterator[bytes]) -> None:
        await self.request("PUT", blob_path(path), content=data)

    async def get(self, path: str) -> bytes:
        return (await self.request("GET", blob_path(path))).content

    async def download(self, path: str, chunk_size: int = 1 << 16) -> AsyncIterator[bytes]:
        async with self.stream("GET", blob_path(path)) as response:
            async for chunk in response.aiter_bytes(chunk_size):
                yield chunk

    async def exists(self, path: str) -> bool:
        try:
            await self.request("HEAD", blob_path(path))
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete(self, path: str, recursive: bool = False) -> bool:
        """Delete a blob (or, `recursive`, every blob under a directory); False when there was none."""
        params = {"recursive": "true"} if recursive else None
        try:
            await self.request("DELETE", blob_path(path), params=params)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
