"""Hostile changeset archives, crafted by hand with ``zipfile``: each is refused with
``HostileArchive`` naming the offending entry, and applying it changes nothing on the node.

Every case starts from a release root running a real v1 (built from a real package). After
the refused apply: the same ``current``, the same files, nothing written anywhere below the
test's directory (a staging directory may have come and gone), no lock left, and the next
real changeset still applies.

Each case also says where a reader without a release root catches it: ``open`` (the
structure), ``verify`` (the contents) or only ``apply`` (it needs the running tree).
"""

from __future__ import annotations

import io
import os
import random
import re
import stat
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from conveyor.changeset import (
    CHANGELOG_NAME,
    Built,
    ChangesetArchive,
    HostileArchive,
    Limits,
    ReleaseRoot,
    build_changeset,
)
from conveyor.pkgvcs.manifest import (
    MODE_EXECUTABLE,
    MODE_FILE,
    MODE_SYMLINK,
    Changes,
    FileEntry,
    Tree,
    VersionInfo,
    render_changelog,
    version_id,
)

from .test_changeset import Exe, Link, commit_versions, disk_tree, leftovers, settle, sha256, snapshot

# -- crafting archives --------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes
    mode: int = 0o100644  # the Unix mode, stored in the high 16 bits of external_attr
    compress: int = zipfile.ZIP_DEFLATED


def file_entry(data: bytes, mode: int = MODE_FILE) -> FileEntry:
    return FileEntry(mode, len(data), sha256(data))


def zip_bytes(members: list[Member], changelog: bytes | None) -> bytes:
    """A zip of ``CHANGELOG.ini`` (unless None) then ``members``, as ``build_changeset`` lays them out."""
    buffer = io.BytesIO()
    entries = ([Member(CHANGELOG_NAME, changelog)] if changelog is not None else []) + members
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        with zipfile.ZipFile(buffer, "w") as archive:
            for member in entries:
                info = zipfile.ZipInfo(member.name, date_time=(1980, 1, 1, 0, 0, 0))
                info.create_system = 3
                info.external_attr = member.mode << 16
                info.compress_type = member.compress
                archive.writestr(info, member.data)
    return buffer.getvalue()


@dataclass
class Base:
    """The package the node runs (v1), its first changeset, and a real v1 -> v2 changeset."""

    v1: str
    v2: str
    tree: Tree  # v1's files
    first: Built
    second: Built


def changelog(
    base: Base,
    *,
    added: Tree | None = None,
    modified: Tree | None = None,
    deleted: Tree | None = None,
    version: str | None = None,
) -> bytes:
    """The changelog of these changes against v1, with the id the resulting files hash to
    unless ``version`` says otherwise."""
    changes = Changes(added=added or {}, modified=modified or {}, deleted=deleted or {})
    tree = {p: e for p, e in base.tree.items() if p not in changes.deleted}
    tree.update(changes.added)
    tree.update(changes.modified)
    info = VersionInfo(
        id=version or version_id(tree),
        package="web",
        parent=base.v1,
        author="mallory",
        date="2026-01-01T00:00:00Z",
        message="nothing to see here",
        counts={"files": len(tree), **changes.counts()},
    )
    return render_changelog(info, changes).encode("ascii")


def _central_records(data: bytes) -> list[tuple[int, str]]:
    """(offset, name) of each central directory record."""
    end = data.rfind(b"PK\x05\x06")
    assert end >= 0
    (offset,) = struct.unpack_from("<I", data, end + 16)
    records = []
    while data[offset : offset + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, offset + 28)
        records.append((offset, data[offset + 46 : offset + 46 + name_len].decode("utf-8")))
        offset += 46 + name_len + extra_len + comment_len
    return records


def set_flag_bits(data: bytes, name: str, bits: int) -> bytes:
    """Set general purpose flag bits of one entry, in its local header and its central record
    (``zipfile`` clears them when writing)."""
    patched = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(name).header_offset
    assert patched[local : local + 4] == b"PK\x03\x04"
    for flags_at in [local + 6, *(off + 8 for off, n in _central_records(data) if n == name)]:
        (flags,) = struct.unpack_from("<H", patched, flags_at)
        struct.pack_into("<H", patched, flags_at, flags | bits)
    return bytes(patched)


def rename_local_header(data: bytes, name: str, other: str) -> bytes:
    """Give one entry another name (of the same length) in its local header only."""
    assert len(other) == len(name)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(name).header_offset
    at = local + 30
    assert data[at : at + len(name)] == name.encode()
    return data[:at] + other.encode() + data[at + len(name) :]


def set_file_size(data: bytes, name: str, size: int) -> bytes:
    """Make one entry claim another uncompressed size, in its local header and its central record."""
    patched = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(name).header_offset
    struct.pack_into("<I", patched, local + 22, size)
    for offset, found in _central_records(data):
        if found == name:
            struct.pack_into("<I", patched, offset + 24, size)
    return bytes(patched)


def corrupt_entry(data: bytes, name: str, seed: int = 7) -> bytes:
    """Flip bytes in the middle of one entry's compressed data."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    assert info.compress_size > 64
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    patched = bytearray(data)
    rng = random.Random(seed)
    for at in rng.sample(range(start + info.compress_size // 4, start + info.compress_size * 3 // 4), 8):
        patched[at] ^= 0xFF
    return bytes(patched)


# -- the node's package ---------------------------------------------------------------------------

DATA_V1 = b"".join(b"line %d of the data file\n" % i for i in range(20_000))
DATA_V2 = b"".join(b"line %d of the new data\n" % (i * 7) for i in range(20_000))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    top = tmp_path_factory.mktemp("hostile")
    package, (v1, v2), trees = commit_versions(
        top / "src",
        "web",
        [
            {
                "app.py": b"print('v1')\n",
                "conf/app.ini": b"[a]\nb = 1\n",
                "lnk": Link("conf"),
                "bin/run.sh": Exe(b"#!/bin/sh\n"),
                "static/logo.svg": b"<svg/>",
                "data.txt": DATA_V1,
            },
            {"app.py": b"print('v2')\n", "data.txt": DATA_V2},
        ],
    )
    out = top / "out"
    return Base(
        v1=v1,
        v2=v2,
        tree=trees[v1],
        first=build_changeset(package, parent=None, version=v1, directory=out),
        second=build_changeset(package, parent=v1, version=v2, directory=out),
    )


# -- the cases --------------------------------------------------------------------------------------

Stage = Literal["open", "verify", "apply"]
ARCHIVE = "{archive}"  # stands for the archive file's own name in Case.entry


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Base], bytes]
    entry: str  # exactly the HostileArchive's entry
    reason: str  # a regular expression its reason must contain
    stage: Stage  # the first reading step that refuses it
    limits: Limits | None = field(default=None)


def adding(
    path: str, data: bytes, *, mode: int = MODE_FILE, zip_mode: int | None = None
) -> Callable[[Base], bytes]:
    """An archive adding one file, its changelog right, its zip entry with ``zip_mode``."""
    zip_modes = {MODE_FILE: 0o100644, MODE_EXECUTABLE: 0o100755, MODE_SYMLINK: 0o120777}

    def build(base: Base) -> bytes:
        member = Member(f"files/{path}", data, zip_mode or zip_modes[mode])
        return zip_bytes([member], changelog(base, added={path.encode(): file_entry(data, mode)}))

    return build


def links(**targets: str) -> Callable[[Base], bytes]:
    """An archive adding symlinks (name -> target)."""

    def build(base: Base) -> bytes:
        members = [Member(f"files/{n}", t.encode(), 0o120777, zipfile.ZIP_STORED) for n, t in targets.items()]
        added = {n.encode(): file_entry(t.encode(), MODE_SYMLINK) for n, t in targets.items()}
        return zip_bytes(members, changelog(base, added=added))

    return build


def unlisted(*names: str, mode: int = 0o100644) -> Callable[[Base], bytes]:
    """An archive whose changelog changes nothing, holding ``names``."""

    def build(base: Base) -> bytes:
        return zip_bytes([Member(name, b"x\n", mode) for name in names], changelog(base))

    return build


def _duplicate(base: Base) -> bytes:
    x = b"first\n"
    members = [Member("files/x", x), Member("files/x", b"second\n")]
    return zip_bytes(members, changelog(base, added={b"x": file_entry(x)}))


def _duplicate_changelog(base: Base) -> bytes:
    return zip_bytes([Member(CHANGELOG_NAME, b"; second\n")], changelog(base))


def _case_collision(base: Base) -> bytes:
    upper, lower = b"upper\n", b"lower\n"
    members = [Member("files/A.txt", upper), Member("files/a.txt", lower)]
    added = {b"A.txt": file_entry(upper), b"a.txt": file_entry(lower)}
    return zip_bytes(members, changelog(base, added=added))


def _missing(base: Base) -> bytes:
    return zip_bytes([], changelog(base, added={b"x": file_entry(b"x\n")}))


def _sha_mismatch(base: Base) -> bytes:
    members = [Member("files/x", b"evil\n")]
    return zip_bytes(members, changelog(base, added={b"x": file_entry(b"good\n")}))


def _size_mismatch(base: Base) -> bytes:
    data = b"five\n"
    declared = FileEntry(MODE_FILE, len(data) + 1, sha256(data))
    return zip_bytes([Member("files/x", data)], changelog(base, added={b"x": declared}))


def _incompressible(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def _bomb(base: Base) -> bytes:
    zeros = bytes(50 << 20)
    return zip_bytes([Member("files/bomb", zeros)], changelog(base, added={b"bomb": file_entry(zeros)}))


def _lying_bomb(base: Base) -> bytes:
    # 50 MiB of zeros whose headers claim 1000 bytes: small enough to pass every declared limit
    head = bytes(1000)
    plain = zip_bytes(
        [Member("files/bomb", bytes(50 << 20))], changelog(base, added={b"bomb": file_entry(head)})
    )
    return set_file_size(plain, "files/bomb", len(head))


def _many(base: Base) -> bytes:
    data = {f"f{i}": b"%d\n" % i for i in range(5)}
    members = [Member(f"files/{n}", d) for n, d in data.items()]
    return zip_bytes(members, changelog(base, added={n.encode(): file_entry(d) for n, d in data.items()}))


def _second(base: Base) -> bytes:
    return base.second.path.read_bytes()


def _truncated(base: Base) -> bytes:
    data = base.second.path.read_bytes()
    return data[: len(data) // 2]


def _corrupt_file(base: Base) -> bytes:
    return corrupt_entry(base.second.path.read_bytes(), "files/data.txt")


def _corrupt_changelog(base: Base) -> bytes:
    text = changelog(base, added={b"x": file_entry(b"x\n")}) + b"; padding\n" * 400
    return corrupt_entry(zip_bytes([Member("files/x", b"x\n")], text), CHANGELOG_NAME)


def _no_changelog(base: Base) -> bytes:
    return zip_bytes([Member("files/x", b"x\n")], None)


def _changelog_not_ascii(base: Base) -> bytes:
    text = changelog(base).replace(b"nothing to see here", b"nothing to s\xc3\xa9e here")
    return zip_bytes([], text)


def _changelog_counts(base: Base) -> bytes:
    text = changelog(base, added={b"x": file_entry(b"x\n")}).replace(b"\nadded = 1\n", b"\nadded = 2\n")
    return zip_bytes([Member("files/x", b"x\n")], text)


def _changelog_truncated(base: Base) -> bytes:
    text = changelog(base, added={b"x": file_entry(b"x\n")})
    return zip_bytes([Member("files/x", b"x\n")], text[: text.index(b"[added]")])


def _changelog_symlink(base: Base) -> bytes:
    members = [Member(CHANGELOG_NAME, changelog(base), 0o120777)]
    return zip_bytes(members, None)


def _encrypted(base: Base) -> bytes:
    data = b"secret\n"
    plain = zip_bytes([Member("files/x", data)], changelog(base, added={b"x": file_entry(data)}))
    return set_flag_bits(plain, "files/x", 0x1)


def _two_names(base: Base) -> bytes:
    # Tools that read local headers would unpack "files/y"; the central directory says "files/x".
    data = b"which name?\n"
    plain = zip_bytes([Member("files/x", data)], changelog(base, added={b"x": file_entry(data)}))
    return rename_local_header(plain, "files/x", "files/y")


def _bzip2(base: Base) -> bytes:
    data = b"bz\n" * 100
    members = [Member("files/x", data, compress=zipfile.ZIP_BZIP2)]
    return zip_bytes(members, changelog(base, added={b"x": file_entry(data)}))


WRONG_ID = sha256(b"not the version these files make")


def _wrong_id(base: Base) -> bytes:
    data = b"print('evil')\n"
    text = changelog(base, modified={b"app.py": file_entry(data)}, version=WRONG_ID)
    return zip_bytes([Member("files/app.py", data)], text)


def _added_and_deleted(base: Base) -> bytes:
    data = b"print('both')\n"
    text = changelog(base, added={b"app.py": file_entry(data)}, deleted={b"app.py": base.tree[b"app.py"]})
    return zip_bytes([Member("files/app.py", data)], text)


def _link_over_directory(base: Base) -> bytes:
    # conf/ keeps conf/app.ini: making conf a symlink would put that file behind the link
    target = b"static"
    member = Member("files/conf", target, 0o120777, zipfile.ZIP_STORED)
    return zip_bytes([member], changelog(base, added={b"conf": file_entry(target, MODE_SYMLINK)}))


ESCAPE = "../../etc/passwd"
DIRECTORY = stat.S_IFDIR | 0o755
NOT_ZIP = r"not a zip archive"

CASES = [
    Case("absolute-below-files", unlisted("files//etc/x"), "files//etc/x", r"unsafe path.*absolute", "open"),
    Case("absolute", unlisted("/etc/passwd"), "/etc/passwd", r"unexpected entry", "open"),
    Case("dotdot", unlisted("files/../x"), "files/../x", r"unsafe path.*'\.\.'", "open"),
    Case("dotdot-deep", unlisted("files/a/../../x"), "files/a/../../x", r"unsafe path.*'\.\.'", "open"),
    Case("metadata", unlisted("files/.conveyor/HEAD"), "files/.conveyor/HEAD", r"inside \.conveyor", "open"),
    Case("symlink-up", links(evil=ESCAPE), "files/evil", r"symlink to .* leads outside the release", "apply"),
    Case("symlink-absolute", links(evil="/etc/passwd"), "files/evil", r"'/etc/passwd' is absolute", "apply"),
    Case("symlink-chain", links(l1=".", l2="l1/.."), "files/l2", r"leads outside the release", "apply"),
    Case("symlink-loop", links(l1="l2", l2="l1"), "files/l1", r"loops", "apply"),
    Case("symlink-nul", links(evil="conf\x00x"), "files/evil", r"contains a NUL byte", "apply"),
    Case("symlink-long", links(far="a/" * 2100), "files/far", r"longer than 4096", "open"),
    Case("below-a-symlink", adding("lnk/x", b"x\n"), "files/lnk/x", r"lies below the file lnk", "apply"),
    Case("link-over-a-dir", _link_over_directory, "files/conf/app.ini", r"below the file conf", "apply"),
    Case("char-device", adding("dev", b"", zip_mode=stat.S_IFCHR | 0o644), "files/dev", r"device", "open"),
    Case("fifo", adding("pipe", b"", zip_mode=stat.S_IFIFO | 0o644), "files/pipe", r"FIFO", "open"),
    Case("directory-entry", unlisted("files/dir/", mode=DIRECTORY), "files/dir/", r"unexpected", "open"),
    Case("directory-mode", unlisted("files/dir", mode=DIRECTORY), "files/dir", r"a directory", "open"),
    Case("duplicate", _duplicate, "files/x", r"appears twice", "open"),
    Case("duplicate-changelog", _duplicate_changelog, CHANGELOG_NAME, r"appears twice", "open"),
    Case("case-collision", _case_collision, "files/a.txt", r"collides with 'files/A.txt'", "open"),
    Case("not-listed", unlisted("files/x"), "files/x", r"not listed in CHANGELOG\.ini", "open"),
    Case("listed-missing", _missing, "files/x", r"listed in CHANGELOG\.ini but missing", "open"),
    Case("sha-mismatch", _sha_mismatch, "files/x", r"sha256 \w+ does not match", "verify"),
    Case("size-mismatch", _size_mismatch, "files/x", r"size 5 does not match CHANGELOG\.ini \(6\)", "open"),
    Case("mode-mismatch", adding("x", b"x\n", zip_mode=0o100755), "files/x", r"mode 100755 does not", "open"),
    Case(
        "link-mode",
        adding("x", b"a", mode=MODE_SYMLINK, zip_mode=0o100644),
        "files/x",
        r"mode 100644",
        "open",
    ),
    Case(
        "archive-too-big",
        _second,
        ARCHIVE,
        r"over the limit of 4096",
        "open",
        Limits(max_archive_bytes=4096),
    ),
    Case(
        "unpacks-too-big",
        adding("noise", _incompressible(5000)),
        ARCHIVE,
        r"unpacks to \d+ bytes, over the limit of 4096",
        "open",
        Limits(max_unpacked_bytes=4096),
    ),
    Case("zip-bomb", _bomb, "files/bomb", r"compression ratio.*zip bomb", "open"),
    Case("zip-bomb-lying", _lying_bomb, "files/bomb", r"cannot be unpacked|unpacks to more than", "verify"),
    Case(
        "too-many-entries",
        _many,
        ARCHIVE,
        r"holds 6 entries, over the limit of 5",
        "open",
        Limits(max_entries=5),
    ),
    Case("truncated", _truncated, ARCHIVE, r"not a zip archive, or truncated", "open"),
    Case("random-bytes", lambda base: random.Random(3).randbytes(4000), ARCHIVE, NOT_ZIP, "open"),
    Case("empty", lambda base: b"", ARCHIVE, NOT_ZIP, "open"),
    Case("corrupt-deflate", _corrupt_file, "files/data.txt", r"cannot be unpacked|sha256|unpacks", "verify"),
    Case("corrupt-changelog", _corrupt_changelog, CHANGELOG_NAME, r"cannot be unpacked", "open"),
    Case("no-changelog", _no_changelog, ARCHIVE, r"has no CHANGELOG\.ini", "open"),
    Case("changelog-not-ascii", _changelog_not_ascii, CHANGELOG_NAME, r"not ASCII", "open"),
    Case("changelog-counts", _changelog_counts, CHANGELOG_NAME, r"counts .* do not match", "open"),
    Case("changelog-truncated", _changelog_truncated, CHANGELOG_NAME, r"missing section \[added\]", "open"),
    Case("changelog-symlink", _changelog_symlink, CHANGELOG_NAME, r"not a regular file", "open"),
    Case("encrypted", _encrypted, "files/x", r"encrypted", "open"),
    Case("two-names", _two_names, "files/x", r"cannot be unpacked", "verify"),
    Case("bzip2", _bzip2, "files/x", r"compression method 12", "open"),
    Case("wrong-id", _wrong_id, CHANGELOG_NAME, rf"make version \w{{12}}, not {WRONG_ID[:12]}", "apply"),
    Case("added-and-deleted", _added_and_deleted, CHANGELOG_NAME, r"more than one of added", "open"),
]


def _check(error: HostileArchive, case: Case, archive: Path) -> None:
    assert error.entry == case.entry.format(archive=archive.name), error
    assert re.search(case.reason, error.reason), error
    assert str(error) == f"{error.entry}: {error.reason}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_hostile_archive_is_refused_and_changes_nothing(case: Case, base: Base, tmp_path: Path) -> None:
    root = tmp_path / "node"
    releases = ReleaseRoot(root)
    releases.apply(base.first.path)
    settle(releases)
    archive = tmp_path / "incoming" / "changeset.zip"
    archive.parent.mkdir()
    archive.write_bytes(case.build(base))
    target = os.readlink(root / "current")
    before = snapshot(tmp_path, volatile=(root, root / "releases"))

    # Where a reader with no release root catches it.
    if case.stage == "open":
        with pytest.raises(HostileArchive) as early:
            ChangesetArchive.open(archive, limits=case.limits)
        _check(early.value, case, archive)
    else:
        with ChangesetArchive.open(archive, limits=case.limits) as opened:
            if case.stage == "verify":
                with pytest.raises(HostileArchive) as late:
                    opened.verify()
                _check(late.value, case, archive)
            else:
                opened.verify()  # only the running tree shows what is wrong

    with pytest.raises(HostileArchive) as caught:
        ReleaseRoot(root, limits=case.limits).apply(archive)
    _check(caught.value, case, archive)

    assert os.readlink(root / "current") == target
    assert releases.current() == base.v1
    assert disk_tree(root / "current") == base.tree
    assert snapshot(tmp_path, volatile=(root, root / "releases")) == before
    assert leftovers(root) == []  # no lock, no staging directory

    # The node is as it was: the real next changeset applies.
    assert releases.apply(base.second.path).version == base.v2
