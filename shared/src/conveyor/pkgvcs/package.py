"""A tracked package: its metadata directory, versions, status and commits."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conveyor.pkgvcs import ini
from conveyor.pkgvcs.errors import CorruptFile, NotAPackage, NothingToCommit, UnknownVersion
from conveyor.pkgvcs.index import Index, Stat
from conveyor.pkgvcs.manifest import (
    Changes,
    FileEntry,
    Tree,
    VersionInfo,
    diff_trees,
    parse_changelog,
    parse_manifest,
    render_changelog,
    render_manifest,
    version_id,
)
from conveyor.pkgvcs.parallel import compare, parallel_compare
from conveyor.pkgvcs.scan import METADATA_DIR, Ignore, iter_files, read_content
from conveyor.pkgvcs.storage import ObjectStore, atomic_write, package_lock

__all__ = ["Package", "Status"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ID = re.compile(r"^[0-9a-f]{64}$")


class Status:
    """What differs between the working tree and the current version."""

    __slots__ = ("added", "deleted", "head", "modified")

    def __init__(
        self, head: str | None, added: list[bytes], modified: list[bytes], deleted: list[bytes]
    ) -> None:
        self.head = head
        self.added = added
        self.modified = modified
        self.deleted = deleted

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.deleted)

    def entries(self) -> list[tuple[str, bytes]]:
        """``(code, path)`` with code A, M or D, sorted by path bytes."""
        marked = [("A", p) for p in self.added] + [("M", p) for p in self.modified]
        marked += [("D", p) for p in self.deleted]
        return sorted(marked, key=lambda item: item[1])


class Package:
    """A directory whose versions live in ``<root>/.conveyor/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = root / os.fsdecode(METADATA_DIR)
        if not (self.meta / "HEAD").exists():
            raise NotAPackage(f"{root} is not a package: run `conveyor vcs init {root} --name NAME`")
        self.objects = ObjectStore(self.meta / "objects")
        self.lock_path = self.meta / "index.lock"
        self.index_path = self.meta / "index"

    # -- creating and finding ---------------------------------------------------

    @classmethod
    def init(cls, root: Path, name: str) -> Package:
        if not _NAME.fullmatch(name):
            raise ValueError(f"package name {name!r}: use letters, digits, '.', '_' or '-'")
        meta = root / os.fsdecode(METADATA_DIR)
        if (meta / "HEAD").exists():
            raise NotAPackage(f"{root} is already a package")
        for sub in ("objects", "versions", "changelog", "tags"):
            (meta / sub).mkdir(parents=True, exist_ok=True)
        atomic_write(meta / "package.ini", ini.render([("package", [("name", name)])]).encode())
        atomic_write(meta / "HEAD", b"\n")
        return cls(root)

    @classmethod
    def find(cls, start: Path) -> Package:
        """The package containing ``start`` (the nearest parent with ``.conveyor/HEAD``)."""
        here = start.resolve()
        for candidate in (here, *here.parents):
            if (candidate / ".conveyor" / "HEAD").exists():
                return cls(candidate)
        raise NotAPackage(f"{start} is not inside a package: run `conveyor vcs init --name NAME` first")

    @property
    def name(self) -> str:
        source = str(self.meta / "package.ini")
        sections = {s.name: s for s in ini.parse((self.meta / "package.ini").read_text(), source)}
        if "package" not in sections:
            raise CorruptFile(f"{source}: missing section [package]")
        return sections["package"].values(source).get("name", "")

    # -- versions and references -----------------------------------------------

    def head(self) -> str | None:
        text = (self.meta / "HEAD").read_text().strip()
        if text and not _ID.fullmatch(text):
            raise CorruptFile(f"{self.meta / 'HEAD'}:1: not a version id: {text[:80]!r}")
        return text or None

    def resolve(self, ref: str) -> str:
        """A version id from ``HEAD``, a tag, a full id or a unique prefix of at least 4."""
        if ref == "HEAD":
            head = self.head()
            if head is None:
                raise UnknownVersion("HEAD: nothing has been committed yet")
            return head
        tag = self.meta / "tags" / ref
        if "/" not in ref and tag.is_file():
            return tag.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{4,64}", ref):
            matches = [p.stem for p in (self.meta / "versions").glob(f"{ref}*.ini")]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise UnknownVersion(f"{ref} is ambiguous: {', '.join(sorted(m[:12] for m in matches))}")
        raise UnknownVersion(f"no version, tag or id prefix {ref!r} in {self.name}")

    def version(self, version: str) -> tuple[VersionInfo, Tree]:
        path = self.meta / "versions" / f"{version}.ini"
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise UnknownVersion(f"version {version} has no manifest ({path})") from None
        except UnicodeDecodeError as exc:
            raise CorruptFile(f"{path}: not ASCII at byte {exc.start}") from None
        info, tree = parse_manifest(text, str(path))
        if info.id != version:
            raise CorruptFile(f"{path}: holds version {info.id}, not {version}")
        return info, tree

    def changelog(self, version: str) -> tuple[VersionInfo, Changes]:
        path = self.meta / "changelog" / f"{version}.ini"
        try:
            return parse_changelog(path.read_text(encoding="ascii"), str(path))
        except FileNotFoundError:
            raise UnknownVersion(f"version {version} has no changelog ({path})") from None

    def history(self) -> Iterator[VersionInfo]:
        """From HEAD back through the parents."""
        current = self.head()
        seen: set[str] = set()
        while current is not None and current not in seen:
            seen.add(current)
            info, _ = self.version(current)
            yield info
            current = info.parent

    def tag(self, name: str, ref: str = "HEAD") -> str:
        if not _NAME.fullmatch(name) or _ID.fullmatch(name):
            raise ValueError(f"tag name {name!r}: use letters, digits, '.', '_' or '-'")
        version = self.resolve(ref)
        self.version(version)  # it must exist
        atomic_write(self.meta / "tags" / name, f"{version}\n".encode())
        return version

    def tags(self) -> dict[str, str]:
        return {p.name: p.read_text().strip() for p in sorted((self.meta / "tags").iterdir()) if p.is_file()}

    # -- the working tree -------------------------------------------------------

    def load_index(self) -> Index:
        """The stat cache, with the tree of HEAD (from the manifest if the cache is stale)."""
        index = Index.load(self.index_path)
        head = self.head()
        if index.head != head:
            index.set_head(head, self.version(head)[1] if head else {})
        return index

    def _digest(
        self, stale: list[tuple[bytes, Stat]], *, store: bool
    ) -> Iterator[tuple[bytes, Stat, str, int]]:
        """Hash (and with ``store`` keep) the files whose stat the cache cannot vouch for."""
        root = os.fsencode(self.root)

        def one(item: tuple[bytes, Stat]) -> tuple[bytes, Stat, str, int] | None:
            path, stat = item
            try:
                data = read_content(root, path, stat[0])
            except FileNotFoundError:
                return None  # deleted while we looked
            sha = hashlib.sha256(data).hexdigest()
            if store:
                self.objects.put(sha, data)
            return path, stat, sha, len(data)

        if len(stale) < 256:
            results: Iterator[tuple[bytes, Stat, str, int] | None] = map(one, stale)
        else:  # reading, hashing and compressing release the GIL: worth threads for big batches
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            with ThreadPoolExecutor(max_workers=4) as pool:
                results = iter(list(pool.map(one, stale)))
        for result in results:
            if result is not None:
                yield result

    def _walk(
        self, index: Index, trusted: set[str] | None = None
    ) -> tuple[list[tuple[bytes, Stat, str]], list[tuple[bytes, Stat]]]:
        """One pass over the tree: files the cache vouches for (with their sha256) and files to
        hash. With ``trusted``, the sha256 must also be among the stored objects."""
        clean: list[tuple[bytes, Stat, str]] = []
        stale: list[tuple[bytes, Stat]] = []
        for path, stat in iter_files(self.root, Ignore(self.root, index.tree)):
            digest = index.cached_digest(path, stat)
            if digest is not None:
                sha = digest.hex()
                if trusted is None or sha in trusted:
                    clean.append((path, stat, sha))
                    continue
            stale.append((path, stat))
        return clean, stale

    def working_tree(self, index: Index, *, store: bool = False) -> tuple[Tree, bool]:
        """The working tree as a Tree, hashing only files whose stat changed.

        With ``store`` every file's content is also in the object store after.
        Returns the tree and whether the index learned anything.
        """
        clean, stale = self._walk(index, self.objects.known() if store else None)
        new = tuple.__new__
        tree: Tree = {path: new(FileEntry, (stat[0], stat[1], sha)) for path, stat, sha in clean}
        for path, stat, sha, size in self._digest(stale, store=store):
            tree[path] = FileEntry(stat[0], size, sha)
            index.record(path, stat, bytes.fromhex(sha))
        learned = self._forget_missing(index, tree)
        return tree, learned or bool(stale)

    @staticmethod
    def _forget_missing(index: Index, present: dict[bytes, Any]) -> bool:
        if len(index.stats) == len(present):  # every cached path is still there
            return False
        for path in index.stats.keys() - present.keys():
            del index.stats[path]
        return True

    def status(self) -> Status:
        """Compare the working tree with HEAD: one lstat per file, few hashes (the hot path)."""
        index = self.load_index()
        ignore = Ignore(self.root, index.tree)
        found = parallel_compare(self.root, index, ignore) or compare(
            self.root, index, iter_files(self.root, ignore), None
        )
        added, modified, deleted, hashed = found
        for path, stat, digest in hashed:
            index.record(path, stat, digest)
        learned = bool(hashed)
        if len(index.stats) > len(index.tree) - len(deleted) + len(added):  # entries of vanished files
            present = (index.tree.keys() - set(deleted)) | set(added)
            for path in index.stats.keys() - present:
                del index.stats[path]
            learned = True
        if learned:
            self._save_index_if_free(index)
        return Status(head=index.head, added=added, modified=modified, deleted=deleted)

    def _save_index_if_free(self, index: Index) -> None:
        """Refresh the cache for the next status, unless a writer holds the lock."""
        with package_lock(self.lock_path, wait=False) as held:
            if held:
                index.save(self.index_path)

    # -- committing -------------------------------------------------------------

    def commit(self, message: str, *, author: str | None = None) -> VersionInfo:
        """Record the working tree as a version; HEAD moves only once everything is durable."""
        if not message.strip():
            raise ValueError("a commit needs a message (-m)")
        with package_lock(self.lock_path):
            index = self.load_index()
            tree, _ = self.working_tree(index, store=True)
            new_id = version_id(tree)
            if new_id == index.head:
                raise NothingToCommit(f"nothing to commit: the working tree is version {new_id[:12]}")
            changes = diff_trees(index.head_tree(), tree)
            import getpass  # noqa: PLC0415
            from datetime import UTC, datetime  # noqa: PLC0415 - status never needs it

            info = VersionInfo(
                id=new_id,
                package=self.name,
                parent=index.head,
                author=author or os.environ.get("CONVEYOR_AUTHOR") or getpass.getuser(),
                date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                message=message,
                counts={"files": len(tree), **changes.counts()},
            )
            self.objects.sync()
            manifest = self.meta / "versions" / f"{new_id}.ini"
            if not manifest.exists():  # the same tree committed before keeps its first record
                atomic_write(
                    self.meta / "changelog" / f"{new_id}.ini", render_changelog(info, changes).encode()
                )
                atomic_write(manifest, render_manifest(info, tree).encode())
            atomic_write(self.meta / "HEAD", f"{new_id}\n".encode())  # the commit point
            index.set_head(new_id, tree)
            index.save(self.index_path)
            return info
