"""The content-addressed artifact store: changeset archives (zip files) named by their sha256.

An archive lives at ``<root>/ab/<sha256>`` (``ab`` being its first two hex
digits) and never changes once stored. :class:`ArtifactStore` streams an upload
to a temporary file in ``<root>`` while hashing it, and links it into place
only if its content hashes to its name; :func:`artifacts_router` puts it on
HTTP.

HTTP contract (every route behind the guard the caller supplies):

``PUT /artifacts/{sha256}`` (body: the archive, streamed)
    201 stored (``Location``, JSON ``{"sha256", "size"}``); 200 already stored
    with that very content (nothing changes); 400 the name is not 64 lower-case
    hex digits, or the upload broke off; 413 larger than ``max_bytes`` (from
    ``Content-Length`` before reading anything, else as soon as the body passes
    it); 422 the body hashes differently, ``detail`` naming ``expected`` and
    ``actual``. Nothing is stored unless the answer is 201.

``GET`` / ``HEAD /artifacts/{sha256}``
    200 with ``Content-Type: application/zip``, ``Content-Length``,
    ``ETag: "<sha256>"``, ``Accept-Ranges: bytes`` and ``Cache-Control:
    private, max-age=31536000, immutable`` (content under a hash never goes
    stale; private because reads are authenticated); 304 when
    ``If-None-Match`` names the ETag (or is ``*``); 206 with ``Content-Range``
    for one ``Range: bytes=a-b``, ``a-`` or ``-n``; 416 with ``Content-Range:
    bytes */<size>`` when that range starts past the end (or is ``-0``); 400
    bad name; 404 not stored. A Range is ignored (200, whole archive) when it
    lists several ranges, is malformed, comes with an ``If-Range`` other than
    the ETag, is sent with HEAD, or asks for part of an empty file: the
    client's ranged requests only ever want one span, and ignoring a Range
    is always allowed (RFC 9110 §14.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from conveyor.observability import get_logger
from conveyor.pkgvcs.storage import fsync_dir

__all__ = [
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactStore",
    "ArtifactTooLarge",
    "DigestMismatch",
    "InvalidDigest",
    "RangeNotSatisfiable",
    "artifacts_router",
    "parse_range",
]

log = get_logger(__name__)

_BLOCK = 1 << 20  # bytes per disk write, hash update and response chunk
_DIGEST = re.compile(r"[0-9a-f]{64}")
_BYTE_RANGE = re.compile(r"(\d*)-(\d*)", re.ASCII)
_CACHE_CONTROL = "private, max-age=31536000, immutable"
_MEDIA_TYPE = "application/zip"


class ArtifactError(Exception):
    """Base of every reason an upload is refused."""


class InvalidDigest(ArtifactError, ValueError):
    """The name is not a sha256 in 64 lower-case hex digits."""


class ArtifactTooLarge(ArtifactError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the archive is larger than the {max_bytes} bytes allowed")
        self.max_bytes = max_bytes


class DigestMismatch(ArtifactError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"the body hashes to {actual}, not to its name {expected}")
        self.expected = expected
        self.actual = actual


class RangeNotSatisfiable(Exception):
    """A byte range that starts past the end of the file (answered with 416)."""


class ArtifactInfo(BaseModel):
    sha256: str
    size: int


def _check_digest(sha256: str) -> str:
    if _DIGEST.fullmatch(sha256) is None:
        raise InvalidDigest(f"{sha256[:80]!r} is not a sha256 (64 lower-case hex digits)")
    return sha256


class _Upload:
    """The temporary file in the store's root that receives one body (blocking: run in a thread)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f".put-{secrets.token_hex(8)}.tmp"
        self._handle = open(self.path, "xb")  # noqa: SIM115 - closed by publish() or discard()

    def write(self, block: bytes | bytearray) -> None:
        self._handle.write(block)

    def publish(self, target: Path) -> bool:
        """fsync, then hard-link into place: atomic, and never over an existing archive
        (a concurrent PUT of the same content may have won). False if it was there."""
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            if not target.parent.is_dir():
                target.parent.mkdir(exist_ok=True)
                fsync_dir(target.parent.parent)
            try:
                os.link(self.path, target)
            except FileExistsError:
                return False
            fsync_dir(target.parent)
            return True
        finally:
            self.discard()

    def discard(self) -> None:
        self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _absorb(
    update: Callable[[bytearray], None], sink: Callable[[bytearray], None] | None, block: bytearray
) -> None:
    update(block)
    if sink is not None:
        sink(block)


def _open_at(path: Path, offset: int) -> io.BufferedReader:
    handle = open(path, "rb")  # noqa: SIM115 - the caller closes it
    handle.seek(offset)
    return handle


class ArtifactStore:
    """Immutable archives under ``root/ab/<sha256>``, at most ``max_bytes`` each.

    Blocking file I/O runs in worker threads, one call per 1 MiB block (writes
    and hashing of a body, reads of a download, fsync, stat): a disk stalled on
    writeback never stalls the event loop, and a thread hop per MiB costs
    nothing next to the copy. Memory per transfer is about one block.
    """

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path(self, sha256: str) -> Path:
        """Where the archive named ``sha256`` lives; ``InvalidDigest`` for any other name."""
        return self.root / _check_digest(sha256)[:2] / sha256

    def stat(self, sha256: str) -> os.stat_result | None:
        try:
            return os.stat(self.path(sha256))
        except FileNotFoundError:
            return None

    async def put(self, sha256: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store the body ``chunks`` under ``sha256``: True if stored, False if it already was.

        An archive already stored is left alone, but the body is still read and
        hashed, so a different body is refused all the same. Raises
        ``InvalidDigest``, ``ArtifactTooLarge`` (reading stops at once) or
        ``DigestMismatch``; nothing is left on disk when it does.
        """
        target = self.path(sha256)
        if await asyncio.to_thread(target.exists):
            await self._drain(sha256, chunks, None)
            return False
        upload = await asyncio.to_thread(_Upload, self.root)
        handed_over = False
        try:
            await self._drain(sha256, chunks, upload.write)
            handed_over = True  # publish() cleans up after itself, even if we are cancelled
            stored = await asyncio.to_thread(upload.publish, target)
        finally:
            if not handed_over:
                upload.discard()
        if stored:
            log.info("artifact_stored", sha256=sha256, path=str(target))
        return stored

    async def _drain(
        self, sha256: str, chunks: AsyncIterator[bytes], sink: Callable[[bytearray], None] | None
    ) -> None:
        """Read every chunk, hashing it and handing it to ``sink`` in 1 MiB blocks."""
        digest = hashlib.sha256()
        size = 0
        block = bytearray()
        async for chunk in chunks:
            size += len(chunk)
            if size > self.max_bytes:
                raise ArtifactTooLarge(self.max_bytes)
            block += chunk
            if len(block) >= _BLOCK:
                await asyncio.to_thread(_absorb, digest.update, sink, block)
                block.clear()
        if block:
            await asyncio.to_thread(_absorb, digest.update, sink, block)
        if digest.hexdigest() != sha256:
            raise DigestMismatch(sha256, digest.hexdigest())

    async def read(self, sha256: str, start: int, length: int) -> AsyncIterator[bytes]:
        """``length`` bytes from ``start``, in blocks of at most 1 MiB.

        The file is opened on the first iteration and closed when the iteration
        ends or is abandoned (the generator is then closed by the event loop).
        """
        handle = await asyncio.to_thread(_open_at, self.path(sha256), start)
        try:
            while length > 0:
                block = await asyncio.to_thread(handle.read, min(length, _BLOCK))
                if not block:
                    raise OSError(f"artifact {sha256} ended {length} bytes early")
                length -= len(block)
                yield block
        finally:
            handle.close()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single span ``(first, last)`` (inclusive) a ``Range`` header asks of ``size`` bytes.

    None means "send everything": no header, another unit, several ranges, a
    malformed one, or an empty file. ``RangeNotSatisfiable`` when the span
    starts at or past the end, or is the empty suffix ``-0``.
    """
    if header is None or size == 0:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _BYTE_RANGE.fullmatch(spec.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    if last != "" and int(last) < int(first):
        return None
    if int(first) >= size:
        raise RangeNotSatisfiable
    return int(first), size - 1 if last == "" else min(int(last), size - 1)


def _etag_listed(header: str, sha256: str) -> bool:
    """Whether an ``If-None-Match`` value lists this ETag (weak comparison) or is ``*``."""
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or f'"{sha256}"' in tags


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdecimal() else None


def _existing(store: ArtifactStore, sha256: str) -> os.stat_result:
    try:
        info = store.stat(sha256)
    except InvalidDigest as exc:
        raise HTTPException(400, str(exc)) from None
    if info is None:
        raise HTTPException(404, f"no artifact {sha256}")
    return info


def _cache_headers(sha256: str) -> dict[str, str]:
    return {"ETag": f'"{sha256}"', "Cache-Control": _CACHE_CONTROL, "Accept-Ranges": "bytes"}


def _span(request: Request, sha256: str, size: int) -> tuple[int, int] | None:
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != f'"{sha256}"':
        return None
    try:
        return parse_range(request.headers.get("range"), size)
    except RangeNotSatisfiable:
        raise HTTPException(
            416, f"the range is outside the {size} bytes", headers={"Content-Range": f"bytes */{size}"}
        ) from None


_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {_MEDIA_TYPE: {}}, "description": "the archive"},
    304: {"description": "If-None-Match names it"},
    400: {"description": "not a sha256"},
    404: {"description": "not stored"},
}


def artifacts_router(
    store: ArtifactStore, *, write_guard: Callable[..., Any], read_guard: Callable[..., Any]
) -> APIRouter:
    """``PUT``, ``GET`` and ``HEAD /artifacts/{sha256}`` (contract in the module docstring)."""
    router = APIRouter(tags=["artifacts"])

    @router.put(
        "/artifacts/{sha256}",
        response_model=ArtifactInfo,
        status_code=201,
        dependencies=[Depends(write_guard)],
        responses={
            200: {"model": ArtifactInfo, "description": "already stored with this very content"},
            400: {"description": "not a sha256, or the upload broke off"},
            413: {"description": "larger than the store accepts"},
            422: {"description": "the body hashes differently (detail: expected, actual)"},
        },
    )
    async def put_artifact(sha256: str, request: Request) -> JSONResponse:
        declared = _declared_length(request)
        if declared is not None and declared > store.max_bytes:
            raise HTTPException(413, str(ArtifactTooLarge(store.max_bytes)))
        try:
            stored = await store.put(sha256, request.stream())
        except InvalidDigest as exc:
            raise HTTPException(400, str(exc)) from None
        except ArtifactTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except DigestMismatch as exc:
            detail = {"message": str(exc), "expected": exc.expected, "actual": exc.actual}
            raise HTTPException(422, detail) from None
        except ClientDisconnect:
            raise HTTPException(400, "the upload broke off") from None
        size = (await asyncio.to_thread(_existing, store, sha256)).st_size
        body = ArtifactInfo(sha256=sha256, size=size).model_dump()
        if not stored:
            return JSONResponse(body, status_code=200)
        return JSONResponse(body, status_code=201, headers={"Location": request.url.path})

    @router.get(
        "/artifacts/{sha256}",
        response_class=Response,
        dependencies=[Depends(read_guard)],
        responses={
            **_READ_RESPONSES,
            206: {"description": "one byte range"},
            416: {"description": "range past the end"},
        },
    )
    async def get_artifact(sha256: str, request: Request) -> Response:
        info = await asyncio.to_thread(_existing, store, sha256)
        headers = _cache_headers(sha256)
        if _etag_listed(request.headers.get("if-none-match", ""), sha256):
            return Response(status_code=304, headers=headers)
        span = _span(request, sha256, info.st_size)
        first, last = (0, info.st_size - 1) if span is None else span
        headers["Content-Length"] = str(last - first + 1)
        if span is not None:
            headers["Content-Range"] = f"bytes {first}-{last}/{info.st_size}"
        return StreamingResponse(
            store.read(sha256, first, last - first + 1),
            status_code=200 if span is None else 206,
            headers=headers,
            media_type=_MEDIA_TYPE,
        )

    @router.head(
        "/artifacts/{sha256}",
        response_class=Response,
        dependencies=[Depends(read_guard)],
        responses=_READ_RESPONSES,
    )
    async def head_artifact(sha256: str, request: Request) -> Response:
        info = await asyncio.to_thread(_existing, store, sha256)
        headers = _cache_headers(sha256)
        if _etag_listed(request.headers.get("if-none-match", ""), sha256):
            return Response(status_code=304, headers=headers)
        headers["Content-Length"] = str(info.st_size)
        return Response(headers=headers, media_type=_MEDIA_TYPE)

    return router
