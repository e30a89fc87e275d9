"""The listener on one node: its source and target packages, the command handler, and the
background work (watching, drift scans, heartbeats, the outbox)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from conveyor.bus import Bus
from conveyor.bus.journal import Journal, answer_once
from conveyor.bus.outbox import Outbox
from conveyor.changeset import ArtifactStore
from conveyor.contracts import ChangesetApply, ChangesetFailed, Envelope, NodeHeartbeat, Payload
from conveyor.contracts.catalogue import ApplyStage
from conveyor.observability import get_logger
from conveyor.signing import CommandRefused, NonceStore, TrustedKeys, Verifier
from conveyor.tasks import BackgroundTasks
from conveyor_changelog_listener import __version__
from conveyor_changelog_listener.config import Role, Settings
from conveyor_changelog_listener.control import unit_control
from conveyor_changelog_listener.source import Source
from conveyor_changelog_listener.state import Marks
from conveyor_changelog_listener.target import Target

__all__ = ["Listener"]

log = get_logger(__name__)


class Listener:
    """Everything one listener process does, built from its settings and its environment's bus."""

    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.started_at = datetime.now(UTC)
        state = settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(state / "outbox", bus, retry_s=settings.bus.reconnect_interval_s)
        self.journal = Journal(state / "commands")
        self.marks = Marks(state / "marks")
        token = settings.artifact_store_token.get_secret_value() if settings.artifact_store_token else None
        store = ArtifactStore(settings.artifact_store_url, token)
        control = unit_control(settings)
        self.targets = {
            p.name: Target(p, settings, store=store, control=control, marks=self.marks)
            for p in settings.packages
            if p.role is Role.TARGET
        }
        self.sources = {
            p.name: Source(p, settings, store=store, marks=self.marks, announce=self.announce)
            for p in settings.packages
            if p.role is Role.SOURCE
        }
        trusted = TrustedKeys.load(settings.trusted_keys_file, missing_ok=True)
        if not len(trusted):
            log.warning("no_trusted_keys", path=str(settings.trusted_keys_file))
        self.verifier = Verifier(
            trusted,
            NonceStore(state / "nonces.log"),
            node=settings.node,
            roles={"deployer"},
            env=settings.env,
        )
        self._stop = asyncio.Event()
        self._background = BackgroundTasks()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Clean what an interrupted apply left, then start the background work."""
        for target in self.targets.values():
            await target.recover()
        self._background.spawn("outbox", self.outbox.run(self._stop))
        self._background.spawn("heartbeat", self._every(self.settings.heartbeat_interval_s, self._heartbeat))
        if self.targets:
            self._background.spawn("drift", self._every(self.settings.rescan_interval_s, self.scan_drift))
        for source in self.sources.values():
            self._background.spawn(f"source:{source.name}", source.run(self._stop))
        log.info("listener_started", targets=list(self.targets), sources=list(self.sources))

    async def stop(self) -> None:
        """Stop watching and scanning; an apply in progress finishes first (the consumer waits for it)."""
        self._stop.set()
        await self._background.cancel_all()

    async def _every(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            try:
                await action()
            except Exception as exc:  # noqa: BLE001 - one failed round must not end the loop
                log.error("periodic_task_failed", task=getattr(action, "__name__", "?"), error=str(exc)[:500])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    # -- publishing ----------------------------------------------------------------------

    def announce(self, payload: Payload, *, cause: Envelope[Any] | None = None) -> Envelope[Any]:
        """Into the outbox (durable), then out as soon as the broker confirms."""
        name = self.settings.service_name
        envelope = cause.follow_up(payload, source=name) if cause else self.bus.wrap(payload)
        self.outbox.put(envelope)
        return envelope

    async def _heartbeat(self) -> None:
        if not self.bus.connected:
            return  # a heartbeat is only worth sending now; the next one follows
        versions = {name: t.version() for name, t in self.targets.items()}
        versions |= {name: s.version() for name, s in self.sources.items()}
        beat = NodeHeartbeat(
            node=self.settings.node,
            agent="changelog-listener",
            agent_version=__version__,
            started_at=self.started_at,
            packages={name: version for name, version in versions.items() if version},
        )
        with contextlib.suppress(Exception):
            await self.bus.publish(self.bus.wrap(beat), mandatory=False)

    async def scan_drift(self) -> None:
        for target in self.targets.values():
            event = await target.check_drift()
            if event is not None:
                self.announce(event)

    # -- commands ------------------------------------------------------------------------

    async def on_apply(self, envelope: Envelope[ChangesetApply]) -> None:
        """Apply, reply, remember the reply: a redelivered command gets the same answer again."""
        command = envelope.payload
        outcome = await answer_once(
            self.journal,
            self.outbox,
            envelope,
            lambda: self._outcome(envelope),
            source=self.settings.service_name,
            publish_timeout_s=self.settings.bus.publish_timeout_s,
        )
        if isinstance(outcome, ChangesetFailed) and outcome.stage is ApplyStage.PARENT_MISMATCH:
            target = self.targets.get(command.package)
            drift = await target.check_drift() if target else None
            if drift is not None:
                self.announce(drift, cause=envelope)
                await self.outbox.drain(self.settings.bus.publish_timeout_s)

    async def _outcome(self, envelope: Envelope[ChangesetApply]) -> Payload:
        command = envelope.payload

        def refuse(stage: ApplyStage, error: str) -> ChangesetFailed:
            log.error("command_refused", stage=stage.value, error=error)
            target = self.targets.get(command.package)
            return ChangesetFailed(
                deployment_id=command.deployment_id,
                node=self.settings.node,
                changeset_id=command.changeset_id,
                package=command.package,
                version=command.version,
                stage=stage,
                error=error,
                switched_back=False,
                running_version=target.version() if target else None,
            )

        try:
            self.verifier.verify(envelope, target_node=self.settings.node)
        except CommandRefused as exc:
            return refuse(ApplyStage.AUTHORIZATION, f"{exc.reason.value}: {exc.detail}")
        target = self.targets.get(command.package)
        if target is None:
            return refuse(
                ApplyStage.CONFIGURATION, f"package {command.package!r} is not a target on this node"
            )
        return await target.apply(command)

    # -- status --------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name, target in self.targets.items():
            rows.append(
                {
                    "name": name,
                    "role": "target",
                    "root": str(target.package.root),
                    "version": target.version(),
                    "state": target.releases.state(),
                    "releases": target.releases.available(),
                }
            )
        for name, source in self.sources.items():
            rows.append(
                {
                    "name": name,
                    "role": "source",
                    "mode": source.package.mode.value,
                    "root": str(source.package.root),
                    "version": source.version(),
                    "shipped": self.marks.get(f"shipped.{name}"),
                }
            )
        return rows
