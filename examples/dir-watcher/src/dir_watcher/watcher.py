"""The changelog listener's ``Source`` (its watcher), embedded for a directory of one's own.

The ``Source`` watches a directory, and after each quiet period commits what changed as a version
(in ``<directory>/.conveyor/``), builds the changeset archive, hands it to an artifact store and
announces ``changeset.created``. Here the store is a local directory that keeps every archive, and
the announcement, instead of going to a broker, becomes a :class:`ChangeSetSeen` naming the files.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from conveyor.changeset import ArtifactStore, changes_between
from conveyor.contracts import ChangesetCreated, Payload
from conveyor.observability import get_logger
from conveyor.pkgvcs.errors import VcsError
from conveyor.pkgvcs.package import Package
from conveyor_changelog_listener.config import ManagedPackage, Role, Settings
from conveyor_changelog_listener.source import Source
from conveyor_changelog_listener.state import Marks

__all__ = ["ArchiveDirectory", "ChangeSetSeen", "DirWatcher", "WatcherSettings"]

log = get_logger(__name__)


class ChangeSetSeen(BaseModel):
    """One change set of the watched directory: one JSON line on stdout."""

    event: Literal["changeset"] = "changeset"
    directory: str
    changeset_id: str
    version: str
    parent_version: str | None
    created_at: datetime
    archive: str
    added: list[str]
    modified: list[str]
    deleted: list[str]


class ArchiveDirectory(ArtifactStore):
    """An artifact store that is a local directory, ``<directory>/<sha256>.zip``.

    The ``Source`` uploads each changeset it builds, then deletes its own copy; "uploading" here
    keeps the archive. Only ``upload`` is used by a ``Source``.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(directory.resolve().as_uri(), None)
        self.directory = directory

    def path_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.zip"

    async def upload(self, path: Path, sha256: str) -> bool:
        target = self.path_for(sha256)
        if await asyncio.to_thread(target.exists):
            return False
        await asyncio.to_thread(_copy_atomically, path, target)
        return True


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


class WatcherSettings(Settings):
    """The listener's settings from the arguments alone: its ``CONVEYOR_CHANGELOG_LISTENER_*``
    environment variables must not configure this program."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class DirWatcher:
    """Watches ``directory``; ``run()`` reports each change set until ``stop`` is set."""

    def __init__(
        self,
        directory: Path,
        *,
        name: str,
        state_dir: Path,
        quiet_period_s: float = 0.5,
        rescan_interval_s: float = 60.0,
    ) -> None:
        self.directory = directory
        self.archives = ArchiveDirectory(state_dir / "archives")
        package = ManagedPackage(name=name, root=directory, role=Role.SOURCE)
        settings = WatcherSettings(
            packages=[package],
            state_dir=state_dir,
            quiet_period_s=quiet_period_s,
            rescan_interval_s=rescan_interval_s,
            author="dir-watcher",
        )
        self._announced: asyncio.Queue[Payload | None] = asyncio.Queue()
        self.source = Source(
            package,
            settings,
            store=self.archives,
            marks=Marks(state_dir / "marks"),
            announce=self._announced.put_nowait,
        )

    async def run(self, stop: asyncio.Event, emit: Callable[[ChangeSetSeen], None]) -> None:
        reporter = asyncio.create_task(self._report(emit), name="report")
        try:
            await self.source.run(stop)
        finally:
            self._announced.put_nowait(None)  # what was announced before is still reported
            await reporter

    async def _report(self, emit: Callable[[ChangeSetSeen], None]) -> None:
        while (payload := await self._announced.get()) is not None:
            if not isinstance(payload, ChangesetCreated):
                continue  # a Source in commit mode announces nothing else
            try:
                seen = await asyncio.to_thread(self._describe, payload)
            except (VcsError, OSError) as exc:
                log.error("changeset_unreadable", changeset=payload.changeset_id, error=str(exc))
                continue
            emit(seen)

    def _describe(self, created: ChangesetCreated) -> ChangeSetSeen:
        """The announcement carries counts only; the files come from the package's history."""
        _, changes = changes_between(Package(self.directory), created.parent_version, created.version)

        def paths(tree: Iterable[bytes]) -> list[str]:
            return sorted(os.fsdecode(path) for path in tree)

        return ChangeSetSeen(
            directory=str(self.directory),
            changeset_id=created.changeset_id,
            version=created.version,
            parent_version=created.parent_version,
            created_at=created.created_at,
            archive=str(self.archives.path_for(created.changeset_id)),
            added=paths(changes.added),
            modified=paths(changes.modified),
            deleted=paths(changes.deleted),
        )
