"""The hash-chained audit log: every removal or edit is found, also one followed by recomputed hashes,
and records cut off the end are found against the copies kept elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

from conveyor.auditlog import GENESIS, AuditLog, record_hash, verify


def written(tmp_path: Path, count: int = 5) -> tuple[Path, dict[int, str]]:
    log = AuditLog(tmp_path / "audit.jsonl")
    anchors = {}
    for i in range(count):
        seq, digest = log.append({"action": "firewall.disable", "actor": "ada", "i": i})
        anchors[seq] = digest
    log.close()
    return log.path, anchors


def test_an_untouched_log_verifies_and_reopening_continues_the_chain(tmp_path: Path) -> None:
    path, anchors = written(tmp_path)
    again = AuditLog(path)
    assert (again.seq, again.last_hash) == (5, anchors[5])
    seq, digest = again.append({"action": "firewall.enable"})
    again.close()
    report = verify(path.read_text().splitlines(), {**anchors, seq: digest})
    assert report.intact, report.problems
    assert (report.records, report.last_seq) == (6, 6)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["prev"] == GENESIS
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_removed_record_is_found(tmp_path: Path) -> None:
    path, anchors = written(tmp_path)
    lines = path.read_text().splitlines()
    del lines[2]
    report = verify(lines, anchors)
    assert "line 3: record 3 removed (record 4 follows)" in report.problems
    assert "record 3 is missing (its copy elsewhere has hash " + anchors[3][:12] + ")" in report.problems


def test_an_edited_record_is_found_even_with_its_hash_recomputed(tmp_path: Path) -> None:
    path, anchors = written(tmp_path)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["record"]["actor"] = "mallory"
    lines[1] = json.dumps(entry)
    assert "line 2: record 2 was altered (its hash does not match it)" in verify(lines).problems
    entry["hash"] = record_hash(entry["seq"], entry["at"], entry["prev"], entry["record"])
    lines[1] = json.dumps(entry)
    problems = verify(lines, anchors).problems
    assert "line 3: record 3 does not follow the record before it (prev hash differs)" in problems
    assert any("record 2 differs from its copy elsewhere" in p for p in problems)


def test_records_cut_off_the_end_are_found_against_their_copies(tmp_path: Path) -> None:
    path, anchors = written(tmp_path)
    lines = path.read_text().splitlines()[:3]
    assert verify(lines).intact  # the chain alone cannot tell
    problems = verify(lines, anchors).problems
    assert [p.split(" (")[0] for p in problems] == ["record 4 is missing", "record 5 is missing"]


def test_a_torn_last_line_is_reported_and_the_chain_goes_on(tmp_path: Path) -> None:
    path, _ = written(tmp_path, 2)
    with path.open("ab") as f:
        f.write(b'{"seq": 3, "at": "2026-')  # a crash in the middle of a write
    log = AuditLog(path)
    seq, _ = log.append({"action": "firewall.enable"})
    log.close()
    assert seq == 3
    report = verify(path.read_text().splitlines())
    assert report.problems == ["line 3: not a whole audit record"]
    assert report.last_seq == 3
