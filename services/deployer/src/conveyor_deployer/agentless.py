"""Agentless nodes (``agent: none``): the archive over SFTP, ``conveyor changeset apply`` run there
over SSH, the units restarted — the same checks and atomic switch as a listener's, and the same
events, published by the deployer on the node's behalf."""

from __future__ import annotations

import asyncio
import shlex
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from conveyor.changeset import ArtifactStore, ChangesetError
from conveyor.contracts import ChangesetApplied, ChangesetFailed, Payload
from conveyor.contracts.catalogue import ApplyStage
from conveyor_deployer.inventory import Node
from conveyor_deployer.promotions import NodeRun, NodeState, Promotion
from conveyor_deployer.ssh import HostKeyChanged, HostKeyUnknown, NodeUnreachable, SshError

if TYPE_CHECKING:
    from conveyor_deployer.config import Settings
    from conveyor_deployer.fleet import Fleet
    from conveyor_deployer.mirror import Mirror
    from conveyor_deployer.nodes import NodeAccess
    from conveyor_deployer.promotions import PromotionStore

__all__ = ["AgentlessNodes"]


class AgentlessNodes:
    """The deployer's half that reaches agentless nodes; mixed into :class:`Deployer`."""

    settings: Settings
    mirror: Mirror
    store: ArtifactStore
    nodes: NodeAccess
    fleet: Fleet
    promotions: PromotionStore

    def _announce(self, env: str, payload: Payload, *, actor: str | None = None) -> None:
        raise NotImplementedError

    def _node_done(self, promotion: Promotion, run: NodeRun, state: NodeState, error: str | None) -> None:
        raise NotImplementedError

    async def _node_over_ssh(self, promotion: Promotion, run: NodeRun, node: Node) -> None:
        """An agentless node: the archive over SFTP, the same apply code run there over SSH
        (``conveyor changeset apply``), the units restarted; the same events as a listener's."""
        root = node.release_roots[promotion.package]
        try:
            current = await self.nodes.run(
                node, ["sh", "-c", f"readlink {shlex.quote(root)}/current || true"]
            )
            run.from_version = current.strip().rpartition("/")[2] or None
            if run.from_version == promotion.version:
                self._node_done(promotion, run, NodeState.SUCCEEDED, None)
                return
            run.state, run.sent_at = NodeState.APPLYING, datetime.now(UTC)
            self.promotions.save(promotion)
            error, state = await self._ssh_apply(promotion, run, node, run.from_version, promotion.version)
        except HostKeyChanged as exc:
            self._node_done(promotion, run, NodeState.FAILED, f"refused: {exc}")
            return
        except (NodeUnreachable, HostKeyUnknown) as exc:
            self._node_done(promotion, run, NodeState.UNREACHABLE, str(exc))
            return
        except (SshError, ChangesetError, OSError) as exc:
            self._node_done(promotion, run, NodeState.FAILED, str(exc))
            return
        self._over_ssh_reply(
            promotion, run, promotion.version, before=run.from_version, error=error, state=state
        )

    async def _ssh_apply(
        self, promotion: Promotion, run: NodeRun, node: Node, parent: str | None, version: str
    ) -> tuple[str | None, NodeState]:
        """Apply ``parent`` → ``version`` on an agentless node; (error, the node's state after).

        A failed restart switches the node back to the release it ran (``conveyor changeset
        rollback``) and restarts again, as a listener would.
        """
        root = node.release_roots[promotion.package]
        target = self.nodes.target(node)
        run.changeset_id = await self.mirror.changeset(promotion.package, parent, version)
        local = await self.store.download(run.changeset_id, self.settings.state_dir / "outgoing")
        try:
            incoming = (
                await self.nodes.run(node, ["mktemp", "-d", "-t", "conveyor-incoming.XXXXXXXX"])
            ).strip()
            remote = f"{incoming}/{run.changeset_id}.zip"
            await self.nodes.pool.put(target, local, remote, timeout=600)
        finally:
            await asyncio.to_thread(local.unlink, missing_ok=True)
        conveyor = self.settings.remote_conveyor
        try:
            applied = await self.nodes.pool.run(
                target, [conveyor, "changeset", "apply", remote, "--root", root], check=False, timeout=600
            )
        finally:
            await self.nodes.pool.run(target, ["rm", "-rf", incoming], check=False)
        if applied.exit_status != 0:
            return (
                applied.stderr or applied.stdout
            ).strip() or "conveyor changeset apply failed", NodeState.FAILED
        try:
            for unit in node.packages[promotion.package]:
                await self.nodes.pool.run(target, _restart_command(node, unit), timeout=120)
        except SshError as exc:
            await self.nodes.pool.run(
                target, [conveyor, "changeset", "rollback", "--root", root], check=False
            )
            for unit in node.packages[promotion.package]:
                await self.nodes.pool.run(target, _restart_command(node, unit), check=False, timeout=120)
            return f"restart: {exc}; switched back", NodeState.ROLLED_BACK
        return None, NodeState.SUCCEEDED

    def _over_ssh_reply(
        self,
        promotion: Promotion,
        run: NodeRun,
        version: str,
        *,
        before: str | None,
        error: str | None,
        state: NodeState,
    ) -> None:
        """Record an agentless node's outcome as a listener would report it."""
        now = datetime.now(UTC)
        if error is None:
            self.fleet.applied(run.node, promotion.package, version, now)
            payload: Payload = ChangesetApplied(
                deployment_id=promotion.id,
                node=run.node,
                changeset_id=run.changeset_id or "0" * 64,
                package=promotion.package,
                version=version,
                previous_version=before,
                duration_s=(now - (run.sent_at or now)).total_seconds(),
            )
        else:
            payload = ChangesetFailed(
                deployment_id=promotion.id,
                node=run.node,
                changeset_id=run.changeset_id or "0" * 64,
                package=promotion.package,
                version=version,
                stage=ApplyStage.RESTART if state is NodeState.ROLLED_BACK else ApplyStage.UNPACK,
                error=error[:2000],
                switched_back=state is NodeState.ROLLED_BACK,
                running_version=before,
            )
        self._announce(promotion.to_env, payload)
        self._node_done(promotion, run, state, error and error[:2000])


def _restart_command(node: Node, unit: str) -> list[str]:
    if node.service_manager == "supervisord":
        return ["supervisorctl", "restart", unit]
    return ["systemctl", "--no-pager", "restart", unit]
