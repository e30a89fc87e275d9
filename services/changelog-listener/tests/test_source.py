"""A source package in status mode, in process: file events and the periodic rescan each find changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conveyor.changeset import ArtifactStore
from conveyor.contracts import Payload
from conveyor.contracts.catalogue import PackageChanged
from conveyor.pkgvcs import Package
from conveyor_changelog_listener.config import ManagedPackage, Role, Settings, SourceMode
from conveyor_changelog_listener.source import Source
from conveyor_changelog_listener.state import Marks


def make_source(tmp_path: Path, announced: Announced, **settings: object) -> Source:
    root = tmp_path / "web"
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    Package.init(root, "web").commit("baseline", author="t")
    package = ManagedPackage(name="web", root=root, role=Role.SOURCE, mode=SourceMode.STATUS)
    config = Settings(node="dev-1", packages=[package], state_dir=tmp_path / "state", **settings)  # type: ignore[arg-type]
    return Source(
        package,
        config,
        store=ArtifactStore("http://127.0.0.1:9", None),  # status mode never uploads
        marks=Marks(tmp_path / "state" / "marks"),
        announce=announced.append,
    )


class Announced(list[Payload]):
    """What the source announced; ``wait_for`` wakes on each announcement."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def append(self, payload: Payload) -> None:
        super().append(payload)
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.mark.parametrize(
    ("watch_events", "rescan_interval_s"),
    [(True, 3600.0), (False, 0.3)],
    ids=["file-events-alone", "rescan-alone"],
)
async def test_a_change_is_reported_once_by_events_or_by_the_rescan(
    tmp_path: Path, watch_events: bool, rescan_interval_s: float
) -> None:
    announced = Announced()
    source = make_source(
        tmp_path,
        announced,
        watch_events=watch_events,
        rescan_interval_s=rescan_interval_s,
        quiet_period_s=0.2,
    )
    await source.scan_once()  # nothing changed since the baseline
    assert announced == []
    (source.package.root / "a.txt").write_text("changed\n")
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        await announced.wait_for(1, timeout=10)  # run()'s first scan, with the watcher set up
        first = announced[0]
        assert isinstance(first, PackageChanged)
        assert (first.modified, first.total) == (["a.txt"], 1)

        # Only the file events (the rescan is an hour away), or only the rescan (no events), can
        # find this one: a file in a subdirectory made after the watch began.
        (source.package.root / "new" / "deep").mkdir(parents=True)
        (source.package.root / "new" / "deep" / "b.txt").write_text("b\n")
        await announced.wait_for(2, timeout=10)
        second = announced[1]
        assert isinstance(second, PackageChanged)
        assert second.added == ["new/deep/b.txt"]
        assert second.modified == ["a.txt"]
        assert second.total == 2
        assert len(list(Package(source.package.root).history())) == 1  # status mode never commits
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert len(announced) == 2  # the same changes are not reported on every scan
