"""Target packages: apply changesets (download, verify, stage, switch, restart, health check),
switch back on failure, and notice drift."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from conveyor.changeset import (
    ArtifactStore,
    ChangesetArchive,
    ChangesetError,
    HostileArchive,
    Limits,
    ParentMismatch,
    ReleaseRoot,
    StoreRefused,
    StoreUnavailable,
)
from conveyor.changeset.store import retrying
from conveyor.contracts import (
    ChangesetApplied,
    ChangesetApply,
    ChangesetFailed,
    DriftDetected,
)
from conveyor.contracts.catalogue import ApplyStage
from conveyor.observability import get_logger
from conveyor.pkgvcs.errors import VcsError
from conveyor_changelog_listener.config import ManagedPackage, Settings
from conveyor_changelog_listener.control import RestartFailed, UnitControl
from conveyor_changelog_listener.health import check_health
from conveyor_changelog_listener.state import Marks

__all__ = ["Target"]

log = get_logger(__name__)

_MAX_LISTED = 1000


class _Failure(Exception):
    def __init__(self, stage: ApplyStage, error: str) -> None:
        super().__init__(error)
        self.stage = stage
        self.error = error


@dataclass
class _Timer:
    steps: dict[str, float]
    stage: ApplyStage = ApplyStage.DOWNLOAD  # what is being done now, named if it fails unexpectedly

    def lap(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.steps[name] = round(self.steps.get(name, 0.0) + now - started, 6)
        return now


class Target:
    """One target package on this node: its release root and how to restart and check it."""

    def __init__(
        self,
        package: ManagedPackage,
        settings: Settings,
        *,
        store: ArtifactStore,
        control: UnitControl,
        marks: Marks,
    ) -> None:
        self.package = package
        self.settings = settings
        self.store = store
        self.control = control
        self.marks = marks
        limits = Limits(
            max_archive_bytes=settings.max_archive_bytes, max_unpacked_bytes=settings.max_unpacked_bytes
        )
        self.releases = ReleaseRoot(package.root, keep=settings.keep_releases, limits=limits)
        self.downloads = settings.state_dir / "downloads" / package.name
        self.lock = asyncio.Lock()  # one apply (or drift scan) at a time

    @property
    def name(self) -> str:
        return self.package.name

    def version(self) -> str | None:
        return self.releases.current()

    async def recover(self) -> None:
        """At start-up: clean what an interrupted apply left, and finish a switch that was not yet
        restarted and checked (whatever happens to the command that asked for it)."""
        removed = await asyncio.to_thread(self.releases.recover)
        if removed:
            log.warning("interrupted_apply_cleaned", package=self.name, removed=removed)
        current = self.releases.current()
        if current is not None and self.releases.state() == "pending":
            log.warning("resuming_apply", package=self.name, version=current)
            try:
                await self.control.restart(self.package.units)
                problem = await check_health(self.package.health_check)
            except RestartFailed as exc:
                problem = str(exc)
            if problem is None:
                await asyncio.to_thread(self.releases.mark, current, "good")
            else:
                log.error("pending_release_unhealthy", package=self.name, version=current, error=problem)
                await self._switch_back(current)
        for part in self.downloads.glob("*.part") if self.downloads.exists() else []:
            log.info("partial_download_kept", package=self.name, file=part.name)  # resumed when asked again

    # -- applying ------------------------------------------------------------------------

    async def apply(self, command: ChangesetApply) -> ChangesetApplied | ChangesetFailed:
        """Everything a ``changeset.apply`` asks for; never raises for a refusal or a failure."""
        async with self.lock:
            started = time.perf_counter()
            timer = _Timer({})
            try:
                switched_from = await self._apply(command, timer)
            except _Failure as failure:
                return await self._failed(command, failure, timer)
            except Exception as exc:  # disk full, a held lock…: the deployer gets an answer, not silence
                log.exception("apply_crashed", package=self.name, stage=timer.stage.value)
                crash = _Failure(timer.stage, f"{type(exc).__name__}: {exc}")
                return await self._failed(command, crash, timer)
            return ChangesetApplied(
                deployment_id=command.deployment_id,
                node=self.settings.node,
                changeset_id=command.changeset_id,
                package=self.name,
                version=command.version,
                previous_version=switched_from,
                duration_s=round(time.perf_counter() - started, 6),
                steps=timer.steps,
            )

    async def _apply(self, command: ChangesetApply, timer: _Timer) -> str | None:
        current, state = self.releases.current(), self.releases.state()
        if current == command.version and state == "good":
            log.info("changeset_already_applied", package=self.name, version=command.version)
            return self.releases.previous_good()
        if current == command.version and state == "pending":
            # Switched before a crash or restart, not yet restarted and checked: finish the job.
            log.warning("resuming_apply", package=self.name, version=command.version)
            previous = self.releases.previous_good()
        else:
            archive = await self._download(command, timer)
            previous = await self._switch(command, archive, timer)
        await self._restart_and_check(command, timer)
        return previous

    async def _download(self, command: ChangesetApply, timer: _Timer) -> Path:
        started = time.perf_counter()
        try:
            path = await retrying(
                lambda: self.store.download(command.changeset_id, self.downloads, url=command.archive_url),
                delays=self.settings.artifact_retry_delays_s,
                what=f"changeset {command.changeset_id[:12]}",
                log=log,
            )
        except (StoreRefused, StoreUnavailable, OSError) as exc:
            raise _Failure(ApplyStage.DOWNLOAD, str(exc)) from None
        timer.lap("download", started)
        return path

    async def _switch(self, command: ChangesetApply, archive: Path, timer: _Timer) -> str | None:
        started = time.perf_counter()
        timer.stage = ApplyStage.VERIFY
        try:
            await asyncio.to_thread(self._matches_command, archive, command)
        except ChangesetError as exc:
            raise _Failure(ApplyStage.VERIFY, str(exc)) from None
        timer.lap("verify", started)  # the command check; the apply reports its own steps below
        timer.stage = ApplyStage.UNPACK
        try:
            result = await asyncio.to_thread(self.releases.apply, archive, good=False)
        except ParentMismatch as exc:
            raise _Failure(ApplyStage.PARENT_MISMATCH, str(exc)) from None
        except HostileArchive as exc:
            raise _Failure(ApplyStage.VERIFY, f"refused: {exc}") from None
        except (ChangesetError, VcsError, OSError) as exc:
            stage = ApplyStage.SWITCH if self.releases.current() == command.version else ApplyStage.UNPACK
            raise _Failure(stage, str(exc)) from None
        finally:
            await asyncio.to_thread(archive.unlink, missing_ok=True)  # the store keeps it
        for step, seconds in result.timings.items():
            timer.steps[step] = round(timer.steps.get(step, 0.0) + seconds, 6)
        log.info(
            "release_switched",
            package=self.name,
            version=result.version,
            previous=result.previous,
            **{f"{k}_s": round(v, 3) for k, v in result.timings.items()},
        )
        return result.previous

    def _matches_command(self, archive: Path, command: ChangesetApply) -> None:
        """The archive must be the one the command names, for its package, version and parent."""
        with ChangesetArchive.open(archive, limits=self.releases.limits) as opened:
            info = opened.info
        wrong = [
            f"{what} is {found!r}, the command says {wanted!r}"
            for what, found, wanted in (
                ("package", info.package, command.package),
                ("version", info.id, command.version),
                ("parent", info.parent, command.parent_version),
            )
            if found != wanted
        ]
        if wrong or self.name != command.package:
            raise ChangesetError(f"changeset {command.changeset_id[:12]}: " + "; ".join(wrong))

    async def _restart_and_check(self, command: ChangesetApply, timer: _Timer) -> None:
        started = time.perf_counter()
        timer.stage = ApplyStage.RESTART
        try:
            await self.control.restart(self.package.units)
        except RestartFailed as exc:
            raise _Failure(ApplyStage.RESTART, str(exc)) from None
        started = timer.lap("restart", started)
        timer.stage = ApplyStage.HEALTH_CHECK
        problem = await check_health(self.package.health_check)
        timer.lap("health_check", started)
        if problem is not None:
            raise _Failure(ApplyStage.HEALTH_CHECK, problem)
        await asyncio.to_thread(self.releases.mark, command.version, "good")

    async def _failed(self, command: ChangesetApply, failure: _Failure, timer: _Timer) -> ChangesetFailed:
        """Put the node back on its previous good release if the new one was switched to (and not yet
        found good), then say so."""
        switched_back = False
        try:
            if self.releases.current() == command.version and self.releases.state() != "good":
                switched_back = await self._switch_back(command.version)
        except Exception as exc:  # the failure is still reported, with this added
            log.exception("switch_back_failed", package=self.name)
            failure.error += f"; switching back failed too: {type(exc).__name__}: {exc}"
        try:
            running = self.releases.current()
        except ChangesetError:
            running = None
        log.error(
            "changeset_failed",
            package=self.name,
            stage=failure.stage.value,
            error=failure.error[:500],
            switched_back=switched_back,
            running=running,
            steps=timer.steps,
        )
        return ChangesetFailed(
            deployment_id=command.deployment_id,
            node=self.settings.node,
            changeset_id=command.changeset_id,
            package=self.name,
            version=command.version,
            stage=failure.stage,
            error=failure.error[:2000],
            switched_back=switched_back,
            running_version=running,
        )

    async def _switch_back(self, bad: str) -> bool:
        target = self.releases.previous_good()
        if target is None:
            await asyncio.to_thread(self.releases.mark, bad, "bad")
            log.error("no_release_to_switch_back_to", package=self.name, version=bad)
            return False
        await asyncio.to_thread(self.releases.mark, bad, "bad")
        await asyncio.to_thread(self.releases.switch_to, target)
        try:
            await self.control.restart(self.package.units)
        except RestartFailed as exc:
            log.error("restart_after_switch_back_failed", package=self.name, error=str(exc))
            return True
        problem = await check_health(self.package.health_check)  # the reply says it serves again
        if problem is None:
            log.warning("switched_back", package=self.name, bad=bad, now=target)
        else:
            log.error("switched_back_but_unhealthy", package=self.name, bad=bad, now=target, error=problem)
        return True

    # -- drift ---------------------------------------------------------------------------

    async def check_drift(self) -> DriftDetected | None:
        """A ``drift.detected`` the first time a distinct drift is seen; None otherwise."""
        async with self.lock:
            version = self.releases.current()
            try:
                status = await asyncio.to_thread(self.releases.drift)
            except ChangesetError as exc:
                log.error("drift_scan_failed", package=self.name, error=str(exc))
                return None
            mark = f"drift.{self.name}"
            if status is None or version is None:
                self.marks.set(mark, None)
                return None
            entries = status.entries()
            fingerprint = hashlib.sha256(
                f"{version}\n".encode() + b"\n".join(code.encode() + b" " + path for code, path in entries)
            ).hexdigest()
            if self.marks.get(mark) == fingerprint:
                return None
            self.marks.set(mark, fingerprint)

        def listed(paths: list[bytes]) -> list[str]:
            return [os.fsdecode(p) for p in sorted(paths)[:_MAX_LISTED]]

        log.warning("drift_detected", package=self.name, version=version, files=len(entries))
        return DriftDetected(
            node=self.settings.node,
            package=self.name,
            expected_version=version,
            added=listed(status.added),
            modified=listed(status.modified),
            deleted=listed(status.deleted),
        )
