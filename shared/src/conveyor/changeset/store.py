"""Client of the artifact store (version-db's ``/artifacts/{sha256}``): upload and resumable download.

Transient trouble (the store unreachable, a 5xx, a broken transfer) raises
:class:`StoreUnavailable`, which callers retry with backoff; a refusal (4xx)
raises :class:`StoreRefused`, which retrying will not fix. A download
resumes where a broken one stopped (``Range`` with ``If-Range`` on the
archive's ETag) and is renamed into place only once its sha256 matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from conveyor.changeset.archive import sha256_file
from conveyor.changeset.errors import ChangesetError

__all__ = ["ArtifactStore", "StoreRefused", "StoreUnavailable", "retrying"]

_CHUNK = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


class StoreUnavailable(ChangesetError):
    """The store could not be reached or failed; worth retrying."""


class StoreRefused(ChangesetError):
    """The store refused the request (bad token, not found, too large, digest mismatch)."""


class ArtifactStore:
    """``PUT``/``GET {base_url}/artifacts/{sha256}`` with a bearer token."""

    def __init__(self, base_url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))

    def url_for(self, sha256: str) -> str:
        return f"{self.base_url}/artifacts/{sha256}"

    def owns(self, url: str) -> bool:
        """Whether ``url`` lies in this store (the token is never sent anywhere else)."""
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc) and theirs.path.startswith(
            ours.path.rstrip("/") + "/artifacts/"
        )

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=self._headers, timeout=self._timeout)

    @staticmethod
    def _refusal(response: httpx.Response, what: str) -> ChangesetError:
        try:
            detail = response.json().get("detail", response.text[:300])
        except ValueError:
            detail = response.text[:300]
        if response.status_code >= 500:
            return StoreUnavailable(f"{what}: the artifact store answered {response.status_code}: {detail}")
        return StoreRefused(f"{what}: the artifact store refused ({response.status_code}): {detail}")

    async def upload(self, path: Path, sha256: str) -> bool:
        """Store an archive; True if it was new, False if the store already had it."""
        size = path.stat().st_size  # noqa: ASYNC240 - local metadata, microseconds

        async def body() -> AsyncIterator[bytes]:
            with open(path, "rb") as handle:  # noqa: ASYNC230 - local disk, 1 MiB reads
                while chunk := handle.read(_CHUNK):
                    yield chunk

        headers = {"Content-Length": str(size), "Content-Type": "application/zip"}
        try:
            async with self._client() as client:
                response = await client.put(self.url_for(sha256), content=body(), headers=headers)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"uploading {sha256[:12]} to {self.base_url}: {exc!r}") from None
        if response.status_code not in (200, 201):
            raise self._refusal(response, f"uploading {sha256[:12]}")
        return response.status_code == 201

    async def download(self, sha256: str, directory: Path, *, url: str | None = None) -> Path:
        """``<directory>/<sha256>.zip``, fetched (resuming a ``.part`` left by a broken transfer)
        and checked against its name. An archive already there and intact is not fetched again."""
        if not _DIGEST.fullmatch(sha256):
            raise StoreRefused(f"{sha256!r} is not a sha256")
        url = url or self.url_for(sha256)
        if not self.owns(url):
            raise StoreRefused(
                f"{url} is not in the artifact store {self.base_url}; not sending the token there"
            )
        directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - local metadata
        target = directory / f"{sha256}.zip"
        if target.exists() and await asyncio.to_thread(sha256_file, target) == sha256:
            return target
        part = directory / f"{sha256}.part"
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'} if have else {}
        try:
            async with self._client() as client, client.stream("GET", url, headers=headers) as response:
                if response.status_code == 416:  # the part is already whole (or longer than the archive)
                    pass
                elif response.status_code not in (200, 206):
                    await response.aread()
                    raise self._refusal(response, f"downloading {sha256[:12]}")
                else:
                    mode = "ab" if response.status_code == 206 else "wb"
                    with open(part, mode) as handle:  # noqa: ASYNC230 - local disk, 1 MiB writes
                        async for chunk in response.aiter_bytes(_CHUNK):
                            handle.write(chunk)
                        handle.flush()
                        os.fsync(handle.fileno())
        except httpx.HTTPError as exc:
            raise StoreUnavailable(
                f"downloading {sha256[:12]} from {self.base_url}: {exc!r} (it resumes on retry)"
            ) from None
        actual = await asyncio.to_thread(sha256_file, part)
        if actual != sha256:
            part.unlink(missing_ok=True)  # start afresh next time
            raise StoreUnavailable(f"downloaded {sha256[:12]} hashes to {actual[:12]}; fetching it again")
        os.replace(part, target)
        return target


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    delays: Sequence[float],
    what: str,
    log: Any = None,
    stop: asyncio.Event | None = None,
) -> T:
    """Run ``attempt()`` until it stops raising :class:`StoreUnavailable`, sleeping each of
    ``delays`` between tries; re-raises after the last, or at once when ``stop`` is set."""
    for delay in [*delays, None]:
        try:
            return await attempt()
        except StoreUnavailable as exc:
            if delay is None or (stop is not None and stop.is_set()):
                raise
            if log is not None:
                log.warning("artifact_store_retry", what=what, error=str(exc), retry_in_s=delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    raise
    raise AssertionError("unreachable")
