"""Changeset archives: a deterministic zip of the added and modified files plus ``CHANGELOG.ini``.

Layout (see ``docs/formats.md``)::

    CHANGELOG.ini          the package changelog of the new version against the parent
    files/<path>           one entry per added or modified file, sorted by path bytes

Entries carry fixed timestamps (1980-01-01 00:00), Unix attributes holding the
file's mode, and nothing else that varies, so the same change always gives the
same bytes and therefore the same id (the archive's sha256).

Reading trusts nothing: :meth:`ChangesetArchive.open` checks the structure
(names, types, modes, sizes, limits, the changelog) before any content is
read, and :meth:`ChangesetArchive.extract` checks every byte against its
sha256 while writing into a staging directory the caller made for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat as st
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.changeset.errors import ChangesetError, HostileArchive
from conveyor.pkgvcs.errors import CorruptFile, UnknownVersion
from conveyor.pkgvcs.manifest import (
    MODE_EXECUTABLE,
    MODE_FILE,
    MODE_SYMLINK,
    Changes,
    FileEntry,
    Tree,
    VersionInfo,
    diff_trees,
    parse_changelog,
    render_changelog,
)
from conveyor.pkgvcs.package import Package
from conveyor.pkgvcs.paths import check_relative, porcelain_quote
from conveyor.pkgvcs.scan import read_content

if TYPE_CHECKING:
    from conveyor.changeset.releases import ReleaseRoot

__all__ = [
    "CHANGELOG_NAME",
    "FILES_PREFIX",
    "Built",
    "ChangesetArchive",
    "Limits",
    "build_between_releases",
    "build_changeset",
    "changes_between",
    "make_parents",
    "sha256_file",
    "write_archive",
]

CHANGELOG_NAME = "CHANGELOG.ini"
FILES_PREFIX = "files/"
_EPOCH = (1980, 1, 1, 0, 0, 0)
_UNIX = 3  # ZipInfo.create_system: the external attributes hold a Unix mode
_CHUNK = 1 << 20
_ZIP_MODES = {MODE_FILE: 0o100644, MODE_EXECUTABLE: 0o100755, MODE_SYMLINK: 0o120777}
_MAX_CHANGELOG = 64 << 20
_MAX_SYMLINK = 4096


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What an archive may claim before it is refused unread."""

    max_archive_bytes: int = 2 << 30
    max_unpacked_bytes: int = 8 << 30
    max_entries: int = 1_000_000
    max_ratio: float = 200.0  # uncompressed / compressed size of one entry
    ratio_floor_bytes: int = 1 << 20  # entries smaller than this are not judged by ratio


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """A changeset written to disk: its id (the archive's sha256) and what it holds."""

    id: str
    path: Path
    size: int
    info: VersionInfo
    changes: Changes


def _entry_name(path: bytes) -> str:
    try:
        return FILES_PREFIX + path.decode("utf-8")
    except UnicodeDecodeError:
        raise ChangesetError(
            f"{porcelain_quote(path)}: zip entry names must be UTF-8; rename the file to ship it"
        ) from None


def _zip_info(name: str, mode: int, *, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.create_system = _UNIX
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    return info


def changes_between(package: Package, parent: str | None, version: str) -> tuple[VersionInfo, Changes]:
    """The changelog of ``version`` against ``parent`` (any earlier version, or None for all files)."""
    try:
        info, changes = package.changelog(version)
    except UnknownVersion:
        info, changes = None, None
    if info is not None and changes is not None and info.parent == parent and info.id == version:
        return info, changes  # the usual case: against its own parent, recorded when it was committed
    info, tree = package.version(version)
    before: Tree = package.version(parent)[1] if parent else {}
    changes = diff_trees(before, tree)
    counts = {"files": len(tree), **changes.counts()}
    return info._replace(parent=parent, counts=counts), changes


def build_changeset(
    package: Package, *, parent: str | None, version: str, directory: Path, compresslevel: int = 6
) -> Built:
    """Write the changeset taking ``package`` from ``parent`` to ``version`` as ``<directory>/<id>.zip``."""
    if parent == version:
        raise ChangesetError(f"--from and --to are the same version {version[:12]}: nothing to ship")
    info, changes = changes_between(package, parent, version)
    return write_archive(
        info,
        changes,
        lambda _, entry: package.objects.get(entry.sha256),
        directory,
        compresslevel=compresslevel,
    )


def build_between_releases(
    releases: ReleaseRoot, *, parent: str | None, version: str, directory: Path, compresslevel: int = 6
) -> Built:
    """The changeset from ``parent`` to ``version``, both releases kept in ``releases`` (the deployer's
    mirror of a package): manifests from their ``.conveyor/``, contents from ``version``'s files,
    each checked against its sha256 as it is read."""
    if parent == version:
        raise ChangesetError(f"--from and --to are the same version {version[:12]}: nothing to ship")
    info, tree = releases.package(version).version(version)
    before: Tree = releases.package(parent).version(parent)[1] if parent else {}
    changes = diff_trees(before, tree)
    info = info._replace(parent=parent, counts={"files": len(tree), **changes.counts()})
    root = os.fsencode(releases.release_dir(version))

    def content(path: bytes, entry: FileEntry) -> bytes:
        data = read_content(root, path, entry.mode)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ChangesetError(
                f"release {version[:12]}: {porcelain_quote(path)} no longer matches its manifest"
            )
        return data

    return write_archive(info, changes, content, directory, compresslevel=compresslevel)


def write_archive(
    info: VersionInfo,
    changes: Changes,
    content: Callable[[bytes, FileEntry], bytes],
    directory: Path,
    *,
    compresslevel: int = 6,
) -> Built:
    """The deterministic archive of ``changes`` (contents from ``content``) as ``<directory>/<id>.zip``."""
    shipped = {**changes.added, **changes.modified}
    names = {path: _entry_name(path) for path in shipped}
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{info.id}.{os.getpid()}.{secrets.token_hex(4)}.zip.tmp"
    try:
        with zipfile.ZipFile(tmp, "w", compresslevel=compresslevel) as archive:
            changelog = render_changelog(info, changes).encode("ascii")
            archive.writestr(_zip_info(CHANGELOG_NAME, 0o100644, compress=True), changelog)
            for path in sorted(shipped):
                entry = shipped[path]
                data = content(path, entry)
                zinfo = _zip_info(names[path], _ZIP_MODES[entry.mode], compress=entry.mode != MODE_SYMLINK)
                archive.writestr(zinfo, data, compresslevel=compresslevel)
        digest = sha256_file(tmp)
        target = directory / f"{digest}.zip"
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return Built(id=digest, path=target, size=target.stat().st_size, info=info, changes=changes)


# -- reading -----------------------------------------------------------------------------------


def _mode_of(info: zipfile.ZipInfo) -> int | None:
    """The Unix mode an entry claims, as a manifest mode; None when it is not a regular file or link."""
    unix = info.external_attr >> 16 if info.create_system == _UNIX else 0
    kind = st.S_IFMT(unix)
    if kind in (0, st.S_IFREG):  # no type bits (some zip tools write permissions only): a file
        return MODE_EXECUTABLE if unix & 0o100 else MODE_FILE
    if kind == st.S_IFLNK:
        return MODE_SYMLINK
    return None


def _kind_name(info: zipfile.ZipInfo) -> str:
    kind = st.S_IFMT(info.external_attr >> 16)
    return {
        st.S_IFDIR: "a directory",
        st.S_IFCHR: "a character device",
        st.S_IFBLK: "a block device",
        st.S_IFIFO: "a FIFO",
        st.S_IFSOCK: "a socket",
    }.get(kind, f"an entry of unknown type {kind:o}")


class ChangesetArchive:
    """An archive opened for reading, its structure already checked against its changelog."""

    def __init__(self, path: Path, *, limits: Limits | None = None) -> None:
        self.path = path
        self.limits = limits or Limits()
        self._zip: zipfile.ZipFile | None = None
        self.entries: dict[bytes, zipfile.ZipInfo] = {}
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, path: Path, *, limits: Limits | None = None) -> ChangesetArchive:
        return cls(path, limits=limits)

    def __enter__(self) -> ChangesetArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    @property
    def id(self) -> str:
        return sha256_file(self.path)

    # -- structure ------------------------------------------------------------------------

    def _open(self) -> None:
        name = self.path.name
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise HostileArchive(name, f"cannot be read: {exc.strerror}") from None
        if size > self.limits.max_archive_bytes:
            raise HostileArchive(name, f"is {size} bytes, over the limit of {self.limits.max_archive_bytes}")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise HostileArchive(name, f"not a zip archive, or truncated ({exc})") from None
        infos = self._zip.infolist()
        if len(infos) > self.limits.max_entries:
            raise HostileArchive(
                name, f"holds {len(infos)} entries, over the limit of {self.limits.max_entries}"
            )
        changelog = self._check_entries(infos)
        self.info, self.changes = self._read_changelog(changelog)
        self._match_changelog()

    def _check_entries(self, infos: list[zipfile.ZipInfo]) -> zipfile.ZipInfo:
        changelog: zipfile.ZipInfo | None = None
        folded: dict[str, str] = {}
        total = 0
        for info in infos:
            name = info.filename
            if name == CHANGELOG_NAME:
                if changelog is not None:
                    raise HostileArchive(name, "appears twice in the archive")
                changelog = info
            elif not name.startswith(FILES_PREFIX) or name.endswith("/"):
                raise HostileArchive(name, f"unexpected entry: only {CHANGELOG_NAME} and files/<path> belong")
            self._check_entry(info)
            total += info.file_size
            key = name.casefold()
            if key in folded:
                same = folded[key] == name
                raise HostileArchive(
                    name,
                    "appears twice in the archive"
                    if same
                    else f"collides with {folded[key]!r} when case is ignored",
                )
            folded[key] = name
            if name != CHANGELOG_NAME:
                path = os.fsencode(name[len(FILES_PREFIX) :])
                try:
                    check_relative(path)
                except ValueError as exc:
                    raise HostileArchive(name, f"unsafe path: {exc}") from None
                self.entries[path] = info
        if total > self.limits.max_unpacked_bytes:
            raise HostileArchive(
                self.path.name,
                f"unpacks to {total} bytes, over the limit of {self.limits.max_unpacked_bytes}",
            )
        if changelog is None:
            raise HostileArchive(self.path.name, f"has no {CHANGELOG_NAME}")
        return changelog

    def _check_entry(self, info: zipfile.ZipInfo) -> None:
        name = info.filename
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise HostileArchive(name, "absolute path")
        if "\x00" in name:
            raise HostileArchive(name, "NUL byte in the name")
        if info.flag_bits & 0x1:
            raise HostileArchive(name, "encrypted entries are not accepted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise HostileArchive(name, f"compression method {info.compress_type} is not accepted")
        if _mode_of(info) is None:
            raise HostileArchive(name, f"is {_kind_name(info)}; only regular files and symlinks are accepted")
        limits = self.limits
        if info.file_size >= limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise HostileArchive(
                name,
                f"suspicious compression ratio ({info.file_size} bytes from {info.compress_size}; "
                f"the limit is {limits.max_ratio:g}:1) — a zip bomb?",
            )

    def _read_changelog(self, info: zipfile.ZipInfo) -> tuple[VersionInfo, Changes]:
        if info.file_size > _MAX_CHANGELOG or _mode_of(info) != MODE_FILE:
            raise HostileArchive(CHANGELOG_NAME, "is not a regular file of sensible size")
        data = self._read(info, info.file_size)
        try:
            return parse_changelog(data.decode("ascii"), CHANGELOG_NAME)
        except UnicodeDecodeError as exc:
            raise HostileArchive(CHANGELOG_NAME, f"not ASCII at byte {exc.start}") from None
        except CorruptFile as exc:
            raise HostileArchive(
                CHANGELOG_NAME, str(exc).removeprefix(f"{CHANGELOG_NAME}:").strip()
            ) from None

    def _match_changelog(self) -> None:
        shipped = {**self.changes.added, **self.changes.modified}
        overlap = (self.changes.added.keys() | self.changes.modified.keys()) & self.changes.deleted.keys()
        if overlap or len(shipped) != len(self.changes.added) + len(self.changes.modified):
            some = porcelain_quote(sorted(overlap or shipped.keys())[0])
            raise HostileArchive(
                CHANGELOG_NAME, f"{some} is listed in more than one of added/modified/deleted"
            )
        for path, zinfo in self.entries.items():
            entry = shipped.get(path)
            if entry is None:
                raise HostileArchive(zinfo.filename, f"is not listed in {CHANGELOG_NAME}")
            mode = _mode_of(zinfo)
            if mode != entry.mode:
                raise HostileArchive(
                    zinfo.filename, f"mode {mode or 0:o} does not match {CHANGELOG_NAME} ({entry.mode:o})"
                )
            if zinfo.file_size != entry.size:
                raise HostileArchive(
                    zinfo.filename, f"size {zinfo.file_size} does not match {CHANGELOG_NAME} ({entry.size})"
                )
            if entry.mode == MODE_SYMLINK and entry.size > _MAX_SYMLINK:
                raise HostileArchive(zinfo.filename, f"symlink target longer than {_MAX_SYMLINK} bytes")
        for path in shipped.keys() - self.entries.keys():
            raise HostileArchive(
                FILES_PREFIX + porcelain_quote(path), f"is listed in {CHANGELOG_NAME} but missing"
            )

    # -- content --------------------------------------------------------------------------

    def _read(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        chunks = list(self._chunks(info, limit))
        return b"".join(chunks)

    def _chunks(self, info: zipfile.ZipInfo, limit: int) -> Iterator[bytes]:
        """The entry's bytes, never more than ``limit`` of them (the size it declared)."""
        assert self._zip is not None
        seen = 0
        try:
            with self._zip.open(info) as handle:
                while chunk := handle.read(_CHUNK):
                    seen += len(chunk)
                    if seen > limit:
                        raise HostileArchive(
                            info.filename, f"unpacks to more than the {limit} bytes it declares"
                        )
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
            raise HostileArchive(info.filename, f"cannot be unpacked ({exc})") from None

    def content(self, path: bytes) -> bytes:
        """One shipped file's bytes, checked against its sha256."""
        info = self.entries[path]
        expected = {**self.changes.added, **self.changes.modified}[path]
        data = self._read(info, expected.size)
        self._check_digest(info, expected, hashlib.sha256(data).hexdigest(), len(data))
        return data

    @staticmethod
    def _check_digest(info: zipfile.ZipInfo, expected: FileEntry, actual: str, size: int) -> None:
        if size != expected.size:
            raise HostileArchive(
                info.filename, f"unpacks to {size} bytes, {CHANGELOG_NAME} says {expected.size}"
            )
        if actual != expected.sha256:
            raise HostileArchive(
                info.filename, f"sha256 {actual} does not match {CHANGELOG_NAME} ({expected.sha256})"
            )

    def verify(self) -> None:
        """Read every shipped file and check it against the changelog, writing nothing."""
        shipped = {**self.changes.added, **self.changes.modified}
        for path in sorted(self.entries):
            info, expected = self.entries[path], shipped[path]
            digest = hashlib.sha256()
            size = 0
            for chunk in self._chunks(info, expected.size):
                digest.update(chunk)
                size += len(chunk)
            self._check_digest(info, expected, digest.hexdigest(), size)

    def extract(self, staging: Path, made: set[bytes] | None = None) -> None:
        """Write every shipped file below ``staging`` (a fresh directory), checking each as it goes.

        Paths were checked when the archive was opened (relative, no ``..``,
        none below another file of the new tree is the caller's check);
        directories are created here, never followed through a symlink.
        """
        shipped = {**self.changes.added, **self.changes.modified}
        root = os.fsencode(staging)
        for path in sorted(self.entries):
            info, expected = self.entries[path], shipped[path]
            full = root + b"/" + path
            make_parents(root, path, made)
            if expected.mode == MODE_SYMLINK:
                target = self.content(path)
                os.symlink(target, full)
                continue
            digest = hashlib.sha256()
            size = 0
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                for chunk in self._chunks(info, expected.size):
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
            self._check_digest(info, expected, digest.hexdigest(), size)
            os.chmod(full, 0o755 if expected.mode == MODE_EXECUTABLE else 0o644)


def make_parents(root: bytes, path: bytes, made: set[bytes] | None = None) -> None:
    """Create the parent directories of ``path`` below ``root``; refuse to pass through anything else.

    ``made`` remembers the directories already made or checked, across calls.
    """
    current = root
    for part in path.split(b"/")[:-1]:
        current = current + b"/" + part
        if made is not None and current in made:
            continue
        try:
            os.mkdir(current)
            os.chmod(current, 0o755)  # noqa: S103 - not what the umask leaves: services read releases
        except FileExistsError:
            if not st.S_ISDIR(os.lstat(current).st_mode):
                below = os.fsdecode(current[len(root) + 1 :])
                raise HostileArchive(
                    FILES_PREFIX + os.fsdecode(path), f"lies below {below!r}, which is not a directory"
                ) from None
        if made is not None:
            made.add(current)
