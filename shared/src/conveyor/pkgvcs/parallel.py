"""``status`` on large trees: the walk split over forked processes.

One ``lstat`` per file is the floor, and in CPython the work around each call
holds the GIL far longer than the call itself, so threads do not overlap;
processes do. Forked workers inherit the loaded stat cache for free
(copy-on-write), walk a share of the top-level directories each, compare
against the cache and HEAD themselves, hash what the cache cannot vouch for,
and send back only the differences.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from conveyor.pkgvcs.errors import VcsError
from conveyor.pkgvcs.index import HEAD_SIZE, Index, Stat, pack_mode
from conveyor.pkgvcs.scan import METADATA_DIR, Ignore, iter_files, read_content

__all__ = ["Differences", "compare", "parallel_compare"]

# added, modified, deleted, newly hashed (path, stat, sha256 digest)
Differences = tuple[list[bytes], list[bytes], list[bytes], list[tuple[bytes, Stat, bytes]]]

PARALLEL_FROM = 4_000  # files in the cache; below this a fork costs more than it saves


def _hash(root: bytes, path: bytes, mode: int) -> bytes | None:
    try:
        return hashlib.sha256(read_content(root, path, mode)).digest()
    except FileNotFoundError:
        return None  # deleted while we looked


def compare(
    root: Path, index: Index, files: Iterable[tuple[bytes, Stat]], owns: Callable[[bytes], bool] | None
) -> Differences:
    """Compare ``files`` with HEAD; tracked paths not among them are deleted if ``owns``
    says this comparison is responsible for them (None: for every tracked path)."""
    head, cached_digest = index.tree, index.cached_digest  # the stat-cache and racy rules live there
    base = os.fsencode(root)
    added: list[bytes] = []
    modified: list[bytes] = []
    hashed: list[tuple[bytes, Stat, bytes]] = []
    seen: set[bytes] = set()
    for path, stat in files:
        digest = cached_digest(path, stat)
        if digest is None:
            digest = _hash(base, path, stat[0])
            if digest is None:
                continue
            hashed.append((path, stat, digest))
        entry = head.get(path)
        if entry is None:
            added.append(path)
            continue
        seen.add(path)
        if entry[HEAD_SIZE:] != digest or entry[:4] != pack_mode(stat[0]):
            modified.append(path)
    if owns is None:
        deleted = [p for p in head if p not in seen]
    else:
        deleted = [p for p in head if p not in seen and owns(p)]
    return added, modified, deleted, hashed


def parallel_compare(root: Path, index: Index, ignore: Ignore) -> Differences | None:
    """``compare`` over the whole tree in ``os.cpu_count()`` processes; None when not worth it
    (small tree, one core) or not safe (no fork, or threads running)."""
    workers = min(os.cpu_count() or 1, 8)
    if (
        workers < 2
        or len(index.stats) < PARALLEL_FROM
        or not hasattr(os, "fork")
        or threading.active_count() > 1
    ):
        return None
    base = os.fsencode(root)
    tops: list[bytes] = []
    with os.scandir(base) as entries:
        for entry in entries:
            name = entry.name
            if entry.is_dir(follow_symlinks=False) and name != METADATA_DIR and not ignore.skips_dir(name):
                tops.append(name)
    shares = [tops[k::workers] for k in range(workers)]
    children = [_fork(root, index, ignore, share) for share in shares if share]
    # The parent takes the root's own files, and deletions under directories that are gone.
    top_set = set(tops)
    merged = compare(
        root,
        index,
        iter_files(root, ignore, [b""], recurse=False),
        lambda path: path.partition(b"/")[0] not in top_set,
    )
    added, modified, deleted, hashed = merged
    for pid, fd in children:
        more = _collect(pid, fd)
        added += more[0]
        modified += more[1]
        deleted += more[2]
        hashed += more[3]
    return added, modified, deleted, hashed


def _fork(root: Path, index: Index, ignore: Ignore, share: list[bytes]) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compare, send, and leave without running any cleanup of the parent's
        code = 0
        try:
            os.close(read_fd)
            owned = set(share)
            files = iter_files(root, ignore, share)
            result: Differences | tuple[str, str] = compare(
                root, index, files, lambda path: path.partition(b"/")[0] in owned
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            result, code = ("error", f"{type(exc).__name__}: {exc}"), 1
        try:
            data = marshal.dumps(result)
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _collect(pid: int, fd: int) -> Differences:
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(1 << 20):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    try:
        result = marshal.loads(b"".join(chunks))  # noqa: S302 - from our own child, over a pipe
    except (EOFError, ValueError, TypeError):
        raise VcsError(f"status worker {pid} ended without a result (wait status {status})") from None
    if isinstance(result, tuple) and len(result) == 2 and result[0] == "error":
        raise VcsError(f"status worker failed: {result[1]}")
    added, modified, deleted, hashed = result
    return added, modified, deleted, hashed
