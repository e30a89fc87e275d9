"""An append-only, hash-chained audit log in a file: one JSON line per record.

Each line is ``{"seq": N, "at": "...", "prev": "<hash of record N-1>", "record": {...}, "hash": "..."}``
where ``hash`` is the sha256 (hex) of the canonical JSON of the other four fields, and the first
record's ``prev`` is 64 zeros. Editing a record changes its hash; removing one breaks the ``seq``
sequence and the next record's ``prev``; recomputing hashes after an edit still breaks the chain at
every anchor kept elsewhere. Cutting records off the end leaves a valid chain, which is why every
record's ``(seq, hash)`` is also sent away (to version-db's audit log) and :func:`verify` compares
the file against those anchors.

Appends are one ``write`` of a whole line to a file opened with ``O_APPEND``, then ``fsync``; a line
torn by a crash is left in place (``verify`` reports it) and the chain continues from the last whole
record.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "AuditLog", "ChainReport", "record_hash", "verify"]

GENESIS = "0" * 64


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(seq: int, at: str, prev: str, record: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical({"seq": seq, "at": at, "prev": prev, "record": record})).hexdigest()


class AuditLog:
    """The log at ``path`` (created with mode 0600 when missing); safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.seq, self.last_hash = 0, GENESIS
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        for line in data.splitlines():
            try:
                entry = json.loads(line)
                self.seq, self.last_hash = int(entry["seq"]), str(entry["hash"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn or damaged line: verify() names it; the chain goes on after it
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if data and not data.endswith(b"\n"):
            os.write(self._fd, b"\n")  # end the torn line, so the next record starts on its own

    def append(self, record: Mapping[str, Any], *, at: datetime | None = None) -> tuple[int, str]:
        """Write ``record`` as the next entry, durably; its ``(seq, hash)``."""
        stamp = (at or datetime.now(UTC)).isoformat()
        with self._lock:
            seq = self.seq + 1
            digest = record_hash(seq, stamp, self.last_hash, record)
            entry = {"seq": seq, "at": stamp, "prev": self.last_hash, "record": dict(record), "hash": digest}
            os.write(self._fd, _canonical(entry) + b"\n")
            os.fsync(self._fd)
            self.seq, self.last_hash = seq, digest
        return seq, digest

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class ChainReport:
    records: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(lines: Iterable[str | bytes], anchors: Mapping[int, str] | None = None) -> ChainReport:
    """Check a log's lines: each whole, its hash matching its content, ``seq`` counting up by one and
    ``prev`` naming the previous record's hash; and, for each ``seq → hash`` in ``anchors`` (copies
    kept elsewhere), that the record is there with that hash (so records cut off the end are found)."""
    report = ChainReport()
    seen: dict[int, str] = {}
    expected_seq, expected_prev = 1, GENESIS
    for number, raw in enumerate(lines, start=1):
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
            seq, at, prev, record, digest = (
                int(entry["seq"]),
                str(entry["at"]),
                str(entry["prev"]),
                entry["record"],
                str(entry["hash"]),
            )
        except (ValueError, KeyError, TypeError):
            report.problems.append(f"line {number}: not a whole audit record")
            continue
        report.records += 1
        if record_hash(seq, at, prev, record) != digest:
            report.problems.append(f"line {number}: record {seq} was altered (its hash does not match it)")
        if seq != expected_seq:
            if seq > expected_seq:
                missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
                report.problems.append(f"line {number}: record {missing} removed (record {seq} follows)")
            else:
                report.problems.append(f"line {number}: record {seq} out of order (expected {expected_seq})")
        elif prev != expected_prev:
            report.problems.append(
                f"line {number}: record {seq} does not follow the record before it (prev hash differs)"
            )
        seen[seq] = digest
        expected_seq, expected_prev = seq + 1, digest
        report.last_seq, report.last_hash = seq, digest
    for seq, digest in sorted((anchors or {}).items()):
        if seq not in seen:
            report.problems.append(f"record {seq} is missing (its copy elsewhere has hash {digest[:12]})")
        elif seen[seq] != digest:
            report.problems.append(f"record {seq} differs from its copy elsewhere (hash {digest[:12]})")
    return report
