"""Durable files: atomic writes, the content-addressed object store, the package lock."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from conveyor.pkgvcs.errors import CorruptFile, LockHeld

__all__ = ["ObjectStore", "atomic_write", "fsync_dir", "package_lock"]

_CHUNK = 1 << 20


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write to a temporary file beside ``path``, fsync, rename over it: all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


class ObjectStore:
    """zlib-compressed file contents under ``objects/ab/cdef…``, named by their sha256.

    Objects are written without an fsync each; ``sync()`` makes a batch durable
    before anything refers to it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def has(self, sha256: str) -> bool:
        return os.path.exists(self.path(sha256))

    def known(self) -> set[str]:
        """Every stored object id, read from the directory listing (cheaper than one stat each)."""
        found: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            for fan in os.scandir(self.root):
                if fan.is_dir() and len(fan.name) == 2:
                    found.update(
                        fan.name + entry.name for entry in os.scandir(fan.path) if len(entry.name) == 62
                    )
        return found

    def put(self, sha256: str, data: bytes) -> None:
        target = self.path(sha256)
        if os.path.exists(target):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # Unique per call: threads storing the same content at once must not share a temporary file.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(zlib.compress(data, 1))
        os.replace(tmp, target)

    def sync(self) -> None:
        """Make every object written so far durable (one sync rather than one per object)."""
        os.sync()

    def get(self, sha256: str) -> bytes:
        """The content, checked against its name; ``CorruptFile`` if missing or damaged."""
        path = self.path(sha256)
        try:
            data = zlib.decompress(path.read_bytes())
        except FileNotFoundError:
            raise CorruptFile(f"object {sha256} is missing ({path})") from None
        except zlib.error as exc:
            raise CorruptFile(f"object {sha256} is corrupt ({path}): {exc}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CorruptFile(f"object {sha256} is corrupt ({path}): its content hashes differently")
        return data


_EMPTY_LOCK_GRACE_S = 10.0


def _holder_alive(path: Path, text: str) -> bool:
    import socket  # noqa: PLC0415 - only writers need it

    if not text.strip():
        # Locks are created whole (below), so an empty one is from an older or
        # foreign writer: held only while it is fresh.
        try:
            return time.time() - os.stat(path).st_mtime < _EMPTY_LOCK_GRACE_S
        except FileNotFoundError:
            return False
    host, _, pid = text.strip().rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host's lock, or unreadable: assume it is held
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_whole(path: Path) -> bool:
    """Create ``path`` already holding ``host:pid``: written beside it, then hard-linked
    into place (atomic, fails if it exists), so no reader ever sees an empty lock."""
    import socket  # noqa: PLC0415

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.write_text(f"{socket.gethostname()}:{os.getpid()}\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


@contextlib.contextmanager
def package_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """``index.lock``: one writer at a time; a lock left by a dead process is taken over.

    Yields True once held. With ``wait=False`` a lock held by a live process
    yields False instead of raising ``LockHeld``.
    """
    for _ in range(3):
        if _create_whole(path):
            break
        try:
            holder = path.read_text()
        except FileNotFoundError:
            continue
        if _holder_alive(path, holder):
            if not wait:
                yield False
                return
            raise LockHeld(
                f"{path} is held by {holder.strip() or 'another process'}; wait for it, "
                "or remove the file if no conveyor process is running"
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # its process is gone
    else:
        raise LockHeld(f"could not take {path}")
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
