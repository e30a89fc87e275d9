"""The deployer's mirror of every package: each changeset the source environment creates is applied
to a release root here, so the deployer can build the changeset from any version a node runs to
any version it should run (``build_between_releases``) and store it in the artifact store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conveyor.changeset import (
    ArtifactStore,
    ChangesetError,
    ParentMismatch,
    ReleaseRoot,
    StoreRefused,
    StoreUnavailable,
    build_between_releases,
)
from conveyor.changeset.store import retrying
from conveyor.contracts import ChangesetCreated
from conveyor.observability import get_logger
from conveyor.pkgvcs.storage import atomic_write

__all__ = ["Mirror", "MirrorGap"]

log = get_logger(__name__)


class MirrorGap(ChangesetError):
    """The mirror lacks a version a node runs or should run."""


class Mirror:
    def __init__(
        self,
        directory: Path,
        store: ArtifactStore,
        *,
        keep: int,
        retry_delays: list[float],
        stop: asyncio.Event | None = None,
    ) -> None:
        self.stop = stop
        self.directory = directory
        self.store = store
        self.keep = keep
        self.retry_delays = retry_delays
        self._built_path = directory / "built.json"  # (package, parent, version) → changeset id
        self._locks: dict[str, asyncio.Lock] = {}
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self._built: dict[str, str] = json.loads(self._built_path.read_text())
        except FileNotFoundError:
            self._built = {}

    def root(self, package: str) -> ReleaseRoot:
        return ReleaseRoot(self.directory / "packages" / package, keep=self.keep)

    def _lock(self, package: str) -> asyncio.Lock:
        return self._locks.setdefault(package, asyncio.Lock())

    def has(self, package: str, version: str) -> bool:
        return (self.root(package).release_dir(version) / ".conveyor" / "HEAD").is_file()

    def head(self, package: str) -> str | None:
        return self.root(package).current()

    def packages(self) -> list[str]:
        base = self.directory / "packages"
        return sorted(p.name for p in base.iterdir()) if base.is_dir() else []

    async def take(self, event: ChangesetCreated) -> None:
        """Apply a changeset the source created; an outage of the store is waited out (raises after)."""
        async with self._lock(event.package):
            if self.has(event.package, event.version):
                return
            downloads = self.directory / "downloads"
            archive = await retrying(
                lambda: self.store.download(event.changeset_id, downloads),
                delays=self.retry_delays,
                what=f"changeset {event.changeset_id[:12]}",
                log=log,
                stop=self.stop,
            )
            try:
                await asyncio.to_thread(self.root(event.package).apply, archive)
            except ParentMismatch as exc:
                log.error("mirror_gap", package=event.package, version=event.version, error=str(exc))
                raise MirrorGap(
                    f"{event.package}: the mirror runs {exc.running or 'nothing'}, changeset "
                    f"{event.changeset_id[:12]} needs {event.parent_version or 'nothing'}"
                ) from None
            finally:
                await asyncio.to_thread(archive.unlink, missing_ok=True)
            self._built[f"{event.package} {event.parent_version or '-'} {event.version}"] = event.changeset_id
            atomic_write(self._built_path, json.dumps(self._built, indent=1).encode())
            log.info("mirror_updated", package=event.package, version=event.version)

    async def changeset(self, package: str, parent: str | None, version: str) -> str:
        """The id of a changeset taking ``parent`` to ``version``, built and stored if need be."""
        key = f"{package} {parent or '-'} {version}"
        if key in self._built:
            return self._built[key]
        for needed in (parent, version):
            if needed is not None and not self.has(package, needed):
                raise MirrorGap(f"{package} {needed[:12]} is not in the deployer's mirror")
        async with self._lock(package):
            built = await asyncio.to_thread(
                build_between_releases,
                self.root(package),
                parent=parent,
                version=version,
                directory=self.directory / "built",
            )
            try:
                await retrying(
                    lambda: self.store.upload(built.path, built.id),
                    delays=self.retry_delays,
                    what=f"changeset {built.id[:12]}",
                    log=log,
                    stop=self.stop,
                )
            except (StoreUnavailable, StoreRefused) as exc:
                raise MirrorGap(f"could not store changeset {built.id[:12]}: {exc}") from None
            finally:
                await asyncio.to_thread(built.path.unlink, missing_ok=True)
            self._built[key] = built.id
            atomic_write(self._built_path, json.dumps(self._built, indent=1).encode())
            return built.id
