"""The blobstore's HTTP API (the contract is in `encom.blobstore.client`): blobs are files under one directory."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.responses import StreamingResponse

from encom.api.auth import key_from_header, key_matches
from encom.api.errors import Conflict, NotFound, Unauthorized, ValidationError
from encom.api.files import private_dir
from encom.api.server import make_app
from encom.blobstore.client import blob_signature

PREFIX = "/blobs/"
SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_SEGMENT = 255
MAX_PATH = 1024
CHUNK = 1 << 16
TMP_DIR = ".tmp"  # inside the blob dir (same filesystem, so rename is atomic); hidden, so unreachable by paths


def checked_blob_path(path: str) -> str:
    """The blob path if it is a safe relative path; otherwise a 400 saying what is wrong with it."""
    if not path:
        raise ValidationError("blob path is empty")
    if len(path) > MAX_PATH:
        raise ValidationError(f"blob path is longer than {MAX_PATH} characters")
    if path.startswith("/"):
        raise ValidationError(f"blob path {path!r} must be relative, not start with '/'")
    for segment in path.split("/"):
        _check_segment(path, segment)
    return path


def _check_segment(path: str, segment: str) -> None:
    if not segment:
        raise ValidationError(f"blob path {path!r} has an empty segment")
    if segment in (".", ".."):
        raise ValidationError(f"blob path {path!r} has a {segment!r} segment")
    if segment.startswith("."):
        raise ValidationError(f"blob path {path!r} has a hidden segment {segment!r}")
    if len(segment) > MAX_SEGMENT:
        raise ValidationError(f"blob path {path!r} has a segment longer than {MAX_SEGMENT} characters")
    if not SEGMENT_RE.match(segment):
        raise ValidationError(f"blob path {path!r}: segment {segment!r} may only contain A-Z a-z 0-9 . _ -")


def signature_valid(secret: str, method: str, request_path: str, exp: str | None, sig: str | None) -> bool:
    if exp is None or sig is None or not (exp.isascii() and exp.isdigit()) or int(exp) < time.time():
        return False
    methods = ("HEAD", "GET") if method == "HEAD" else (method,)
    valid = False
    for allowed in methods:
        expected = blob_signature(secret, allowed, request_path, int(exp))
        valid |= hmac.compare_digest(expected.encode(), sig.encode())
    return valid


class BlobDir:
    """The files behind the API. Every path given here has passed `checked_blob_path`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp = self.root / TMP_DIR
        private_dir(self.tmp)
        for leftover in self.tmp.iterdir():  # PUTs cut short by a crash; only one blobstore uses this dir
            leftover.unlink(missing_ok=True)

    def file(self, path: str) -> Path:
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root) or target == self.root:
            raise ValidationError(f"blob path {path!r} leaves the blob directory")
        return target

    def new_temp(self) -> tuple[IO[bytes], Path]:
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="put-")
        return os.fdopen(fd, "wb"), Path(name)

    def publish(self, temp: Path, path: str) -> None:
        """Move a complete temp file into place in one rename; a reader sees the old blob or the new, whole."""
        target = self.file(path)
        for _ in range(3):  # a concurrent DELETE may prune the parent between mkdir and rename
            try:
                private_dir(target.parent)
                os.replace(temp, target)
                return
            except FileNotFoundError:
                continue
            except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
                raise Conflict(f"blob path {path!r} clashes with an existing blob or directory") from exc
        raise Conflict(f"blob path {path!r} kept disappearing while it was written")

    def remove(self, path: str) -> bool:
        target = self.file(path)
        try:
            target.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
            return False
        self._prune_empty_parents(target.parent)
        return True

    def remove_tree(self, path: str) -> bool:
        """Remove the blob or the directory of blobs at `path`; False when there was nothing."""
        target = self.file(path)
        if target.is_symlink() or not target.is_dir():
            return self.remove(path)
        shutil.rmtree(target)
        self._prune_empty_parents(target.parent)
        return True

    def _prune_empty_parents(self, directory: Path) -> None:
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


def create_app(blobs: BlobDir, secret: str) -> FastAPI:
    app = make_app("blobstore", secret)

    def authorize(request: Request) -> str:
        """Allow the internal secret or a signed URL for this method and path; returns the checked blob path."""
        request_path: str = request.scope["path"]
        given = key_from_header(request.headers.get("authorization"))
        query = request.query_params
        if not key_matches(given, (secret,)) and not signature_valid(
            secret, request.method, request_path, query.get("exp"), query.get("sig")
        ):
            raise Unauthorized("invalid or missing key, or an invalid or expired signed URL")
        return checked_blob_path(request_path.removeprefix(PREFIX))

    router = APIRouter()

    @router.put("/blobs/{path:path}", status_code=201)
    async def put_blob(request: Request, path: str = Depends(authorize)) -> JSONResponse:
        size, digest = await _receive(request, blobs, path)
        return JSONResponse({"path": path, "size": size, "sha256": digest}, status_code=201)

    @router.get("/blobs/{path:path}")
    async def get_blob(path: str = Depends(authorize)) -> StreamingResponse:
        handle, size = await asyncio.to_thread(_open_blob, blobs.file(path), path)
        return StreamingResponse(
            _read_chunks(handle),
            media_type="application/octet-stream",
            headers={"Content-Length": str(size)},
        )

    @router.head("/blobs/{path:path}")
    async def head_blob(path: str = Depends(authorize)) -> Response:
        size = await asyncio.to_thread(_blob_size, blobs.file(path), path)
        return Response(headers={"Content-Length": str(size)}, media_type="application/octet-stream")

    @router.delete("/blobs/{path:path}", status_code=204)
    async def delete_blob(request: Request, recursive: bool = False, path: str = Depends(authorize)) -> Response:
        if recursive:
            if not key_matches(key_from_header(request.headers.get("authorization")), (secret,)):
                raise Unauthorized("deleting a tree of blobs needs the internal secret, not a signed URL")
            removed = await asyncio.to_thread(blobs.remove_tree, path)
        else:
            removed = await asyncio.to_thread(blobs.remove, path)
        if not removed:
            raise NotFound(f"blob {path} not found")
        return Response(status_code=204)

    app.include_router(router)
    return app


async def _receive(request: Request, blobs: BlobDir, path: str) -> tuple[int, str]:
    """Stream the body to a temp file, then publish it; returns (size, sha256)."""
    blobs.file(path)  # refuse before reading a body that could not be stored
    handle, temp = await asyncio.to_thread(blobs.new_temp)
    digest = hashlib.sha256()
    size = 0
    try:
        with handle:
            async for chunk in request.stream():
                if chunk:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_flush_to_disk, handle)
        await asyncio.to_thread(blobs.publish, temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()  # only still there when something failed
    return size, digest.hexdigest()


def _flush_to_disk(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _open_blob(file: Path, path: str) -> tuple[IO[bytes], int]:
    """Open then fstat, so the length matches the content even if the blob is replaced meanwhile."""
    try:
        handle = file.open("rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise NotFound(f"blob {path} not found") from exc
    status = os.fstat(handle.fileno())
    if not stat.S_ISREG(status.st_mode):
        handle.close()
        raise NotFound(f"blob {path} not found")
    return handle, status.st_size


def _blob_size(file: Path, path: str) -> int:
    if not file.is_file():
        raise NotFound(f"blob {path} not found")
    return file.stat().st_size


async def _read_chunks(handle: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        handle.close()
