"""The stat cache (like git's index): which files need hashing again.

For every file seen it keeps ``(mode, size, mtime_ns, ctime_ns, inode)`` and
the sha256 its content had then, plus a copy of the current version's tree so
``status`` never has to parse the manifest. It is a cache: a missing,
unreadable or foreign-format index only costs re-hashing, never correctness.

Racy timestamps: a file changed within the same clock tick as the index was
written can keep the stat the index recorded. Entries whose mtime or ctime
is not older than the index file's own mtime are therefore never trusted and
are hashed again (git's "racy git" rule, with ctime too: a tool that writes
and then sets the mtime back cannot reset the ctime, which the kernel
stamps with the coarse clock tick of the change).
"""

from __future__ import annotations

import marshal
import os
import struct
import sys
import zlib
from pathlib import Path

from conveyor.pkgvcs.manifest import FileEntry, Tree
from conveyor.pkgvcs.storage import atomic_write

__all__ = ["HEAD_SIZE", "STAT_SIZE", "Index", "Stat", "pack_mode", "pack_stat"]

_MAGIC = b"CVIX"
_FORMAT = (3, sys.version_info[:2])  # marshal's format follows the interpreter

# (mode, size, mtime_ns, ctime_ns, inode), as lstat gave them
Stat = tuple[int, int, int, int, int]

# Entries are packed into one bytes object each: loading 100,000 of them is
# then a fraction of what as many tuples of ints cost.
_STAT = struct.Struct("<IQqqQ")  # 36 bytes, then the 32-byte sha256 digest
_HEAD = struct.Struct("<IQ")  # mode, size (12 bytes), then the digest
STAT_SIZE = _STAT.size
HEAD_SIZE = _HEAD.size
pack_stat = _STAT.pack
_MODES = {mode: struct.pack("<I", mode) for mode in (0o100644, 0o100755, 0o120000)}


def pack_mode(mode: int) -> bytes:
    return _MODES[mode]


class Index:
    """``tree``: HEAD's files as ``mode, size, digest``; ``stats``: ``stat, digest`` per path seen."""

    __slots__ = ("head", "stats", "tree", "written_ns")

    def __init__(
        self,
        head: str | None = None,
        tree: dict[bytes, bytes] | None = None,
        stats: dict[bytes, bytes] | None = None,
        written_ns: int = 0,
    ) -> None:
        self.head = head
        self.tree: dict[bytes, bytes] = tree if tree is not None else {}
        self.stats: dict[bytes, bytes] = stats if stats is not None else {}
        self.written_ns = written_ns  # mtime of the index file when read; 0: trust nothing

    @classmethod
    def load(cls, path: Path) -> Index:
        try:
            data = path.read_bytes()
            written_ns = os.stat(path).st_mtime_ns
        except OSError:
            return cls()
        payload = data[len(_MAGIC) + 4 :]
        if data[: len(_MAGIC)] != _MAGIC or zlib.crc32(payload).to_bytes(4, "little") != data[4:8]:
            return cls()  # not ours, or damaged: re-hash instead
        try:
            # marshal only reads bytes this code wrote (magic and checksum above), never foreign input.
            fmt, head, tree, stats = marshal.loads(payload)  # noqa: S302
        except (ValueError, EOFError, TypeError):
            return cls()
        if fmt != _FORMAT:
            return cls()
        return cls(head=head, tree=tree, stats=stats, written_ns=written_ns)

    def save(self, path: Path) -> None:
        payload = marshal.dumps((_FORMAT, self.head, self.tree, self.stats))
        atomic_write(path, _MAGIC + zlib.crc32(payload).to_bytes(4, "little") + payload, durable=False)
        self.written_ns = os.stat(path).st_mtime_ns

    def head_tree(self) -> Tree:
        unpack = _HEAD.unpack_from
        tree: Tree = {}
        for path, packed in self.tree.items():
            mode, size = unpack(packed)
            tree[path] = FileEntry(mode, size, packed[HEAD_SIZE:].hex())
        return tree

    def set_head(self, head: str | None, tree: Tree) -> None:
        self.head = head
        pack = _HEAD.pack
        self.tree = {path: pack(e.mode, e.size) + bytes.fromhex(e.sha256) for path, e in tree.items()}

    def record(self, path: bytes, stat: Stat, digest: bytes) -> None:
        self.stats[path] = pack_stat(*stat) + digest

    def cached_digest(self, path: bytes, stat: Stat) -> bytes | None:
        """The sha256 digest recorded for ``path`` if its stat is unchanged and not racy."""
        cached = self.stats.get(path)
        if (
            cached is None
            or max(stat[2], stat[3]) >= self.written_ns
            or cached[:STAT_SIZE] != pack_stat(*stat)
        ):
            return None
        return cached[STAT_SIZE:]
