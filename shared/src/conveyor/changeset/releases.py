"""A release root on a target node: releases side by side, ``current`` switched atomically.

::

    <root>/current -> releases/<version>      a symlink, replaced by rename, never removed first
    <root>/releases/<version>/                one complete tree per release, plus .conveyor/
    <root>/releases/.staging-<random>/        a release being built (removed at start-up if left)
    <root>/releases.json                      switch history: version, changeset, when, state
    <root>/.lock                              one writer at a time (host:pid)

Each release directory is a package (``conveyor vcs status`` works in it):
its ``.conveyor/`` holds the manifest of the version it was built as and a
stat cache, but no objects. Its HEAD is the truth about what it holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from conveyor.changeset.archive import CHANGELOG_NAME, ChangesetArchive, Limits, make_parents
from conveyor.changeset.errors import ApplyError, ChangesetError, HostileArchive, NoRelease, ParentMismatch
from conveyor.pkgvcs import ini
from conveyor.pkgvcs.errors import VcsError
from conveyor.pkgvcs.index import Index
from conveyor.pkgvcs.manifest import (
    MODE_SYMLINK,
    Changes,
    Tree,
    VersionInfo,
    render_changelog,
    render_manifest,
    version_id,
)
from conveyor.pkgvcs.package import Package, Status
from conveyor.pkgvcs.paths import porcelain_quote
from conveyor.pkgvcs.scan import METADATA_DIR
from conveyor.pkgvcs.storage import atomic_write, fsync_dir, package_lock

__all__ = ["ApplyResult", "ReleaseRoot", "ReleaseState"]

ReleaseState = Literal["pending", "good", "bad"]
_STAGING = ".staging-"
_TRASH = ".trash-"
_MAX_LINK_DEPTH = 40


@dataclass
class ApplyResult:
    """What an apply did; ``version`` is what the node runs now."""

    version: str
    previous: str | None
    changeset: str
    already_current: bool = False
    forced: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)


class ReleaseRoot:
    """Releases of one package on one node."""

    def __init__(self, root: Path, *, keep: int = 5, limits: Limits | None = None) -> None:
        if keep < 2:
            raise ValueError("keep at least 2 releases: the current one and one to roll back to")
        self.root = root
        self.keep = keep
        self.limits = limits or Limits()
        self.releases = root / "releases"
        self.current_link = root / "current"
        self.history_path = root / "releases.json"

    # -- reading ------------------------------------------------------------------------

    def current(self) -> str | None:
        """The version ``current`` points at (what the node runs), or None before the first apply."""
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ChangesetError(f"{self.current_link} is not a symlink ({exc.strerror})") from None
        return Path(target).name

    def release_dir(self, version: str) -> Path:
        return self.releases / version

    def package(self, version: str | None = None) -> Package:
        version = version or self.current()
        if version is None:
            raise NoRelease(f"{self.root} has no current release")
        return Package(self.release_dir(version))

    def head(self, version: str | None = None) -> str | None:
        """The version id the release's files were built as (its HEAD)."""
        try:
            return self.package(version).head()
        except (NoRelease, VcsError):
            return None

    def available(self) -> list[str]:
        """Complete release directories, oldest switch first where the history knows them."""
        try:
            names = [p.name for p in self.releases.iterdir() if not p.name.startswith(".")]
        except FileNotFoundError:
            return []
        complete = {n for n in names if (self.releases / n / ".conveyor" / "HEAD").is_file()}
        order = [e["version"] for e in self.history() if e["version"] in complete]
        ranked = list(dict.fromkeys(reversed(order)))[::-1]  # by each release's last switch
        return [v for v in sorted(complete) if v not in ranked] + ranked

    def history(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.history_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ChangesetError(
                f"{self.history_path}: unreadable ({exc}); move it away to start afresh"
            ) from None
        entries = data.get("releases", []) if isinstance(data, dict) else []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("version"), str)]

    def state(self, version: str | None = None) -> ReleaseState | None:
        version = version or self.current()
        for entry in reversed(self.history()):
            if entry["version"] == version:
                state: ReleaseState = entry.get("state", "good")
                return state
        return None

    def changeset_of(self, version: str | None = None) -> str | None:
        version = version or self.current()
        for entry in reversed(self.history()):
            if entry["version"] == version:
                changeset: str | None = entry.get("changeset")
                return changeset
        return None

    def previous_good(self) -> str | None:
        """The newest release other than the current one that was good when it last ran."""
        current = self.current()
        present = set(self.available())
        last: dict[str, str] = {}
        for entry in self.history():
            last[entry["version"]] = entry.get("state", "good")
        for entry in reversed(self.history()):
            version: str = entry["version"]
            if version != current and version in present and last.get(version) == "good":
                return version
        return None

    def drift(self) -> Status | None:
        """How the current release's files differ from the version it was built as; None if they do not."""
        if self.current() is None:
            return None
        status = self.package().status()
        return status if status else None

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with package_lock(self.root / ".lock"):
            yield

    def recover(self) -> list[str]:
        """Remove what an interrupted apply left (staging, temporary links); returns what was removed."""
        removed: list[str] = []
        with self.locked():
            for leftover in [*self.root.glob(".current.*.tmp"), *self.root.glob(".releases.json.*.tmp")]:
                leftover.unlink(missing_ok=True)
                removed.append(leftover.name)
            for leftover in self.root.glob("..lock.*"):  # a lock being taken when its taker died
                pid = leftover.name.split(".")[3] if leftover.name.count(".") >= 3 else ""
                if pid.isdigit() and not _alive(int(pid)):
                    leftover.unlink(missing_ok=True)
                    removed.append(leftover.name)
            if self.releases.is_dir():
                for path in self.releases.iterdir():
                    if path.name.startswith((_STAGING, _TRASH)):
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(path.name)
            current = self.current()
            history = self.history()
            if current is not None and (not history or history[-1]["version"] != current):
                # The switch happened, the history write did not: the symlink is the truth.
                self._record(current, changeset=None, state="pending")
        return removed

    def apply(self, archive_path: Path, *, force: bool = False, good: bool = True) -> ApplyResult:
        """Verify, stage, switch. Without ``good`` the new release stays ``pending`` until
        :meth:`mark` says how its restart and health check went."""
        started = time.perf_counter()
        with self.locked(), ChangesetArchive.open(archive_path, limits=self.limits) as archive:
            changeset = archive.id
            previous = self.current()
            info = archive.info
            if previous == info.id and self.head() == info.id:
                return ApplyResult(info.id, previous, changeset, already_current=True)
            self._check_package(info)
            base, base_dir = self._base_tree(archive, force=force)
            tree = _apply_changes(base, archive.changes)
            new_id = version_id(tree)
            if new_id != info.id and not force:
                raise HostileArchive(
                    CHANGELOG_NAME,
                    f"the parent's files with these changes make version {new_id[:12]}, "
                    f"not {info.id[:12]} as the changelog says",
                )
            if new_id == previous:  # forced onto the files the node already has
                return ApplyResult(new_id, previous, changeset, already_current=True, forced=True)
            self._check_symlinks(tree, archive, base_dir)
            verified = time.perf_counter()
            staging = self._stage(archive, tree, base_dir, info._replace(id=new_id))
            staged = time.perf_counter()
            self._install(staging, new_id)
            self._switch(new_id)
            self._record(new_id, changeset=changeset, state="good" if good else "pending")
            switched = time.perf_counter()
            with contextlib.suppress(OSError):  # switched already; what is left is pruned next time
                self._prune()
            counts = archive.changes.counts()
        return ApplyResult(
            version=new_id,
            previous=previous,
            changeset=changeset,
            forced=new_id != info.id,
            timings={
                "verify": verified - started,
                "stage": staged - verified,
                "switch": switched - staged,
            },
            files={"total": len(tree), **counts},
        )

    def switch_to(self, version: str, *, state: ReleaseState = "good") -> None:
        """Point ``current`` at an existing release (switching back after a failed health check)."""
        with self.locked():
            if not (self.release_dir(version) / ".conveyor" / "HEAD").is_file():
                raise NoRelease(f"release {version[:12]} is not on this node (pruned?)")
            self._switch(version)
            self._record(version, changeset=self.changeset_of(version), state=state)

    def mark(self, version: str, state: ReleaseState) -> None:
        """Record how a release fared (after its restart and health check)."""
        with self.locked():
            self._record(version, changeset=self.changeset_of(version), state=state, replace=True)

    def rollback(self) -> tuple[str | None, str]:
        """Switch to the previous good release; the one left is marked bad. Returns (from, to)."""
        with self.locked():
            current = self.current()
            target = self.previous_good()
            if target is None:
                raise NoRelease(f"{self.root}: no earlier good release to roll back to")
            if current is not None:
                self._record(current, changeset=self.changeset_of(current), state="bad", replace=True)
            self._switch(target)
            self._record(target, changeset=self.changeset_of(target), state="good")
            return current, target

    # -- the steps ----------------------------------------------------------------------

    def _check_package(self, info: VersionInfo) -> None:
        if self.current() is None:
            return
        name = self.package().name
        if name != info.package:
            raise ChangesetError(f"{self.root} holds package {name!r}; the changeset is for {info.package!r}")

    def _base_tree(self, archive: ChangesetArchive, *, force: bool) -> tuple[Tree, Path | None]:
        """The tree the changes apply to, and the directory holding its files."""
        parent = archive.info.parent
        current = self.current()
        if current is None:
            if parent is None or force:
                return {}, None
            raise ParentMismatch(
                f"{self.root} has no release yet; the changeset needs version {parent[:12]} "
                "(apply its first changeset, or --force)",
                running=None,
                differing=[],
            )
        package = self.package(current)
        head = package.head()
        status = package.status()
        differing = [f"{code} {porcelain_quote(path)}" for code, path in status.entries()]
        if force:
            index = package.load_index()
            tree, _ = package.working_tree(index)
            return tree, self.release_dir(current)
        if head != parent:
            raise ParentMismatch(
                f"{self.root} runs {(head or 'nothing')[:12]}, but the changeset's parent is "
                f"{(parent or 'none (a first changeset)')[:12]}; --force applies it anyway",
                running=head,
                differing=differing,
            )
        if status:
            raise ParentMismatch(
                f"{self.root}: the files of {current[:12]} were changed on the node; "
                "--force applies the changeset over them",
                running=head,
                differing=differing,
            )
        assert head is not None
        # The stat cache holds a copy of HEAD's tree (checksummed; re-read from the manifest when
        # it is stale): cheaper than parsing the manifest, and the new tree's id is checked anyway.
        return package.load_index().head_tree(), self.release_dir(current)

    def _check_symlinks(self, tree: Tree, archive: ChangesetArchive, base_dir: Path | None) -> None:
        """Every symlink of the new tree must resolve inside the release, following links in the tree."""
        targets: dict[bytes, bytes] = {}
        for path, entry in tree.items():
            if entry.mode != MODE_SYMLINK:
                continue
            if path in archive.entries:
                targets[path] = archive.content(path)
            elif base_dir is not None:
                targets[path] = os.readlink(os.fsencode(base_dir) + b"/" + path)
        for path, target in targets.items():
            reason = _escapes(path, target, targets)
            if reason:
                name = f"files/{porcelain_quote(path)}" if path in archive.entries else porcelain_quote(path)
                raise HostileArchive(name, f"symlink to {target!r} {reason}")

    def _stage(self, archive: ChangesetArchive, tree: Tree, base_dir: Path | None, info: VersionInfo) -> Path:
        self.releases.mkdir(parents=True, exist_ok=True)
        staging = self.releases / f"{_STAGING}{secrets.token_hex(6)}"
        staging.mkdir()
        staging.chmod(0o755)  # becomes releases/<version>: readable by the services whatever the umask
        try:
            made: set[bytes] = set()
            archive.extract(staging, made)
            root = os.fsencode(staging)
            stats: dict[bytes, os.stat_result] = {}
            if base_dir is not None:
                unchanged = sorted(tree.keys() - archive.entries.keys())
                for path in unchanged:
                    make_parents(root, path, made)
                stats = _link_all(os.fsencode(base_dir), root, unchanged)
            for path in archive.entries:
                stats[path] = os.lstat(root + b"/" + path)
            self._write_metadata(staging, tree, info, archive.changes, stats)
            os.sync()  # every file of the release is durable before anyone can switch to it
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

    @staticmethod
    def _write_metadata(
        staging: Path, tree: Tree, info: VersionInfo, changes: Changes, stats: dict[bytes, os.stat_result]
    ) -> None:
        meta = staging / os.fsdecode(METADATA_DIR)
        for sub in ("objects", "versions", "changelog", "tags"):
            (meta / sub).mkdir(parents=True, exist_ok=True)
        (meta / "package.ini").write_text(ini.render([("package", [("name", info.package)])]))
        info = info._replace(counts={"files": len(tree), **changes.counts()})
        (meta / "versions" / f"{info.id}.ini").write_text(render_manifest(info, tree))
        (meta / "changelog" / f"{info.id}.ini").write_text(render_changelog(info, changes))
        index = Index()  # the stat cache, so the first status of the release hashes nothing
        index.set_head(info.id, tree)
        for path, entry in tree.items():
            seen = stats[path]
            if entry.size == seen.st_size:
                stat = (entry.mode, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns, seen.st_ino)
                index.record(path, stat, bytes.fromhex(entry.sha256))
        index.save(meta / "index")
        (meta / "HEAD").write_text(f"{info.id}\n")  # last: a release without HEAD is incomplete

    def _install(self, staging: Path, version: str) -> None:
        target = self.release_dir(version)
        if target.exists():  # built before, not current (checked): rebuilt rather than trusted
            self._discard(target)
        try:
            os.rename(staging, target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ApplyError(f"could not move the new release into {target}: {exc.strerror}") from None
        fsync_dir(self.releases)

    def _switch(self, version: str) -> None:
        """``current`` → ``releases/<version>``: a new symlink renamed over the old one."""
        tmp = self.root / f".current.{secrets.token_hex(6)}.tmp"
        os.symlink(f"releases/{version}", tmp)
        try:
            os.replace(tmp, self.current_link)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.root)

    def _record(
        self, version: str, *, changeset: str | None, state: ReleaseState, replace: bool = False
    ) -> None:
        history = self.history()
        entry = {
            "version": version,
            "changeset": changeset,
            "switched_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "state": state,
        }
        if replace and history and history[-1]["version"] == version:
            entry["switched_at"] = history[-1].get("switched_at", entry["switched_at"])
            history[-1] = entry
        else:
            history.append(entry)
        history = history[-200:]
        atomic_write(self.history_path, json.dumps({"format": 1, "releases": history}, indent=1).encode())

    def _prune(self) -> None:
        """Keep the newest ``keep`` releases (the current one and the previous good one always)."""
        available = self.available()
        protected = {self.current(), self.previous_good()}
        surplus = len(available) - self.keep
        for version in available:
            if surplus <= 0:
                break
            if version not in protected:
                self._discard(self.release_dir(version))
                surplus -= 1

    def _discard(self, directory: Path) -> None:
        """Renamed away first, so a half-deleted release never looks complete."""
        trash = self.releases / f"{_TRASH}{secrets.token_hex(6)}"
        os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _apply_changes(base: Tree, changes: Changes) -> Tree:
    tree = dict(base)
    for path in changes.deleted:
        tree.pop(path, None)
    tree.update(changes.added)
    tree.update(changes.modified)
    for path in tree:  # a file below a file (or symlink) could be written through the link
        cut = path.rfind(b"/")
        while cut > 0:
            parent = path[:cut]
            if parent in tree:
                raise HostileArchive(
                    f"files/{porcelain_quote(path)}", f"lies below the file {porcelain_quote(parent)}"
                )
            cut = parent.rfind(b"/")
    return tree


def _escapes(path: bytes, target: bytes, links: dict[bytes, bytes]) -> str | None:
    """Why the symlink at ``path`` leads outside the release (None if it stays inside).

    The target is resolved component by component against the new tree,
    following the tree's own symlinks as the kernel would.
    """
    if target.startswith(b"/"):
        return "is absolute"
    if not target:
        return "is empty"
    if b"\x00" in target:
        return "contains a NUL byte"
    stack = path.split(b"/")[:-1]
    pending = target.split(b"/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not stack:
                return "leads outside the release"
            stack.pop()
            continue
        here = b"/".join([*stack, part])
        link = links.get(here)
        if link is None:
            stack.append(part)
            continue
        hops += 1
        if hops > _MAX_LINK_DEPTH:
            return "loops"
        if link.startswith(b"/"):
            return f"goes through {porcelain_quote(here)}, an absolute symlink"
        pending = link.split(b"/") + pending
    return None


def _link_all(base: bytes, root: bytes, paths: list[bytes]) -> dict[bytes, os.stat_result]:
    """Link (or copy) each of ``paths`` from ``base`` into ``root`` (parents exist); their stats
    after, for the new release's stat cache. (Threads were tried: no faster, links of one tree
    contend in the file system.)"""
    stats = {}
    for path in paths:
        target = root + b"/" + path
        _link_or_copy(base + b"/" + path, target)
        stats[path] = os.lstat(target)
    return stats


def _link_or_copy(source: bytes, target: bytes) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:  # another file system, or hard links not allowed here: copy instead
        shutil.copy2(source, target, follow_symlinks=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
