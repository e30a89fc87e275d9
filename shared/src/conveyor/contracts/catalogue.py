"""The message catalogue: every event and command Conveyor puts on the bus.

``docs/messages.md`` and ``docs/asyncapi.yaml`` are generated from this module
(``conveyor contracts docs``); change the models, then regenerate.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, StringConstraints

from conveyor.contracts.common import (
    CommandAuthorization,
    FilePath,
    PackageName,
    Sha256,
    VersionId,
)
from conveyor.contracts.envelope import EnvName, MessageKind, NodeName, Payload
from conveyor.contracts.registry import Registry

__all__ = [
    "CATALOGUE",
    "ChangesetApplied",
    "ChangesetApply",
    "ChangesetCreated",
    "ChangesetFailed",
    "DeploymentApproved",
    "DeploymentFailed",
    "DeploymentNodeFailed",
    "DeploymentNodeSucceeded",
    "DeploymentRequested",
    "DeploymentStarted",
    "DeploymentSucceeded",
    "DriftDetected",
    "FirewallDisable",
    "FirewallDisabled",
    "FirewallEnable",
    "FirewallEnabled",
    "FirewallRejected",
    "MessageDeadLettered",
    "NodeCtlUserProvisioned",
    "NodeCtlUserRemoved",
    "NodeHeartbeat",
    "NodeHostKeyChanged",
    "NodeOutcome",
    "PackageChanged",
    "RabbitCheck",
    "RabbitmqAlarm",
    "RabbitmqRecovered",
    "VersionBlocked",
    "VersionUnblocked",
]

Text = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
Seconds = Annotated[float, Field(ge=0)]


# -- nodes ---------------------------------------------------------------------


class NodeHeartbeat(Payload, message_type="node.heartbeat"):
    """A node agent is alive; sent periodically by every agent on every node."""

    node: NodeName
    agent: Literal["changelog-listener", "firewall-agent"]
    agent_version: VersionId
    started_at: AwareDatetime
    packages: dict[PackageName, VersionId] = Field(
        default_factory=dict, description="package → version the node runs now"
    )


class NodeHostKeyChanged(Payload, message_type="node.host_key_changed"):
    """A node presented an SSH host key other than the one trusted: refused, nothing sent to it."""

    node: NodeName
    address: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    expected_fingerprint: Text
    presented_fingerprint: Text


AccountName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,30}$")]


class NodeCtlUserProvisioned(Payload, message_type="node.ctl_user_provisioned"):
    """The system-control user was provisioned on a node (``conveyor nodes provision-ctl-user``), or
    provisioning failed there; an audit record of who did it and what changed."""

    node: NodeName
    account: AccountName
    units: list[Annotated[str, StringConstraints(min_length=1, max_length=255)]] = Field(
        description="the units its rules allow to be controlled"
    )
    changed: list[Text] = Field(description="what was brought to the plan; empty: nothing differed")
    error: Text | None = Field(default=None, description="why provisioning did not finish")
    self_test_passed: bool | None = Field(description="None: the self-test did not run")
    self_test_failures: list[Text] = Field(default_factory=list, description="the checks that did not hold")


class NodeCtlUserRemoved(Payload, message_type="node.ctl_user_removed"):
    """The system-control user, its rules and keys were removed from a node (or removal failed)."""

    node: NodeName
    account: AccountName
    changed: list[Text] = Field(description="what was removed; empty: nothing was there")
    error: Text | None = Field(default=None, description="why removal did not finish")


# -- changesets ----------------------------------------------------------------


class ChangesetCreated(Payload, message_type="changeset.created"):
    """A changeset was cut from a package and stored in the artifact store."""

    changeset_id: Sha256 = Field(description="sha256 of the archive; archives are deterministic")
    package: PackageName
    parent_version: VersionId | None = Field(description="None for a package's first changeset")
    version: VersionId
    author: Text
    message: Text
    created_at: AwareDatetime
    archive_size: int = Field(ge=0)
    files_added: int = Field(ge=0)
    files_modified: int = Field(ge=0)
    files_deleted: int = Field(ge=0)


class ChangesetApply(
    Payload,
    message_type="changeset.apply",
    kind=MessageKind.COMMAND,
    target_field="node",
):
    """Apply a changeset on one node (signed by the deployment server)."""

    deployment_id: UUID
    node: NodeName
    changeset_id: Sha256
    package: PackageName
    parent_version: VersionId | None
    version: VersionId
    archive_url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    authorization: CommandAuthorization


class ChangesetApplied(Payload, message_type="changeset.applied"):
    """A node switched to a changeset's version and passed its health check."""

    deployment_id: UUID | None
    node: NodeName
    changeset_id: Sha256
    package: PackageName
    version: VersionId
    previous_version: VersionId | None
    duration_s: Seconds
    steps: dict[str, Seconds] = Field(
        default_factory=dict,
        description="seconds per step: download, verify, stage, switch, restart, health_check",
    )


class ApplyStage(StrEnum):
    CONFIGURATION = "configuration"
    DOWNLOAD = "download"
    VERIFY = "verify"
    PARENT_MISMATCH = "parent_mismatch"
    UNPACK = "unpack"
    SWITCH = "switch"
    RESTART = "restart"
    HEALTH_CHECK = "health_check"
    AUTHORIZATION = "authorization"


class ChangesetFailed(Payload, message_type="changeset.failed"):
    """A node could not apply a changeset; it says at which stage and what it runs now."""

    deployment_id: UUID | None
    node: NodeName
    changeset_id: Sha256
    package: PackageName
    version: VersionId
    stage: ApplyStage
    error: Text
    switched_back: bool = Field(description="the node switched back to running_version itself")
    running_version: VersionId | None


class PackageChanged(Payload, message_type="package.changed"):
    """A source package's files differ from its current version (a listener that only reports)."""

    node: NodeName
    package: PackageName
    version: VersionId | None = Field(description="the package's current version; None before the first")
    added: list[FilePath] = Field(default_factory=list, description="at most 1000 paths per list")
    modified: list[FilePath] = Field(default_factory=list)
    deleted: list[FilePath] = Field(default_factory=list)
    total: int = Field(ge=0, description="number of changed files, also those not listed")


# -- deployments ---------------------------------------------------------------


class DeploymentRequested(Payload, message_type="deployment.requested"):
    """Someone asked to promote a package version into an environment."""

    deployment_id: UUID
    package: PackageName
    version: VersionId
    from_env: EnvName | None
    to_env: EnvName
    requested_by: Text
    strategy: Literal["waves", "all-at-once"] = "waves"
    reason: Text | None = None


class DeploymentApproved(Payload, message_type="deployment.approved"):
    """A second person approved a deployment that needed it (into prod, by default)."""

    deployment_id: UUID
    package: PackageName
    version: VersionId
    to_env: EnvName
    requested_by: Text
    approved_by: Text


class DeploymentStarted(Payload, message_type="deployment.started"):
    """Gates passed; the deployer is sending the changeset to the nodes in waves."""

    deployment_id: UUID
    package: PackageName
    version: VersionId
    to_env: EnvName
    waves: list[list[NodeName]] = Field(min_length=1, description="canary wave first")
    failure_budget: int = Field(ge=0, description="failed nodes tolerated before rollback")


class DeploymentNodeSucceeded(Payload, message_type="deployment.node.succeeded"):
    """One node of a deployment applied the version and passed its health check."""

    deployment_id: UUID
    package: PackageName
    version: VersionId
    node: NodeName
    wave: int = Field(ge=0)
    duration_s: Seconds


class NodeOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    UNREACHABLE = "unreachable"


class DeploymentNodeFailed(Payload, message_type="deployment.node.failed"):
    """One node of a deployment failed, was rolled back or could not be reached, and why."""

    deployment_id: UUID
    package: PackageName
    version: VersionId
    node: NodeName
    wave: int = Field(ge=0)
    outcome: Literal[NodeOutcome.FAILED, NodeOutcome.ROLLED_BACK, NodeOutcome.UNREACHABLE]
    error: Text


class DeploymentSucceeded(Payload, message_type="deployment.succeeded"):
    """The deployment finished within its failure budget; every node is in an explicit final state."""

    deployment_id: UUID
    package: PackageName
    version: VersionId
    to_env: EnvName
    nodes: dict[NodeName, NodeOutcome]
    duration_s: Seconds


class DeploymentFailed(Payload, message_type="deployment.failed"):
    """The deployment stopped; every node is in an explicit final state."""

    deployment_id: UUID
    package: PackageName
    version: VersionId
    to_env: EnvName
    reason: Text
    nodes: dict[NodeName, NodeOutcome]
    rolled_back: bool
    duration_s: Seconds


class VersionBlocked(Payload, message_type="version.blocked"):
    """A package version was rolled back (or blocked by hand): no promotion applies it until unblocked."""

    package: PackageName
    version: VersionId
    blocked_by: Text
    reason: Text


class VersionUnblocked(Payload, message_type="version.unblocked"):
    """A blocked version may be promoted again."""

    package: PackageName
    version: VersionId
    unblocked_by: Text
    reason: Text | None = None


# -- drift ---------------------------------------------------------------------


class DriftDetected(Payload, message_type="drift.detected"):
    """A node's deployed files differ from the version recorded for it."""

    node: NodeName
    package: PackageName
    expected_version: VersionId
    added: list[FilePath] = Field(default_factory=list)
    modified: list[FilePath] = Field(default_factory=list)
    deleted: list[FilePath] = Field(default_factory=list)


# -- firewall ------------------------------------------------------------------

FirewallBackend = Literal["nftables", "iptables-nft", "iptables-legacy", "ufw", "firewalld"]


class FirewallDisable(
    Payload,
    message_type="firewall.disable",
    kind=MessageKind.COMMAND,
    target_field="node",
):
    """Disable one node's firewall for a lease (signed by the deployment server)."""

    request_id: UUID
    node: NodeName
    lease_s: int = Field(gt=0, le=7 * 24 * 3600)
    reason: Text
    policy_max_s: int | None = Field(
        default=None,
        gt=0,
        description="the policy's maximum: how long the firewall may stay open in all, counted from the "
        "first disable; a second disable extends the lease only up to it",
    )
    approved_by: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="the second person, where the policy asks for one"
    )
    authorization: CommandAuthorization


class FirewallEnable(
    Payload,
    message_type="firewall.enable",
    kind=MessageKind.COMMAND,
    target_field="node",
):
    """Restore one node's firewall now (signed by the deployment server)."""

    request_id: UUID
    node: NodeName
    reason: Text
    authorization: CommandAuthorization


class FirewallDisabled(Payload, message_type="firewall.disabled"):
    """An agent turned its node's firewall off (or found it off) for a signed command until the lease ends."""

    request_id: UUID
    node: NodeName
    backend: FirewallBackend
    lease_expires_at: AwareDatetime
    reason: Text
    already_disabled: bool = False
    capped: bool = Field(default=False, description="the lease was shortened to the maximum (policy or node)")
    audit_seq: int | None = Field(default=None, description="the node's audit log record of this")
    audit_hash: Sha256 | None = Field(default=None, description="that record's hash (for `audit verify`)")


class FirewallEnabled(Payload, message_type="firewall.enabled"):
    """An agent restored its node's firewall: on request, when the lease expired or when the agent started."""

    request_id: UUID | None = Field(description="None when the lease expired or the agent restored at start")
    node: NodeName
    backend: FirewallBackend
    trigger: Literal["requested", "lease_expired", "agent_start"]
    already_enabled: bool = Field(default=False, description="it was not disabled: nothing was done")
    audit_seq: int | None = Field(default=None, description="the node's audit log record of this")
    audit_hash: Sha256 | None = Field(default=None, description="that record's hash (for `audit verify`)")


class FirewallRejected(Payload, message_type="firewall.rejected"):
    """An agent refused a firewall command; nothing was changed."""

    request_id: UUID
    node: NodeName
    command: Literal["disable", "enable"]
    reason: Text
    failed: bool = Field(
        default=False,
        description="accepted, but the firewall could not be changed as asked; the reason says how it was "
        "left (put back as it was, or still open with the agent retrying the restore)",
    )
    audit_seq: int | None = Field(default=None, description="the node's audit log record of this")
    audit_hash: Sha256 | None = Field(default=None, description="that record's hash (for `audit verify`)")


# -- RabbitMQ clusters -----------------------------------------------------------

RabbitNodeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+$")]


class RabbitCheck(StrEnum):
    UNREACHABLE = "unreachable"  # no node's management API answered
    NODE_DOWN = "node_down"
    MEMORY_ALARM = "memory_alarm"
    DISK_ALARM = "disk_alarm"
    PARTITION = "partition"
    QUORUM_LOST = "quorum_lost"  # a quorum queue with half or fewer of its members online
    QUEUE_DEPTH = "queue_depth"
    UNACKED = "unacked"
    NO_CONSUMERS = "no_consumers"  # one of Conveyor's own queues has nobody consuming it


class RabbitmqAlarm(Payload, message_type="rabbitmq.alarm"):
    """The deployer's watch of an environment's cluster found something wrong; sent once when it starts."""

    check: RabbitCheck
    node: RabbitNodeName | None = Field(default=None, description="the broker node, when it is about one")
    subject: str | None = Field(default=None, max_length=500, description="the queue (vhost/name), if any")
    detail: Text
    value: float | None = None
    threshold: float | None = None


class RabbitmqRecovered(Payload, message_type="rabbitmq.recovered"):
    """What a rabbitmq.alarm reported is over."""

    check: RabbitCheck
    node: RabbitNodeName | None = None
    subject: str | None = Field(default=None, max_length=500)
    detail: Text
    duration_s: Seconds = Field(description="how long the alarm lasted")


# -- the bus itself ------------------------------------------------------------


class DeadLetterReason(StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    INVALID_PAYLOAD = "invalid_payload"
    RETRIES_EXHAUSTED = "retries_exhausted"


class MessageDeadLettered(Payload, message_type="message.dead_lettered"):
    """A consumer gave up on a message and parked it in its dead-letter queue."""

    message_id: str | None = Field(description="None when the message carried no usable id")
    original_type: str | None = Field(description="the message's type, when it could be read")
    queue: Annotated[str, StringConstraints(min_length=1)]
    dead_letter_queue: Annotated[str, StringConstraints(min_length=1)]
    reason: DeadLetterReason
    error: Text
    attempts: int = Field(ge=1)
    original_routing_key: str
    dead_lettered_at: AwareDatetime


CATALOGUE = Registry(
    [
        NodeHeartbeat,
        NodeHostKeyChanged,
        NodeCtlUserProvisioned,
        NodeCtlUserRemoved,
        ChangesetCreated,
        ChangesetApply,
        ChangesetApplied,
        ChangesetFailed,
        PackageChanged,
        DeploymentRequested,
        DeploymentApproved,
        DeploymentStarted,
        DeploymentNodeSucceeded,
        DeploymentNodeFailed,
        DeploymentSucceeded,
        DeploymentFailed,
        VersionBlocked,
        VersionUnblocked,
        DriftDetected,
        FirewallDisable,
        FirewallEnable,
        FirewallDisabled,
        FirewallEnabled,
        FirewallRejected,
        RabbitmqAlarm,
        RabbitmqRecovered,
        MessageDeadLettered,
    ]
)
