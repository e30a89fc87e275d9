"""The rules of recording: each event becomes rows, once, whatever order it arrives in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from conveyor.contracts import (
    ChangesetApplied,
    ChangesetCreated,
    ChangesetFailed,
    DeploymentApproved,
    DeploymentFailed,
    DeploymentNodeFailed,
    DeploymentNodeSucceeded,
    DeploymentRequested,
    DeploymentStarted,
    DeploymentSucceeded,
    DriftDetected,
    Envelope,
    FirewallDisabled,
    FirewallEnabled,
    FirewallRejected,
    MessageDeadLettered,
    NodeCtlUserProvisioned,
    NodeCtlUserRemoved,
    NodeHeartbeat,
    NodeHostKeyChanged,
    Payload,
    VersionBlocked,
    VersionUnblocked,
)
from conveyor_version_db.models import (
    AuditEntry,
    Changeset,
    Deployment,
    DeploymentNode,
    DriftReport,
    Environment,
    EnvVersion,
    InboxMessage,
    Node,
    NodeVersion,
    Package,
    utcnow,
)

__all__ = ["RECORDERS", "Recorder", "ensure_environments", "record"]

Recorder = Callable[[AsyncSession, Envelope[Any]], Awaitable[None]]
T = TypeVar("T")


async def ensure_environments(session: AsyncSession, names: Sequence[str]) -> None:
    """The configured environments, in promotion order (positions follow the list)."""
    existing = {e.name: e for e in (await session.scalars(select(Environment))).all()}
    for position, name in enumerate(names):
        env = existing.get(name)
        if env is None:
            session.add(Environment(name=name, position=position))
        else:
            env.position = position


async def record(session: AsyncSession, envelope: Envelope[Any]) -> bool:
    """Apply one event in the caller's transaction; False if its id was applied before."""
    if await session.get(InboxMessage, str(envelope.id)) is not None:
        return False
    recorder = RECORDERS.get(type(envelope.payload))
    if recorder is not None:
        await recorder(session, envelope)
    session.add(InboxMessage(message_id=str(envelope.id), type=envelope.type, env=envelope.env))
    return True


# -- finding or creating what an event refers to ------------------------------------------


async def _create(session: AsyncSession, row: T, lookup: Callable[[], Awaitable[T | None]]) -> T:
    """Insert ``row``; if a concurrent transaction inserted the same key first, use that one.

    The insert runs in a savepoint, so losing the race costs nothing but a re-read.
    """
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        existing = await lookup()
        if existing is None:
            raise
        return existing
    return row


async def _env(session: AsyncSession, name: str) -> Environment:
    def lookup() -> Awaitable[Environment | None]:
        return session.scalar(select(Environment).where(Environment.name == name))

    env = await lookup()
    if env is None:  # an environment nobody configured: keep the event, order it last
        top = await session.scalar(
            select(Environment.position).order_by(Environment.position.desc()).limit(1)
        )
        env = await _create(session, Environment(name=name, position=(top or 0) + 1), lookup)
    return env


async def _package(session: AsyncSession, name: str) -> Package:
    def lookup() -> Awaitable[Package | None]:
        return session.scalar(select(Package).where(Package.name == name))

    package = await lookup()
    return package if package is not None else await _create(session, Package(name=name), lookup)


async def _node(session: AsyncSession, env_name: str, name: str) -> Node:
    env = await _env(session, env_name)

    def lookup() -> Awaitable[Node | None]:
        return session.scalar(select(Node).where(Node.env_id == env.id, Node.name == name))

    node = await lookup()
    if node is None:
        node = await _create(session, Node(env_id=env.id, name=name, labels={}, agent_versions={}), lookup)
    return node


async def _deployment(
    session: AsyncSession, deployment_id: str, package: str, version: str, env: str
) -> Deployment:
    """The deployment, created from whatever event arrives first (results can precede the start)."""
    deployment = await session.get(Deployment, deployment_id)
    if deployment is None:
        row = Deployment(
            id=deployment_id,
            package_id=(await _package(session, package)).id,
            version=version,
            to_env_id=(await _env(session, env)).id,
            state="requested",
            rolled_back=False,
        )
        deployment = await _create(session, row, lambda: session.get(Deployment, deployment_id))
    return deployment


def _audit(
    session: AsyncSession, envelope: Envelope[Any], *, target: str, outcome: str, **detail: Any
) -> None:
    session.add(
        AuditEntry(
            at=envelope.occurred_at,
            actor=envelope.actor,
            action=envelope.type,
            target=target,
            outcome=outcome,
            env=envelope.env,
            message_id=str(envelope.id),
            detail=detail,
        )
    )


async def _set_node_version(
    session: AsyncSession, node: Node, package: Package, version: str, at: datetime
) -> None:
    current = await session.get(NodeVersion, (node.id, package.id))
    if current is None:
        session.add(NodeVersion(node_id=node.id, package_id=package.id, version=version, updated_at=at))
    elif current.updated_at <= at:  # an older event arriving late does not roll the record back
        current.version, current.updated_at = version, at


async def _set_env_version(
    session: AsyncSession,
    env: Environment,
    package: Package,
    version: str,
    *,
    deployment_id: str,
    at: datetime,
) -> None:
    current = await session.get(EnvVersion, (env.id, package.id))
    if current is None:
        session.add(
            EnvVersion(
                env_id=env.id,
                package_id=package.id,
                version=version,
                deployment_id=deployment_id,
                updated_at=at,
            )
        )
    elif current.updated_at <= at:
        current.version, current.deployment_id, current.updated_at = version, deployment_id, at


async def _node_result(
    session: AsyncSession, deployment: Deployment, node: Node, *, state: str, wave: int | None, **fields: Any
) -> None:
    result = await session.get(DeploymentNode, (deployment.id, node.id))
    if result is None:
        result = DeploymentNode(deployment_id=deployment.id, node_id=node.id, state=state, wave=wave)
        session.add(result)
    result.state, result.wave, result.updated_at = state, wave if wave is not None else result.wave, utcnow()
    for name, value in fields.items():
        setattr(result, name, value)


# -- one recorder per event type -------------------------------------------------------------


async def _heartbeat(session: AsyncSession, envelope: Envelope[NodeHeartbeat]) -> None:
    beat = envelope.payload
    node = await _node(session, envelope.env, beat.node)
    if node.last_heartbeat_at is None or node.last_heartbeat_at <= envelope.occurred_at:
        node.last_heartbeat_at = envelope.occurred_at
        node.agent_versions = {**node.agent_versions, beat.agent: beat.agent_version}
        for package_name, version in beat.packages.items():
            package = await _package(session, package_name)
            await _set_node_version(session, node, package, version, envelope.occurred_at)


async def _changeset_created(session: AsyncSession, envelope: Envelope[ChangesetCreated]) -> None:
    event = envelope.payload
    package = await _package(session, event.package)
    if await session.get(Changeset, event.changeset_id) is None:
        session.add(
            Changeset(
                id=event.changeset_id,
                package_id=package.id,
                parent_version=event.parent_version,
                version=event.version,
                author=event.author,
                message=event.message,
                created_at=event.created_at,
                archive_size=event.archive_size,
                files_added=event.files_added,
                files_modified=event.files_modified,
                files_deleted=event.files_deleted,
            )
        )
    _audit(session, envelope, target=f"{event.package}@{event.version}", outcome="created")


async def _changeset_applied(session: AsyncSession, envelope: Envelope[ChangesetApplied]) -> None:
    event = envelope.payload
    node = await _node(session, envelope.env, event.node)
    package = await _package(session, event.package)
    await _set_node_version(session, node, package, event.version, envelope.occurred_at)
    if event.deployment_id is not None:
        deployment = await _deployment(
            session, str(event.deployment_id), event.package, event.version, envelope.env
        )
        await _node_result(
            session, deployment, node, state="succeeded", wave=None, error=None, duration_s=event.duration_s
        )


async def _changeset_failed(session: AsyncSession, envelope: Envelope[ChangesetFailed]) -> None:
    event = envelope.payload
    node = await _node(session, envelope.env, event.node)
    if event.running_version is not None:
        package = await _package(session, event.package)
        await _set_node_version(session, node, package, event.running_version, envelope.occurred_at)
    if event.deployment_id is not None:
        deployment = await _deployment(
            session, str(event.deployment_id), event.package, event.version, envelope.env
        )
        state = "rolled_back" if event.switched_back else "failed"
        await _node_result(
            session, deployment, node, state=state, wave=None, error=f"{event.stage}: {event.error}"
        )
    _audit(
        session,
        envelope,
        target=f"{event.node}:{event.package}@{event.version}",
        outcome="failed",
        stage=event.stage,
    )


async def _deployment_requested(session: AsyncSession, envelope: Envelope[DeploymentRequested]) -> None:
    event = envelope.payload
    deployment = await _deployment(
        session, str(event.deployment_id), event.package, event.version, event.to_env
    )
    deployment.from_env_id = (await _env(session, event.from_env)).id if event.from_env else None
    deployment.requested_by = event.requested_by
    deployment.strategy = event.strategy
    deployment.requested_at = envelope.occurred_at
    if event.reason:
        deployment.reason = event.reason
    _audit(session, envelope, target=f"{event.package}@{event.version}→{event.to_env}", outcome="requested")


async def _deployment_started(session: AsyncSession, envelope: Envelope[DeploymentStarted]) -> None:
    event = envelope.payload
    deployment = await _deployment(
        session, str(event.deployment_id), event.package, event.version, event.to_env
    )
    deployment.started_at = envelope.occurred_at
    deployment.failure_budget = event.failure_budget
    if deployment.state == "requested":
        deployment.state = "started"
    for wave, names in enumerate(event.waves):
        for name in names:
            node = await _node(session, event.to_env, name)
            if await session.get(DeploymentNode, (deployment.id, node.id)) is None:
                await _node_result(session, deployment, node, state="pending", wave=wave)


async def _deployment_node_succeeded(
    session: AsyncSession, envelope: Envelope[DeploymentNodeSucceeded]
) -> None:
    event = envelope.payload
    deployment = await _deployment(
        session, str(event.deployment_id), event.package, event.version, envelope.env
    )
    node = await _node(session, envelope.env, event.node)
    await _node_result(
        session, deployment, node, state="succeeded", wave=event.wave, error=None, duration_s=event.duration_s
    )


async def _deployment_node_failed(session: AsyncSession, envelope: Envelope[DeploymentNodeFailed]) -> None:
    event = envelope.payload
    deployment = await _deployment(
        session, str(event.deployment_id), event.package, event.version, envelope.env
    )
    node = await _node(session, envelope.env, event.node)
    await _node_result(
        session, deployment, node, state=event.outcome.value, wave=event.wave, error=event.error
    )


async def _deployment_finished(
    session: AsyncSession,
    envelope: Envelope[Any],
    event: DeploymentSucceeded | DeploymentFailed,
    *,
    state: str,
) -> None:
    deployment = await _deployment(
        session, str(event.deployment_id), event.package, event.version, event.to_env
    )
    deployment.state = state
    deployment.finished_at = envelope.occurred_at
    for name, outcome in event.nodes.items():
        node = await _node(session, event.to_env, name)
        await _node_result(session, deployment, node, state=outcome.value, wave=None)
    if state == "succeeded":
        env = await _env(session, event.to_env)
        package = await _package(session, event.package)
        await _set_env_version(
            session, env, package, event.version, deployment_id=deployment.id, at=envelope.occurred_at
        )
    _audit(session, envelope, target=f"{event.package}@{event.version}→{event.to_env}", outcome=state)


async def _deployment_succeeded(session: AsyncSession, envelope: Envelope[DeploymentSucceeded]) -> None:
    await _deployment_finished(session, envelope, envelope.payload, state="succeeded")


async def _deployment_failed(session: AsyncSession, envelope: Envelope[DeploymentFailed]) -> None:
    event = envelope.payload
    await _deployment_finished(session, envelope, event, state="failed")
    deployment = await session.get(Deployment, str(event.deployment_id))
    assert deployment is not None
    deployment.reason, deployment.rolled_back = event.reason, event.rolled_back


async def _drift(session: AsyncSession, envelope: Envelope[DriftDetected]) -> None:
    event = envelope.payload
    node = await _node(session, envelope.env, event.node)
    package = await _package(session, event.package)
    session.add(
        DriftReport(
            node_id=node.id,
            package_id=package.id,
            expected_version=event.expected_version,
            files={"added": event.added, "modified": event.modified, "deleted": event.deleted},
            detected_at=envelope.occurred_at,
            message_id=str(envelope.id),
        )
    )


async def _firewall(session: AsyncSession, envelope: Envelope[Any]) -> None:
    event: FirewallDisabled | FirewallEnabled | FirewallRejected = envelope.payload
    await _node(session, envelope.env, event.node)
    outcome = {
        "firewall.disabled": "disabled",
        "firewall.enabled": "enabled",
        "firewall.rejected": "rejected",
    }
    detail = event.model_dump(mode="json", exclude={"node"})
    _audit(session, envelope, target=event.node, outcome=outcome[envelope.type], **detail)


async def _dead_lettered(session: AsyncSession, envelope: Envelope[MessageDeadLettered]) -> None:
    event = envelope.payload
    _audit(session, envelope, target=event.queue, outcome="dead_lettered", **event.model_dump(mode="json"))


async def _deployment_approved(session: AsyncSession, envelope: Envelope[DeploymentApproved]) -> None:
    event = envelope.payload
    await _deployment(session, str(event.deployment_id), event.package, event.version, event.to_env)
    _audit(
        session,
        envelope,
        target=f"{event.package}@{event.version}",
        outcome="approved",
        deployment_id=str(event.deployment_id),
        requested_by=event.requested_by,
        approved_by=event.approved_by,
    )


async def _version_blocked(session: AsyncSession, envelope: Envelope[VersionBlocked]) -> None:
    event = envelope.payload
    await _package(session, event.package)
    _audit(
        session, envelope, target=f"{event.package}@{event.version}", outcome="blocked", reason=event.reason
    )


async def _version_unblocked(session: AsyncSession, envelope: Envelope[VersionUnblocked]) -> None:
    event = envelope.payload
    await _package(session, event.package)
    _audit(
        session, envelope, target=f"{event.package}@{event.version}", outcome="unblocked", reason=event.reason
    )


async def _host_key_changed(session: AsyncSession, envelope: Envelope[NodeHostKeyChanged]) -> None:
    event = envelope.payload
    await _node(session, envelope.env, event.node)
    _audit(
        session,
        envelope,
        target=event.node,
        outcome="refused",
        expected=event.expected_fingerprint,
        presented=event.presented_fingerprint,
    )


async def _ctl_user_provisioned(session: AsyncSession, envelope: Envelope[NodeCtlUserProvisioned]) -> None:
    event = envelope.payload
    await _node(session, envelope.env, event.node)
    if event.error is not None:
        outcome = "failed"
    elif event.self_test_passed is False:
        outcome = "self_test_failed"
    else:
        outcome = "provisioned" if event.changed else "unchanged"
    _audit(
        session,
        envelope,
        target=f"{event.account}@{event.node}",
        outcome=outcome,
        units=event.units,
        changed=event.changed,
        error=event.error,
        self_test_failures=event.self_test_failures,
    )


async def _ctl_user_removed(session: AsyncSession, envelope: Envelope[NodeCtlUserRemoved]) -> None:
    event = envelope.payload
    await _node(session, envelope.env, event.node)
    outcome = "failed" if event.error is not None else ("removed" if event.changed else "unchanged")
    _audit(
        session,
        envelope,
        target=f"{event.account}@{event.node}",
        outcome=outcome,
        changed=event.changed,
        error=event.error,
    )


RECORDERS: dict[type[Payload], Recorder] = {
    NodeHeartbeat: _heartbeat,
    NodeHostKeyChanged: _host_key_changed,
    NodeCtlUserProvisioned: _ctl_user_provisioned,
    NodeCtlUserRemoved: _ctl_user_removed,
    ChangesetCreated: _changeset_created,
    ChangesetApplied: _changeset_applied,
    ChangesetFailed: _changeset_failed,
    DeploymentRequested: _deployment_requested,
    DeploymentStarted: _deployment_started,
    DeploymentNodeSucceeded: _deployment_node_succeeded,
    DeploymentNodeFailed: _deployment_node_failed,
    DeploymentSucceeded: _deployment_succeeded,
    DeploymentFailed: _deployment_failed,
    DeploymentApproved: _deployment_approved,
    VersionBlocked: _version_blocked,
    VersionUnblocked: _version_unblocked,
    DriftDetected: _drift,
    FirewallDisabled: _firewall,
    FirewallEnabled: _firewall,
    FirewallRejected: _firewall,
    MessageDeadLettered: _dead_lettered,
}
