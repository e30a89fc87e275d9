"""The artifact store and its HTTP routes, on real files in ``tmp_path``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from conveyor_version_db.artifacts import (
    ArtifactStore,
    ArtifactTooLarge,
    DigestMismatch,
    InvalidDigest,
    RangeNotSatisfiable,
    artifacts_router,
    parse_range,
)

MiB = 1 << 20
CONTENT = bytes(range(100))
SHA = hashlib.sha256(CONTENT).hexdigest()


def app_for(store: ArtifactStore) -> FastAPI:
    app = FastAPI()
    app.include_router(artifacts_router(store, write_guard=lambda: None, read_guard=lambda: None))
    return app


def files_in(root: Path) -> list[str]:
    """Every file under ``root``, temporaries included."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", max_bytes=1000)


@pytest.fixture
async def client(store: ArtifactStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_for(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://version-db") as client:
        yield client


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> str:
    response = await client.put(f"/artifacts/{SHA}", content=CONTENT)
    assert response.status_code == 201
    return SHA


async def test_upload_then_download_round_trip(client: httpx.AsyncClient, store: ArtifactStore) -> None:
    put = await client.put(f"/artifacts/{SHA}", content=CONTENT)
    assert put.status_code == 201
    assert put.json() == {"sha256": SHA, "size": 100}
    assert put.headers["location"] == f"/artifacts/{SHA}"
    assert files_in(store.root) == [f"{SHA[:2]}/{SHA}"]
    assert store.path(SHA).read_bytes() == CONTENT

    got = await client.get(f"/artifacts/{SHA}")
    assert got.status_code == 200
    assert got.content == CONTENT
    assert got.headers["etag"] == f'"{SHA}"'
    assert got.headers["content-length"] == "100"
    assert got.headers["content-type"] == "application/zip"
    assert got.headers["accept-ranges"] == "bytes"
    assert "immutable" in got.headers["cache-control"]


async def test_a_second_put_of_the_same_content_changes_nothing(
    client: httpx.AsyncClient, store: ArtifactStore, stored: str
) -> None:
    before = os.stat(store.path(stored))
    again = await client.put(f"/artifacts/{stored}", content=CONTENT)
    assert again.status_code == 200
    assert again.json() == {"sha256": stored, "size": 100}
    after = os.stat(store.path(stored))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert files_in(store.root) == [f"{SHA[:2]}/{SHA}"]


async def test_a_different_body_under_a_stored_name_is_refused(
    client: httpx.AsyncClient, store: ArtifactStore, stored: str
) -> None:
    response = await client.put(f"/artifacts/{stored}", content=b"something else")
    assert response.status_code == 422
    assert store.path(stored).read_bytes() == CONTENT
    assert files_in(store.root) == [f"{SHA[:2]}/{SHA}"]


async def test_a_body_hashing_differently_is_refused_and_nothing_is_left(
    client: httpx.AsyncClient, store: ArtifactStore
) -> None:
    response = await client.put(f"/artifacts/{SHA}", content=CONTENT + b"!")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["expected"] == SHA
    assert detail["actual"] == hashlib.sha256(CONTENT + b"!").hexdigest()
    assert files_in(store.root) == []
    assert (await client.get(f"/artifacts/{SHA}")).status_code == 404


@pytest.mark.parametrize("name", [SHA.upper(), SHA[:63], SHA + "0", "z" * 64, "%20" + SHA[1:]])
async def test_a_name_that_is_not_a_sha256_is_a_bad_request(client: httpx.AsyncClient, name: str) -> None:
    assert (await client.put(f"/artifacts/{name}", content=CONTENT)).status_code == 400
    assert (await client.get(f"/artifacts/{name}")).status_code == 400
    assert (await client.head(f"/artifacts/{name}")).status_code == 400


async def test_too_large_by_content_length_is_refused_before_reading(
    client: httpx.AsyncClient, store: ArtifactStore
) -> None:
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            pulled.append(i)
            yield b"x" * 1000

    response = await client.put(f"/artifacts/{SHA}", content=body(), headers={"Content-Length": "3000"})
    assert response.status_code == 413
    assert pulled == []
    assert files_in(store.root) == []


async def test_too_large_while_streaming_stops_reading_at_the_limit(
    client: httpx.AsyncClient, store: ArtifactStore
) -> None:
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length to judge by
        for i in range(100):
            pulled.append(i)
            yield b"x" * 300

    response = await client.put(f"/artifacts/{SHA}", content=body())
    assert response.status_code == 413
    assert len(pulled) == 4  # 1200 bytes > 1000: the fourth chunk crosses the limit
    assert files_in(store.root) == []


async def test_missing_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/artifacts/{SHA}")).status_code == 404
    assert (await client.head(f"/artifacts/{SHA}")).status_code == 404


async def test_head_gives_the_headers_without_the_body(client: httpx.AsyncClient, stored: str) -> None:
    response = await client.head(f"/artifacts/{stored}", headers={"Range": "bytes=0-9"})
    assert response.status_code == 200  # Range is only for GET
    assert response.content == b""
    assert response.headers["content-length"] == "100"
    assert response.headers["etag"] == f'"{stored}"'
    assert response.headers["content-type"] == "application/zip"


@pytest.mark.parametrize("if_none_match", [f'"{SHA}"', f'W/"{SHA}"', f'"other", "{SHA}"', "*"])
async def test_if_none_match_naming_the_etag_is_304(
    client: httpx.AsyncClient, stored: str, if_none_match: str
) -> None:
    for method in ("GET", "HEAD"):
        response = await client.request(
            method, f"/artifacts/{stored}", headers={"If-None-Match": if_none_match}
        )
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["etag"] == f'"{stored}"'


async def test_if_none_match_naming_another_etag_gets_the_body(
    client: httpx.AsyncClient, stored: str
) -> None:
    response = await client.get(f"/artifacts/{stored}", headers={"If-None-Match": '"other"'})
    assert response.status_code == 200
    assert response.content == CONTENT


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-9", 0, 9),  # the first bytes
        ("bytes=10-19", 10, 19),  # the middle
        ("bytes=-5", 95, 99),  # a suffix
        ("bytes=-500", 0, 99),  # a suffix longer than the file
        ("bytes=90-", 90, 99),  # open-ended
        ("bytes=95-500", 95, 99),  # past the end: cut at the end
        ("bytes=99-99", 99, 99),
    ],
)
async def test_a_single_range_is_206(
    client: httpx.AsyncClient, stored: str, header: str, first: int, last: int
) -> None:
    response = await client.get(f"/artifacts/{stored}", headers={"Range": header})
    assert response.status_code == 206
    assert response.content == CONTENT[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/100"
    assert response.headers["content-length"] == str(last - first + 1)
    assert response.headers["etag"] == f'"{stored}"'


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=500-600", "bytes=-0"])
async def test_an_unsatisfiable_range_is_416(client: httpx.AsyncClient, stored: str, header: str) -> None:
    response = await client.get(f"/artifacts/{stored}", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */100"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=5-2", "items=0-1", "bytes=x-", "bytes=-"])
async def test_several_or_malformed_ranges_are_ignored(
    client: httpx.AsyncClient, stored: str, header: str
) -> None:
    response = await client.get(f"/artifacts/{stored}", headers={"Range": header})
    assert response.status_code == 200
    assert response.content == CONTENT


async def test_if_range_must_name_the_etag(client: httpx.AsyncClient, stored: str) -> None:
    matching = await client.get(
        f"/artifacts/{stored}", headers={"Range": "bytes=0-9", "If-Range": f'"{SHA}"'}
    )
    assert matching.status_code == 206
    other = await client.get(f"/artifacts/{stored}", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert other.status_code == 200
    assert other.content == CONTENT


def test_parse_range_edges() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-", 0) is None  # an empty file is sent whole
    assert parse_range("Bytes = 2-3", 10) == (2, 3)
    assert parse_range("bytes=²-3", 10) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=10-10", 10)


async def test_the_store_refuses_without_leaving_files(store: ArtifactStore) -> None:
    with pytest.raises(InvalidDigest):
        await store.put("nope", chunks_of(CONTENT))
    with pytest.raises(DigestMismatch) as mismatch:
        await store.put(SHA, chunks_of(CONTENT[:50], CONTENT[50:], b"!"))
    assert mismatch.value.expected == SHA
    with pytest.raises(ArtifactTooLarge):
        await store.put(SHA, chunks_of(*[CONTENT] * 11))
    assert files_in(store.root) == []
    assert store.stat(SHA) is None


async def test_a_body_that_breaks_off_leaves_no_temporary_file(store: ArtifactStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield CONTENT[:50]
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        await store.put(SHA, broken())
    assert files_in(store.root) == []


async def test_concurrent_puts_of_the_same_content_store_it_once(store: ArtifactStore) -> None:
    results = await asyncio.gather(*(store.put(SHA, chunks_of(CONTENT[:30], CONTENT[30:])) for _ in range(5)))
    assert results.count(True) >= 1
    assert results.count(True) + results.count(False) == 5
    assert files_in(store.root) == [f"{SHA[:2]}/{SHA}"]
    assert store.path(SHA).read_bytes() == CONTENT
    assert await store.put(SHA, chunks_of(CONTENT)) is False


# -- a large transfer over a real HTTP server, memory measured ---------------------------------

LARGE_BLOCKS = 200  # x 1 MiB
MEMORY_BOUND = 8 * MiB


def large_block(index: int) -> bytes:
    """1 MiB of deterministic pseudo-random bytes (never compressible, never repeating)."""
    return hashlib.shake_128(index.to_bytes(4, "big")).digest(MiB)


async def large_body() -> AsyncIterator[bytes]:
    for index in range(LARGE_BLOCKS):
        yield large_block(index)


async def eventually(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` under uvicorn on a free port, in this event loop; yields its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="h11",
        ws="none",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_a_200_mib_upload_and_download_stay_within_8_mib(tmp_path: Path) -> None:
    """200 MiB up and down through uvicorn: the Python heap of the whole process (server,
    client and the worker threads, measured by tracemalloc) peaks below 8 MiB each way (about 4 MiB measured),
    however large the archive is. The 1 MiB block being sent counts against the bound."""
    digest = hashlib.sha256()
    for index in range(LARGE_BLOCKS):
        digest.update(large_block(index))
    sha = digest.hexdigest()
    store = ArtifactStore(tmp_path / "artifacts", max_bytes=256 * MiB)
    size = LARGE_BLOCKS * MiB

    async with serving(app_for(store)) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        started = time.monotonic()
        tracemalloc.start()
        try:
            put = await client.put(
                f"/artifacts/{sha}", content=large_body(), headers={"Content-Length": str(size)}
            )
            upload_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            received = hashlib.sha256()
            length = 0
            async with client.stream("GET", f"/artifacts/{sha}") as download:
                assert download.status_code == 200
                assert download.headers["content-length"] == str(size)
                async for chunk in download.aiter_raw():
                    received.update(chunk)
                    length += len(chunk)
            download_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        elapsed = time.monotonic() - started

    assert put.status_code == 201, put.text
    assert store.stat(sha) is not None
    assert (length, received.hexdigest()) == (size, sha)
    report = f"upload peak {upload_peak / MiB:.1f} MiB, download peak {download_peak / MiB:.1f} MiB"
    print(f"{report}, {elapsed:.1f} s")  # shown with -s
    assert upload_peak < MEMORY_BOUND, report
    assert download_peak < MEMORY_BOUND, report


async def test_over_http_too_large_is_413_and_a_broken_upload_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts", max_bytes=4 * MiB)
    sha = hashlib.sha256(b"").hexdigest()
    async with serving(app_for(store)) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        declared = await client.put(
            f"/artifacts/{sha}", content=large_body(), headers={"Content-Length": str(LARGE_BLOCKS * MiB)}
        )
        assert declared.status_code == 413
        assert (await client.put(f"/artifacts/{sha}", content=large_body())).status_code == 413

        host, port = url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"PUT /artifacts/{sha} HTTP/1.1\r\nHost: x\r\nContent-Length: {3 * MiB}\r\n\r\n".encode()
        )
        writer.write(large_block(0))
        await writer.drain()
        assert await eventually(lambda: files_in(store.root) != [])  # the upload's temporary file
        writer.close()  # two MiB short
        await writer.wait_closed()
        assert await eventually(lambda: files_in(store.root) == [])
        assert (await client.head(f"/artifacts/{sha}")).status_code == 404
    assert files_in(store.root) == []


def descriptors_on(path: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    return [fd.name for fd in fds.iterdir() if os.path.realpath(fd) == str(path)]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
async def test_an_abandoned_download_closes_its_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts", max_bytes=64 * MiB)
    blocks = [large_block(index) for index in range(32)]
    sha = hashlib.sha256(b"".join(blocks)).hexdigest()
    assert await store.put(sha, chunks_of(*blocks))
    async with serving(app_for(store)) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("GET", f"/artifacts/{sha}") as download:
            async for _ in download.aiter_raw():
                break
            assert descriptors_on(store.path(sha)) != []
        assert await eventually(lambda: descriptors_on(store.path(sha)) == [])
