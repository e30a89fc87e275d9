"""Source packages: watch the files, and after a quiet period commit the change as a version,
build its changeset, store it in the artifact store and announce it (or, in ``status`` mode,
only report what changed)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from datetime import datetime

from watchfiles import Change, awatch

from conveyor.changeset import ArtifactStore, ChangesetError, StoreRefused, StoreUnavailable, build_changeset
from conveyor.changeset.store import retrying
from conveyor.contracts import ChangesetCreated, Payload
from conveyor.contracts.catalogue import PackageChanged
from conveyor.observability import get_logger
from conveyor.pkgvcs.errors import NotAPackage, NothingToCommit, UnknownVersion, VcsError
from conveyor.pkgvcs.package import Package, Status
from conveyor_changelog_listener.config import ManagedPackage, Settings, SourceMode
from conveyor_changelog_listener.state import Marks

__all__ = ["Source"]

log = get_logger(__name__)

_MAX_LISTED = 1000
_MAX_COALESCE = 10  # a stream of events postpones the scan at most this many quiet periods


def _not_metadata(_: Change, path: str) -> bool:
    return f"{os.sep}.conveyor{os.sep}" not in path and not path.endswith(f"{os.sep}.conveyor")


class Source:
    """One source package: its working directory, watched."""

    def __init__(
        self,
        package: ManagedPackage,
        settings: Settings,
        *,
        store: ArtifactStore,
        marks: Marks,
        announce: Callable[[Payload], object],
    ) -> None:
        self.package = package
        self.settings = settings
        self.store = store
        self.marks = marks
        self.announce = announce
        self.changesets = settings.state_dir / "changesets" / package.name
        self.lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._last_event = 0.0

    @property
    def name(self) -> str:
        return self.package.name

    def open(self) -> Package:
        """The package, made one on first use (``conveyor vcs init``)."""
        try:
            return Package(self.package.root)
        except NotAPackage:
            self.package.root.mkdir(parents=True, exist_ok=True)
            log.info("package_initialised", package=self.name, root=str(self.package.root))
            return Package.init(self.package.root, self.name)

    def version(self) -> str | None:
        try:
            return Package(self.package.root).head()
        except VcsError:
            return None

    # -- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Scan at start, after each quiet period following file events, and every rescan interval."""
        await asyncio.to_thread(self.open)
        watching = self._watch(stop) if self.settings.watch_events else stop.wait()
        watcher = asyncio.ensure_future(watching)
        try:
            while not stop.is_set():
                await self.scan_once()
                await self._wait_for_quiet_change(stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, stop: asyncio.Event) -> None:
        """File-system events only mark that something changed; the scan decides what."""
        while not stop.is_set():
            try:
                async for _ in awatch(
                    self.package.root, watch_filter=_not_metadata, stop_event=stop, step=50, debounce=400
                ):
                    self._last_event = time.monotonic()
                    self._changed.set()
            except (OSError, RuntimeError) as exc:  # root removed, inotify limits: the rescan still runs
                log.warning("watch_failed", package=self.name, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.rescan_interval_s)

    async def _wait_for_quiet_change(self, stop: asyncio.Event) -> None:
        quiet = self.settings.quiet_period_s
        waiter = asyncio.ensure_future(self._changed.wait())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {waiter, stopper},
                timeout=self.settings.rescan_interval_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
            stopper.cancel()
        if not self._changed.is_set():
            return  # the periodic rescan (or stop)
        deadline = time.monotonic() + quiet * _MAX_COALESCE
        while not stop.is_set():
            self._changed.clear()
            wait = min(self._last_event + quiet, deadline) - time.monotonic()
            if wait <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    # -- one scan ------------------------------------------------------------------------

    async def scan_once(self) -> None:
        async with self.lock:
            try:
                package = await asyncio.to_thread(self.open)
                status = await asyncio.to_thread(package.status)
                if self.package.mode is SourceMode.STATUS:
                    self._report(status)
                    return
                if status:
                    await asyncio.to_thread(self._commit, package, status)
                await self._ship(package)
            except (VcsError, ChangesetError, OSError) as exc:
                log.error("source_scan_failed", package=self.name, error=str(exc)[:500])

    def _commit(self, package: Package, status: Status) -> None:
        counts = f"{len(status.added)} added, {len(status.modified)} modified, {len(status.deleted)} deleted"
        author = self.settings.author or f"changelog-listener@{self.settings.node}"
        try:
            info = package.commit(
                f"{counts} (seen by the changelog listener on {self.settings.node})", author=author
            )
        except NothingToCommit:
            return  # changed back meanwhile
        log.info("version_committed", package=self.name, version=info.id, parent=info.parent, changes=counts)

    async def _ship(self, package: Package) -> None:
        """Build, store and announce the changeset from the last shipped version to HEAD.

        The mark moves only after the announcement is in the outbox, so a crash or an
        artifact-store outage anywhere before repeats the work, never loses it.
        """
        head = package.head()
        shipped_mark = f"shipped.{self.name}"
        shipped = self.marks.get(shipped_mark)
        if head is None or head == shipped:
            return
        try:
            built = await asyncio.to_thread(
                build_changeset, package, parent=shipped, version=head, directory=self.changesets
            )
        except UnknownVersion:
            log.warning("shipped_version_unknown", package=self.name, shipped=shipped)
            built = await asyncio.to_thread(
                build_changeset, package, parent=None, version=head, directory=self.changesets
            )
        try:
            await retrying(
                lambda: self.store.upload(built.path, built.id),
                delays=self.settings.artifact_retry_delays_s,
                what=f"changeset {built.id[:12]}",
                log=log,
            )
        except (StoreUnavailable, StoreRefused) as exc:
            log.error("changeset_upload_failed", package=self.name, changeset=built.id, error=str(exc))
            return  # the next scan tries again
        info = built.info
        self.announce(
            ChangesetCreated(
                changeset_id=built.id,
                package=self.name,
                parent_version=info.parent,
                version=info.id,
                author=info.author,
                message=info.message,
                created_at=datetime.fromisoformat(info.date),
                archive_size=built.size,
                files_added=len(built.changes.added),
                files_modified=len(built.changes.modified),
                files_deleted=len(built.changes.deleted),
            )
        )
        self.marks.set(shipped_mark, head)
        await asyncio.to_thread(built.path.unlink, missing_ok=True)  # stored; the source needs it no more
        log.info("changeset_shipped", package=self.name, changeset=built.id, version=head, parent=shipped)

    def _report(self, status: Status) -> None:
        mark = f"changed.{self.name}"
        if not status:
            self.marks.set(mark, None)
            return
        entries = status.entries()
        fingerprint = hashlib.sha256(
            f"{status.head}\n".encode() + b"\n".join(c.encode() + b" " + p for c, p in entries)
        ).hexdigest()
        if self.marks.get(mark) == fingerprint:
            return

        def listed(paths: list[bytes]) -> list[str]:
            return [os.fsdecode(p) for p in sorted(paths)[:_MAX_LISTED]]

        self.announce(
            PackageChanged(
                node=self.settings.node,
                package=self.name,
                version=status.head,
                added=listed(status.added),
                modified=listed(status.modified),
                deleted=listed(status.deleted),
                total=len(entries),
            )
        )
        self.marks.set(mark, fingerprint)
