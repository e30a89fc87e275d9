"""Versions: the tree of files, its id, the manifest and changelog INI files."""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from conveyor.pkgvcs import ini
from conveyor.pkgvcs.errors import CorruptFile
from conveyor.pkgvcs.paths import check_relative, ini_quote, unquote

__all__ = [
    "MODE_EXECUTABLE",
    "MODE_FILE",
    "MODE_SYMLINK",
    "Changes",
    "FileEntry",
    "Tree",
    "VersionInfo",
    "diff_trees",
    "parse_changelog",
    "parse_manifest",
    "render_changelog",
    "render_manifest",
    "tree_section",
    "version_id",
]

MODE_FILE = 0o100644
MODE_EXECUTABLE = 0o100755
MODE_SYMLINK = 0o120000
_MODES = {MODE_FILE, MODE_EXECUTABLE, MODE_SYMLINK}
FORMAT = 1
_SHA = re.compile(r"[0-9a-f]{64}")


class FileEntry(NamedTuple):
    """One file of a version; for a symlink, ``sha256`` and ``size`` describe its target."""

    mode: int
    size: int
    sha256: str


Tree = dict[bytes, FileEntry]


def _file_line(path: bytes, entry: FileEntry) -> str:
    return f"{ini_quote(path)} = {entry.mode:o} {entry.size} {entry.sha256}"


def tree_section(name: str, tree: Tree) -> list[str]:
    """The section's lines, files sorted by path bytes: the canonical form."""
    return [f"[{name}]", *(_file_line(path, tree[path]) for path in sorted(tree))]


def version_id(tree: Tree) -> str:
    """sha256 of the canonical ``[files]`` section: the same tree always has the same id."""
    canonical = "\n".join(tree_section("files", tree)) + "\n"
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class VersionInfo(NamedTuple):
    id: str
    package: str
    parent: str | None
    author: str
    date: str  # ISO 8601, UTC
    message: str
    counts: dict[str, int]  # files, added, modified, deleted


def _header(info: VersionInfo) -> list[tuple[str, str]]:
    return [
        ("format", str(FORMAT)),
        ("id", info.id),
        ("package", ini.quote_text(info.package)),
        ("parent", info.parent or ""),
        ("author", ini.quote_text(info.author)),
        ("date", info.date),
        ("message", ini.quote_text(info.message)),
        *((key, str(info.counts[key])) for key in ("files", "added", "modified", "deleted")),
    ]


def render_manifest(info: VersionInfo, tree: Tree) -> str:
    head = ini.render([("version", _header(info))], comment="conveyor package version manifest")
    return head + "\n" + "\n".join(tree_section("files", tree)) + "\n"


def _parse_files(section: ini.Section, source: str) -> Tree:
    tree: Tree = {}
    for key, value, line in section.entries:
        try:
            path = unquote(key)
            check_relative(path)
        except ValueError as exc:
            raise CorruptFile(f"{source}:{line}: bad path {key}: {exc}") from None
        parts = value.split()
        if len(parts) != 3:
            raise CorruptFile(f"{source}:{line}: expected '<mode> <size> <sha256>', got {value!r}")
        mode_text, size_text, sha = parts
        try:
            mode, size = int(mode_text, 8), int(size_text)
        except ValueError:
            raise CorruptFile(f"{source}:{line}: bad mode or size in {value!r}") from None
        if mode not in _MODES or size < 0 or not _SHA.fullmatch(sha):
            raise CorruptFile(f"{source}:{line}: bad mode, size or sha256 in {value!r}")
        if path in tree:
            raise CorruptFile(f"{source}:{line}: {key} is listed twice")
        tree[path] = FileEntry(mode, size, sha)
    _check_no_file_under_another(tree, source)
    return tree


def _check_no_file_under_another(tree: Tree, source: str) -> None:
    """A path below a file or symlink could be written through that symlink: refuse it."""
    for path in tree:
        cut = path.rfind(b"/")
        while cut > 0:
            parent = path[:cut]
            if parent in tree:
                raise CorruptFile(f"{source}: {ini_quote(path)} lies below the file {ini_quote(parent)}")
            cut = parent.rfind(b"/")


def _sections(text: str, source: str, expected: list[str]) -> dict[str, ini.Section]:
    found = {s.name: s for s in ini.parse(text, source)}
    missing = [name for name in expected if name not in found]
    if missing:
        raise CorruptFile(f"{source}: missing section [{missing[0]}] (truncated or hand-edited?)")
    return found


def _info(section: ini.Section, source: str) -> VersionInfo:
    values = section.values(source)
    try:
        if values["format"] != str(FORMAT):
            raise CorruptFile(f"{source}:{section.line}: format {values['format']} is not supported")
        counts = {key: int(values[key]) for key in ("files", "added", "modified", "deleted")}
        text = {
            key: ini.unquote_text(values[key], source, section.line)
            for key in ("package", "author", "message")
        }
        return VersionInfo(
            id=values["id"],
            package=text["package"],
            parent=values["parent"] or None,
            author=text["author"],
            date=values["date"],
            message=text["message"],
            counts=counts,
        )
    except KeyError as exc:
        raise CorruptFile(f"{source}:{section.line}: [{section.name}] lacks {exc.args[0]!r}") from None
    except ValueError as exc:
        raise CorruptFile(f"{source}:{section.line}: [{section.name}]: {exc}") from None


def parse_manifest(text: str, source: str) -> tuple[VersionInfo, Tree]:
    """Read a manifest and check it: paths, values, counts and the id."""
    sections = _sections(text, source, ["version", "files"])
    info = _info(sections["version"], source)
    tree = _parse_files(sections["files"], source)
    if info.counts["files"] != len(tree):
        raise CorruptFile(f"{source}: says {info.counts['files']} files but lists {len(tree)}")
    if version_id(tree) != info.id:
        raise CorruptFile(f"{source}: the files listed do not hash to the id {info.id}")
    return info, tree


class Changes:
    """Added and modified files as they are now; deleted ones as they were."""

    __slots__ = ("added", "deleted", "modified")

    def __init__(
        self, added: Tree | None = None, modified: Tree | None = None, deleted: Tree | None = None
    ) -> None:
        self.added: Tree = added if added is not None else {}
        self.modified: Tree = modified if modified is not None else {}
        self.deleted: Tree = deleted if deleted is not None else {}

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.deleted)

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "modified": len(self.modified), "deleted": len(self.deleted)}


def diff_trees(old: Tree, new: Tree) -> Changes:
    changes = Changes()
    for path, entry in new.items():
        before = old.get(path)
        if before is None:
            changes.added[path] = entry
        elif before.sha256 != entry.sha256 or before.mode != entry.mode:
            changes.modified[path] = entry
    for path, entry in old.items():
        if path not in new:
            changes.deleted[path] = entry
    return changes


def render_changelog(info: VersionInfo, changes: Changes) -> str:
    header = [(k, v) for k, v in _header(info) if k != "files"]
    head = ini.render([("changelog", header)], comment="conveyor package changelog")
    body = [
        "\n".join(tree_section(name, getattr(changes, name))) for name in ("added", "modified", "deleted")
    ]
    return head + "\n" + "\n\n".join(body) + "\n"


def parse_changelog(text: str, source: str) -> tuple[VersionInfo, Changes]:
    sections = _sections(text, source, ["changelog", "added", "modified", "deleted"])
    values = sections["changelog"].values(source)
    values.setdefault("files", "0")
    section = ini.Section("changelog", sections["changelog"].line, [(k, v, 0) for k, v in values.items()])
    info = _info(section, source)
    changes = Changes(
        added=_parse_files(sections["added"], source),
        modified=_parse_files(sections["modified"], source),
        deleted=_parse_files(sections["deleted"], source),
    )
    if changes.counts() != {k: info.counts[k] for k in ("added", "modified", "deleted")}:
        raise CorruptFile(f"{source}: the counts in [changelog] do not match the files listed")
    return info, changes
