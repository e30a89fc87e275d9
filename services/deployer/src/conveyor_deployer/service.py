"""The deployer's rules: gates, waves, failure budgets, rollbacks, approvals, blocked versions."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from conveyor.bus import Bus
from conveyor.bus.outbox import Outbox
from conveyor.changeset import ArtifactStore, ChangesetError
from conveyor.contracts import (
    ChangesetApplied,
    ChangesetApply,
    ChangesetCreated,
    ChangesetFailed,
    DeploymentFailed,
    DeploymentNodeFailed,
    DeploymentNodeSucceeded,
    DeploymentRequested,
    DeploymentStarted,
    DeploymentSucceeded,
    Envelope,
    NodeHeartbeat,
    Payload,
)
from conveyor.contracts.catalogue import DeploymentApproved, VersionBlocked, VersionUnblocked
from conveyor.observability import get_logger
from conveyor.signing import SigningKey, unsigned_authorization
from conveyor_deployer.agentless import AgentlessNodes
from conveyor_deployer.config import Settings
from conveyor_deployer.firewall import FirewallControl
from conveyor_deployer.fleet import Fleet
from conveyor_deployer.inventory import AgentKind, Inventory
from conveyor_deployer.mirror import Mirror, MirrorGap
from conveyor_deployer.nodes import NodeAccess
from conveyor_deployer.promotions import (
    Kind,
    NodeRun,
    NodeState,
    Promotion,
    PromotionState,
    PromotionStore,
    budget_of,
    plan_waves,
)
from conveyor_deployer.rabbit.control import RabbitControl
from conveyor_deployer.ssh import SshError

__all__ = ["Deployer", "Refused"]

log = get_logger(__name__)


class Refused(Exception):
    """A request the rules do not allow; the message says which rule and what to do."""

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class Deployer(AgentlessNodes):
    def __init__(self, settings: Settings, inventory: Inventory, buses: dict[str, Bus]) -> None:
        self.settings = settings
        self.inventory = inventory
        self.buses = buses
        state = settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        token = settings.artifact_store_token.get_secret_value() if settings.artifact_store_token else None
        self.store = ArtifactStore(settings.artifact_store_url, token)
        self._stop = asyncio.Event()
        self.mirror = Mirror(
            state / "mirror",
            self.store,
            keep=settings.mirror_keep,
            retry_delays=[0.5, 1, 2, 4, 8, 16, 30],
            stop=self._stop,
        )
        self.fleet = Fleet(state / "fleet.json")
        self.promotions = PromotionStore(state)
        self.outboxes = {env: Outbox(state / "outbox" / env, bus) for env, bus in buses.items()}
        self._changed: dict[UUID, asyncio.Event] = {}
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._key: SigningKey | None = None
        self.started_at = datetime.now(UTC)
        self.nodes = NodeAccess(settings, inventory, self._announce)
        self.firewall = FirewallControl(
            settings,
            inventory,
            buses,
            self.outboxes,
            key=lambda: self._key,
            nodes=self.nodes,
            announce=self._announce,
        )
        self.rabbit = RabbitControl(settings, inventory, self.nodes, self._announce_if_known)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._key = SigningKey.load(self.settings.signing_key_file)
        except FileNotFoundError:
            log.warning("no_signing_key", path=str(self.settings.signing_key_file))
        for env, outbox in self.outboxes.items():
            self._background.append(asyncio.create_task(outbox.run(self._stop), name=f"outbox:{env}"))
        await self.rabbit.start()
        for promotion in self.promotions.unfinished():
            if promotion.state is PromotionState.RUNNING:
                log.info("promotion_resumed", promotion=str(promotion.id))
                self._launch(promotion)

    async def stopping(self) -> None:
        """First thing at shutdown: waits for the artifact store give up, promotions pause."""
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()
        await self.rabbit.stop()
        await self.nodes.close()
        for task in [*self._tasks.values(), *self._background]:
            task.cancel()
        for task in [*self._tasks.values(), *self._background]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _announce_if_known(self, env: str, payload: Payload) -> None:
        if env in self.outboxes:
            self._announce(env, payload)
        else:
            log.error("no_broker_for_env", env=env, message_type=payload.message_type)

    def _launch(self, promotion: Promotion) -> None:
        self._changed.setdefault(promotion.id, asyncio.Event())
        task = asyncio.create_task(self._run(promotion.id), name=f"promotion:{promotion.id}")
        self._tasks[promotion.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(promotion.id, None))

    def _announce(self, env: str, payload: Payload, *, actor: str | None = None) -> None:
        """Publish an event (through the outbox); the events of one deployment share its id as their
        correlation id, as its apply commands and the nodes' answers do, so the notifier makes one
        message of them."""
        bus = self.buses[env]
        deployment = getattr(payload, "deployment_id", None)
        correlation = deployment if isinstance(deployment, UUID) else None
        self.outboxes[env].put(bus.wrap(payload, actor=actor, correlation_id=correlation))

    # -- requests ------------------------------------------------------------------------

    def request(
        self,
        *,
        package: str,
        to_env: str,
        version: str | None,
        user: str,
        canary: int = 1,
        wave_size: str = "25%",
        max_failures: str = "0",
        reason: str | None = None,
    ) -> Promotion:
        """Check the gates and start (or park for approval) a promotion."""
        self._can_sign()
        try:
            env = self.inventory.env(to_env)
        except KeyError as exc:
            raise Refused(str(exc.args[0]), status=404) from None
        previous = self.inventory.previous(to_env)
        if version is None:
            proven = previous is not None and self.inventory.nodes_of(previous, package)
            version = (
                self._current_version(previous, package) if previous and proven else self.mirror.head(package)
            )
            if version is None:
                raise Refused(f"no version of {package} to promote: name one with --version")
        self._gates(package, version, previous, to_env)
        promotion = self._plan(
            Promotion(
                package=package,
                version=version,
                from_env=previous,
                to_env=to_env,
                requested_by=user,
                reason=reason,
                canary=canary,
                wave_size=wave_size,
                max_failures=max_failures,
                state=PromotionState.AWAITING_APPROVAL if env.approval else PromotionState.RUNNING,
            )
        )
        self.promotions.save(promotion)
        self._announce(
            to_env,
            DeploymentRequested(
                deployment_id=promotion.id,
                package=package,
                version=version,
                from_env=previous,
                to_env=to_env,
                requested_by=user,
                reason=reason,
            ),
            actor=user,
        )
        log.info(
            "promotion_requested", promotion=str(promotion.id), package=package, version=version, env=to_env
        )
        if promotion.state is PromotionState.RUNNING:
            self._launch(promotion)
        return promotion

    def _alive(self, node: str) -> bool:
        """Heard from recently — or known, and the deployer itself only just started (the heartbeats
        queued while it was down are still being read)."""
        if self.fleet.alive(node, self.settings.heartbeat_stale_s):
            return True
        young = (datetime.now(UTC) - self.started_at).total_seconds() < self.settings.heartbeat_stale_s
        return young and node in self.fleet.nodes

    def _can_sign(self) -> None:
        if self._key is None:
            raise Refused(
                f"no signing key at {self.settings.signing_key_file}: run `conveyor keys init` "
                "and restart the deployer",
                status=503,
            )

    def _plan(self, promotion: Promotion) -> Promotion:
        nodes = [n.name for n in self.inventory.nodes_of(promotion.to_env, promotion.package)]
        if not nodes:
            raise Refused(f"no node of {promotion.to_env} runs {promotion.package}")
        try:
            waves = plan_waves(nodes, canary=promotion.canary, wave_size=promotion.wave_size)
            budget = budget_of(promotion.max_failures, len(nodes))
        except ValueError as exc:
            raise Refused(str(exc), status=422) from None
        promotion.waves, promotion.budget = waves, budget
        promotion.nodes = {node: NodeRun(node=node, wave=i) for i, wave in enumerate(waves) for node in wave}
        return promotion

    def _current_version(self, env: str, package: str) -> str | None:
        versions = {self.fleet.version(n.name, package) for n in self.inventory.nodes_of(env, package)}
        return versions.pop() if len(versions) == 1 else None

    def _gates(
        self, package: str, version: str, previous: str | None, to_env: str, *, skip: UUID | None = None
    ) -> None:
        blocked = self.promotions.is_blocked(package, version)
        if blocked:
            raise Refused(
                f"{package} {version[:12]} is blocked ({blocked['reason']}, by {blocked['by']}); "
                "`conveyor unblock` it first"
            )
        if not self.mirror.has(package, version):
            raise Refused(f"{package} {version[:12]} is unknown: no changeset created it", status=404)
        self._none_running(package, to_env, skip=skip)
        if previous is None:
            return
        self._proven(package, version, previous)

    def _none_running(self, package: str, to_env: str, *, skip: UUID | None = None) -> None:
        for other in self.promotions.unfinished():
            if other.package == package and other.to_env == to_env and other.id != skip:
                raise Refused(f"promotion {other.id} of {package} into {to_env} is still {other.state}")

    def _proven(self, package: str, version: str, previous: str) -> None:
        nodes = self.inventory.nodes_of(previous, package)
        if not nodes and previous == self.settings.source_env:
            return  # straight from where versions are made: the source runs it (and it is mirrored)
        if not nodes:
            raise Refused(f"no node of {previous} runs {package}: nothing has proven {version[:12]}")
        now = datetime.now(UTC)
        soak = self.inventory.env(previous).soak_s
        for node in nodes:
            running = self.fleet.version(node.name, package)
            if running != version:
                runs = (running or "nothing")[:12]
                raise Refused(f"{version[:12]} is not current in {previous}: {node.name} runs {runs}")
            listening = node.agent is AgentKind.LISTENER  # agentless nodes send no heartbeats
            if listening and not self.fleet.alive(node.name, self.settings.heartbeat_stale_s, now):
                raise Refused(f"{node.name} in {previous} has not reported for a while: is it healthy?")
            since = self.fleet.since(node.name, package)
            if since is not None and (now - since).total_seconds() < soak:
                left = soak - (now - since).total_seconds()
                raise Refused(
                    f"{version[:12]} has soaked in {previous} for less than {soak:g}s ({left:.0f}s left)"
                )

    def approve(self, promotion_id: UUID, user: str) -> Promotion:
        promotion = self._get(promotion_id)
        if promotion.state is not PromotionState.AWAITING_APPROVAL:
            raise Refused(f"promotion {promotion_id} is {promotion.state}, not awaiting approval")
        if user == promotion.requested_by:
            raise Refused(
                f"{user} requested promotion {promotion_id}: a second person must approve it", status=403
            )
        self._can_sign()
        self._gates(
            promotion.package, promotion.version, promotion.from_env, promotion.to_env, skip=promotion.id
        )
        promotion.approved_by = user
        promotion.state = PromotionState.RUNNING
        self.promotions.save(promotion)
        self._announce(
            promotion.to_env,
            DeploymentApproved(
                deployment_id=promotion.id,
                package=promotion.package,
                version=promotion.version,
                to_env=promotion.to_env,
                requested_by=promotion.requested_by,
                approved_by=user,
            ),
            actor=user,
        )
        self._launch(promotion)
        return promotion

    def reject(self, promotion_id: UUID, user: str, reason: str | None) -> Promotion:
        """Turn down a promotion awaiting approval (the requester may withdraw it too)."""
        promotion = self._get(promotion_id)
        if promotion.state is not PromotionState.AWAITING_APPROVAL:
            raise Refused(f"promotion {promotion_id} is {promotion.state}, not awaiting approval")
        for run in promotion.nodes.values():
            run.state, run.error = NodeState.FAILED, "not started: the promotion was rejected"
        why = f"rejected by {user}" + (f": {reason}" if reason else "")
        self._finish(promotion, PromotionState.FAILED, why, datetime.now(UTC))
        return promotion

    def retry(self, promotion_id: UUID, user: str) -> Promotion:
        """Run the failed and unreachable nodes again (the succeeded ones are left alone)."""
        promotion = self._get(promotion_id)
        if not promotion.state.final:
            raise Refused(f"promotion {promotion_id} is still {promotion.state}")
        if promotion.rolled_back:
            raise Refused(f"promotion {promotion_id} was rolled back: request a new one")
        self._can_sign()
        blocked = self.promotions.is_blocked(promotion.package, promotion.version)
        if blocked:
            raise Refused(f"{promotion.package} {promotion.version[:12]} is blocked ({blocked['reason']})")
        self._none_running(promotion.package, promotion.to_env, skip=promotion.id)
        again = [
            run
            for run in promotion.nodes.values()
            if run.state in (NodeState.FAILED, NodeState.UNREACHABLE, NodeState.ROLLED_BACK)
        ]
        if not again:
            raise Refused(f"promotion {promotion_id} has no failed or unreachable node to retry")
        for run in again:
            run.state, run.command_id, run.sent_at, run.error, run.finished_at = (
                NodeState.PENDING,
                None,
                None,
                None,
                None,
            )
        promotion.state, promotion.outcome, promotion.finished_at = PromotionState.RUNNING, None, None
        promotion.attempt += 1
        self.promotions.save(promotion)
        log.info("promotion_retried", promotion=str(promotion.id), nodes=[r.node for r in again], by=user)
        self._launch(promotion)
        return promotion

    def rollback(
        self, *, package: str, env: str, to_version: str | None, user: str, reason: str | None
    ) -> Promotion:
        """Back to the last good version (or ``to_version``) through the same waves; block the bad one."""
        self._can_sign()
        try:
            self.inventory.env(env)
        except KeyError as exc:
            raise Refused(str(exc.args[0]), status=404) from None
        self._none_running(package, env)
        bad = self._current_version(env, package)
        target = to_version or self._last_good(package, env, bad)
        if target is None:
            raise Refused(f"no earlier good version of {package} in {env}: name one with --to")
        if target == bad:
            raise Refused(f"{env} already runs {target[:12]}")
        if not self.mirror.has(package, target):
            raise Refused(f"{package} {target[:12]} is not in the deployer's mirror", status=404)
        if bad is not None:
            why = reason or f"rolled back in {env} by {user}"
            self.promotions.block(package, bad, by=user, reason=why, env=env)
            self._announce(
                env, VersionBlocked(package=package, version=bad, blocked_by=user, reason=why), actor=user
            )
        promotion = self._plan(
            Promotion(
                kind=Kind.ROLLBACK,
                package=package,
                version=target,
                from_env=None,
                to_env=env,
                requested_by=user,
                reason=reason or f"rollback from {(bad or 'unknown')[:12]}",
                canary=0,
                wave_size="100%",
                max_failures="100%",
            )
        )
        self.promotions.save(promotion)
        self._announce(
            env,
            DeploymentRequested(
                deployment_id=promotion.id,
                package=package,
                version=target,
                from_env=None,
                to_env=env,
                requested_by=user,
                strategy="all-at-once",
                reason=promotion.reason,
            ),
            actor=user,
        )
        self._launch(promotion)
        return promotion

    def _last_good(self, package: str, env: str, bad: str | None) -> str | None:
        """The version the environment ran before ``bad`` came, from the promotions that brought it."""
        for promotion in self.promotions.all():
            if promotion.package == package and promotion.to_env == env and promotion.version == bad:
                befores = {r.from_version for r in promotion.nodes.values() if r.from_version}
                if len(befores) == 1:
                    return befores.pop()
        return None

    def unblock(self, package: str, version: str, user: str, reason: str | None) -> None:
        blocked = self.promotions.is_blocked(package, version)
        if blocked is None or not self.promotions.unblock(package, version):
            raise Refused(f"{package} {version[:12]} is not blocked", status=404)
        env = blocked.get("env") or self.inventory.env_names()[0]
        self._announce(
            env if env in self.buses else next(iter(self.buses)),
            VersionUnblocked(package=package, version=version, unblocked_by=user, reason=reason),
            actor=user,
        )

    def _get(self, promotion_id: UUID) -> Promotion:
        promotion = self.promotions.get(promotion_id)
        if promotion is None:
            raise Refused(f"no promotion {promotion_id}", status=404)
        return promotion

    # -- running -------------------------------------------------------------------------

    async def _run(self, promotion_id: UUID) -> None:
        promotion = self._get(promotion_id)
        started = datetime.now(UTC)
        if promotion.attempt == 1 and all(r.state is NodeState.PENDING for r in promotion.nodes.values()):
            self._announce(
                promotion.to_env,
                DeploymentStarted(
                    deployment_id=promotion.id,
                    package=promotion.package,
                    version=promotion.version,
                    to_env=promotion.to_env,
                    waves=promotion.waves,
                    failure_budget=promotion.budget,
                ),
            )
        try:
            for index, wave in enumerate(promotion.waves):
                await asyncio.gather(*(self._node(promotion, promotion.nodes[name]) for name in wave))
                if promotion.failures() > promotion.budget:
                    await self._roll_back(promotion)
                    return self._finish(
                        promotion,
                        PromotionState.FAILED,
                        f"{promotion.failures()} nodes failed in wave {index}, over the budget of "
                        f"{promotion.budget}: the nodes done were rolled back",
                        started,
                    )
            failed = promotion.failures()
            outcome = (
                f"{failed} nodes failed, within the budget of {promotion.budget}" if failed else "all nodes"
            )
            return self._finish(promotion, PromotionState.SUCCEEDED, outcome, started)
        except asyncio.CancelledError:
            self.promotions.save(promotion)  # resumed from here at the next start
            raise
        except Exception as exc:  # a bug or an outage of our own: the promotion still ends, and says why
            log.exception("promotion_crashed", promotion=str(promotion.id))
            for run in promotion.nodes.values():
                if not run.state.final:
                    self._node_done(promotion, run, NodeState.FAILED, f"the deployer failed: {exc}")
            return self._finish(promotion, PromotionState.FAILED, f"the deployer failed: {exc}", started)

    def _finish(self, promotion: Promotion, state: PromotionState, outcome: str, started: datetime) -> None:
        promotion.state, promotion.outcome = state, outcome
        promotion.finished_at = datetime.now(UTC)
        self.promotions.save(promotion)
        nodes = {name: run.state.outcome() for name, run in promotion.nodes.items()}
        duration = (promotion.finished_at - started).total_seconds()
        common: dict[str, Any] = {
            "deployment_id": promotion.id,
            "package": promotion.package,
            "version": promotion.version,
            "to_env": promotion.to_env,
            "nodes": nodes,
            "duration_s": max(duration, 0.0),
        }
        if state is PromotionState.SUCCEEDED:
            self._announce(promotion.to_env, DeploymentSucceeded(**common))
        else:
            self._announce(
                promotion.to_env,
                DeploymentFailed(**common, reason=outcome[:2000], rolled_back=promotion.rolled_back),
            )
        log.info("promotion_finished", promotion=str(promotion.id), state=state.value, outcome=outcome)

    async def _node(self, promotion: Promotion, run: NodeRun) -> None:
        if run.state.final:
            return
        if run.state is NodeState.APPLYING and run.command_id is not None:
            await self._await_reply(promotion, run, run.command_id)
            return
        node = run.node
        _, entry = self.inventory.node(node)
        if entry.agent is AgentKind.NONE:
            await self._node_over_ssh(promotion, run, entry)
            return
        if not self._alive(node):
            self._node_done(promotion, run, NodeState.UNREACHABLE, f"{node} has not reported for a while")
            return
        current = self.fleet.version(node, promotion.package)
        run.from_version = current
        if current == promotion.version:
            self._node_done(promotion, run, NodeState.SUCCEEDED, None)
            return
        try:
            run.changeset_id = await self.mirror.changeset(promotion.package, current, promotion.version)
        except MirrorGap as exc:
            self._node_done(promotion, run, NodeState.FAILED, str(exc))
            return
        run.command_id = await self._send(promotion, node, run.changeset_id, current, promotion.version)
        run.state, run.sent_at = NodeState.APPLYING, datetime.now(UTC)
        self.promotions.save(promotion)
        await self._await_reply(promotion, run, run.command_id)

    async def _send(
        self, promotion: Promotion, node: str, changeset_id: str, parent: str | None, version: str
    ) -> UUID:
        if self._key is None:
            raise Refused(f"no signing key at {self.settings.signing_key_file}: run `conveyor keys init`")
        command = ChangesetApply(
            deployment_id=promotion.id,
            node=node,
            changeset_id=changeset_id,
            package=promotion.package,
            parent_version=parent,
            version=version,
            archive_url=self.store.url_for(changeset_id),
            authorization=unsigned_authorization(),  # signed below
        )
        bus = self.buses[promotion.to_env]
        envelope = self._key.sign(
            bus.wrap(command, actor=promotion.requested_by, correlation_id=promotion.id),
            role="deployer",
            ttl_s=self.settings.command_ttl_s,
        )
        self.outboxes[promotion.to_env].put(envelope)
        log.info("apply_sent", promotion=str(promotion.id), node=node, version=version, parent=parent)
        return envelope.id

    async def _await_reply(self, promotion: Promotion, run: NodeRun, command_id: UUID) -> None:
        event = self._changed.setdefault(promotion.id, asyncio.Event())
        # Sent before this deployer started: its reply may be waiting in the queue; a full timeout from now.
        sent = max(run.sent_at or datetime.now(UTC), self.started_at)
        while run.state is NodeState.APPLYING and run.command_id == command_id:
            left = self.settings.node_timeout_s - (datetime.now(UTC) - sent).total_seconds()
            if left <= 0:
                self._node_done(
                    promotion,
                    run,
                    NodeState.UNREACHABLE,
                    f"no reply within {self.settings.node_timeout_s:g}s",
                )
                return
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)

    def _node_done(self, promotion: Promotion, run: NodeRun, state: NodeState, error: str | None) -> None:
        run.state, run.error, run.finished_at = state, error, datetime.now(UTC)
        self.promotions.save(promotion)
        duration = (run.finished_at - run.sent_at).total_seconds() if run.sent_at else 0.0
        if state is NodeState.SUCCEEDED:
            payload: Payload = DeploymentNodeSucceeded(
                deployment_id=promotion.id,
                package=promotion.package,
                version=promotion.version,
                node=run.node,
                wave=run.wave,
                duration_s=max(duration, 0.0),
            )
        else:
            payload = DeploymentNodeFailed(
                deployment_id=promotion.id,
                package=promotion.package,
                version=promotion.version,
                node=run.node,
                wave=run.wave,
                outcome=state.outcome(),  # type: ignore[arg-type]  # the bad states only
                error=(error or state.value)[:2000],
            )
        self._announce(promotion.to_env, payload)
        log.info("node_finished", promotion=str(promotion.id), node=run.node, state=state.value, error=error)

    async def _roll_back(self, promotion: Promotion) -> None:
        """Past the budget: take every node this promotion changed back to where it was."""
        promotion.rolled_back = True
        done = [
            r
            for r in promotion.nodes.values()
            if r.state is NodeState.SUCCEEDED and r.from_version and r.from_version != promotion.version
        ]
        await asyncio.gather(*(self._undo(promotion, run) for run in done))
        for run in promotion.nodes.values():
            if not run.state.final:
                self._node_done(
                    promotion, run, NodeState.ROLLED_BACK, "not started: the promotion rolled back"
                )

    async def _undo(self, promotion: Promotion, run: NodeRun) -> None:
        assert run.from_version is not None
        _, node = self.inventory.node(run.node)
        if node.agent is AgentKind.NONE:
            try:
                error, _ = await self._ssh_apply(promotion, run, node, promotion.version, run.from_version)
            except (SshError, ChangesetError, OSError) as exc:
                error = str(exc)
            if error is None:
                self.fleet.applied(run.node, promotion.package, run.from_version, datetime.now(UTC))
                self._node_done(promotion, run, NodeState.ROLLED_BACK, "rolled back with the promotion")
            else:
                self._node_done(promotion, run, NodeState.FAILED, f"rolling back failed: {error}")
            return
        try:
            changeset = await self.mirror.changeset(promotion.package, promotion.version, run.from_version)
        except ChangesetError as exc:
            self._node_done(promotion, run, NodeState.FAILED, f"could not roll back: {exc}")
            return
        run.undo_command_id = await self._send(
            promotion, run.node, changeset, promotion.version, run.from_version
        )
        run.sent_at = datetime.now(UTC)
        run.state = NodeState.APPLYING
        run.command_id = run.undo_command_id
        self.promotions.save(promotion)
        await self._await_reply(promotion, run, run.undo_command_id)

    # -- events from the nodes ---------------------------------------------------------------

    async def on_created(self, envelope: Envelope[ChangesetCreated]) -> None:
        if envelope.env != self.settings.source_env:
            return
        with contextlib.suppress(MirrorGap):  # logged; the version cannot be promoted
            await self.mirror.take(envelope.payload)

    async def on_heartbeat(self, envelope: Envelope[NodeHeartbeat]) -> None:
        beat = envelope.payload
        if beat.agent == "changelog-listener":
            self.fleet.heartbeat(beat.node, dict(beat.packages), envelope.occurred_at)

    async def on_reply(self, envelope: Envelope[Any]) -> None:
        reply = envelope.payload
        assert isinstance(reply, ChangesetApplied | ChangesetFailed)
        if isinstance(reply, ChangesetApplied):
            self.fleet.applied(reply.node, reply.package, reply.version, envelope.occurred_at)
        else:
            self.fleet.failed(
                reply.node, reply.package, reply.version, reply.running_version, envelope.occurred_at
            )
        if reply.deployment_id is None or envelope.causation_id is None:
            return
        promotion = self.promotions.get(reply.deployment_id)
        if promotion is None:
            return
        run = promotion.by_command(envelope.causation_id)
        if run is None or run.state is not NodeState.APPLYING:
            return
        undo = envelope.causation_id == run.undo_command_id
        if isinstance(reply, ChangesetApplied):
            if undo:
                self._node_done(promotion, run, NodeState.ROLLED_BACK, "rolled back with the promotion")
            else:
                self._node_done(promotion, run, NodeState.SUCCEEDED, None)
        elif undo:
            self._node_done(
                promotion, run, NodeState.FAILED, f"rolling back failed: {reply.stage}: {reply.error}"
            )
        else:
            state = NodeState.ROLLED_BACK if reply.switched_back else NodeState.FAILED
            self._node_done(promotion, run, state, f"{reply.stage}: {reply.error}")
        self._changed.setdefault(promotion.id, asyncio.Event()).set()
