"""One realistic example of every message, for the docs and the contract tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from conveyor.contracts import catalogue as c
from conveyor.contracts.common import CommandAuthorization
from conveyor.contracts.envelope import Payload

__all__ = ["EXAMPLES"]

_AT = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
_DEPLOYMENT = UUID("5f0c3a1e-8d7b-4c2a-9e61-0b9d2f4a7c10")
_REQUEST = UUID("a1b2c3d4-0000-4000-8000-00000000f1f1")
_CHANGESET = "3b5d5c3712955042212316173ccf37be800e5e1e8bd0c9f1d7b1e5c6e7a8f901"
_AUTH = CommandAuthorization(
    role="deployer",
    expires_at=_AT + timedelta(minutes=5),
    nonce="9f1c2e7a4b6d8f00a1b2c3d4",
    key_id="deploy-2026-11",
    signature="MEUCIQDexamplesignaturebase64==",
)

EXAMPLES: dict[str, Payload] = {
    example.message_type: example
    for example in (
        c.NodeHeartbeat(
            node="qa-web-1",
            agent="changelog-listener",
            agent_version="0.1.0",
            started_at=_AT - timedelta(hours=3),
            packages={"web": "v42"},
        ),
        c.NodeHostKeyChanged(
            node="qa-web-1",
            address="10.0.2.11",
            expected_fingerprint="SHA256:3b9Yl1c0bXq8Qw0V1x2y3z4A5B6C7D8E9F0G1H2I3J4",
            presented_fingerprint="SHA256:Zq1x2c3v4b5n6m7L8K9J0H1G2F3D4S5A6P7O8I9U0Y1",
        ),
        c.NodeCtlUserProvisioned(
            node="qa-web-1",
            account="conveyor-ctl",
            units=["web.service", "web-worker.service"],
            changed=["account", "home", "sudo rules"],
            self_test_passed=True,
        ),
        c.NodeCtlUserRemoved(
            node="qa-web-1", account="conveyor-ctl", changed=["sudo rules", "account", "home"]
        ),
        c.ChangesetCreated(
            changeset_id=_CHANGESET,
            package="web",
            parent_version="v41",
            version="v42",
            author="ada",
            message="Raise the upload limit",
            created_at=_AT,
            archive_size=18_432,
            files_added=1,
            files_modified=3,
            files_deleted=0,
        ),
        c.ChangesetApply(
            deployment_id=_DEPLOYMENT,
            node="qa-web-1",
            changeset_id=_CHANGESET,
            package="web",
            parent_version="v41",
            version="v42",
            archive_url=f"http://deploy.example:8101/artifacts/{_CHANGESET}",
            authorization=_AUTH,
        ),
        c.ChangesetApplied(
            deployment_id=_DEPLOYMENT,
            node="qa-web-1",
            changeset_id=_CHANGESET,
            package="web",
            version="v42",
            previous_version="v41",
            duration_s=4.2,
            steps={
                "download": 0.3,
                "verify": 0.1,
                "stage": 0.4,
                "switch": 0.01,
                "restart": 1.9,
                "health_check": 1.5,
            },
        ),
        c.ChangesetFailed(
            deployment_id=_DEPLOYMENT,
            node="qa-web-2",
            changeset_id=_CHANGESET,
            package="web",
            version="v42",
            stage=c.ApplyStage.HEALTH_CHECK,
            error="GET http://127.0.0.1:8080/health returned 503 three times",
            switched_back=True,
            running_version="v41",
        ),
        c.PackageChanged(
            node="dev-web-1",
            package="web",
            version="v41",
            added=["static/new.css"],
            modified=["app.py"],
            deleted=[],
            total=2,
        ),
        c.DeploymentRequested(
            deployment_id=_DEPLOYMENT,
            package="web",
            version="v42",
            from_env="dev",
            to_env="qa",
            requested_by="ada",
            reason="Release 2026.11.26",
        ),
        c.DeploymentApproved(
            deployment_id=_DEPLOYMENT,
            package="web",
            version="v42",
            to_env="prod",
            requested_by="ada",
            approved_by="grace",
        ),
        c.VersionBlocked(package="web", version="v42", blocked_by="ada", reason="rolled back in qa: 503s"),
        c.VersionUnblocked(package="web", version="v42", unblocked_by="grace", reason="fixed in config"),
        c.DeploymentStarted(
            deployment_id=_DEPLOYMENT,
            package="web",
            version="v42",
            to_env="qa",
            waves=[["qa-web-1"], ["qa-web-2", "qa-web-3"]],
            failure_budget=1,
        ),
        c.DeploymentNodeSucceeded(
            deployment_id=_DEPLOYMENT, package="web", version="v42", node="qa-web-1", wave=0, duration_s=4.2
        ),
        c.DeploymentNodeFailed(
            deployment_id=_DEPLOYMENT,
            package="web",
            version="v42",
            node="qa-web-2",
            wave=1,
            outcome=c.NodeOutcome.ROLLED_BACK,
            error="health check failed; switched back to v41",
        ),
        c.DeploymentSucceeded(
            deployment_id=_DEPLOYMENT,
            package="web",
            version="v42",
            to_env="qa",
            nodes={"qa-web-1": c.NodeOutcome.SUCCEEDED, "qa-web-2": c.NodeOutcome.SUCCEEDED},
            duration_s=31.5,
        ),
        c.DeploymentFailed(
            deployment_id=_DEPLOYMENT,
            package="web",
            version="v42",
            to_env="qa",
            reason="2 of 3 nodes failed; the failure budget is 1",
            nodes={
                "qa-web-1": c.NodeOutcome.ROLLED_BACK,
                "qa-web-2": c.NodeOutcome.FAILED,
                "qa-web-3": c.NodeOutcome.UNREACHABLE,
            },
            rolled_back=True,
            duration_s=48.0,
        ),
        c.DriftDetected(
            node="qa-web-1",
            package="web",
            expected_version="v42",
            modified=["conf/app.ini"],
            deleted=["static/logo.svg"],
        ),
        c.FirewallDisable(
            request_id=_REQUEST,
            node="qa-web-1",
            lease_s=1800,
            reason="INC-4711: trace dropped packets",
            authorization=_AUTH,
        ),
        c.FirewallEnable(
            request_id=_REQUEST, node="qa-web-1", reason="INC-4711 resolved", authorization=_AUTH
        ),
        c.FirewallDisabled(
            request_id=_REQUEST,
            node="qa-web-1",
            backend="nftables",
            lease_expires_at=_AT + timedelta(minutes=30),
            reason="INC-4711: trace dropped packets",
        ),
        c.FirewallEnabled(request_id=None, node="qa-web-1", backend="nftables", trigger="lease_expired"),
        c.FirewallRejected(
            request_id=_REQUEST,
            node="qa-web-1",
            command="disable",
            reason="signature expired at 2026-11-26T09:35:00Z",
        ),
        c.RabbitmqAlarm(
            check=c.RabbitCheck.NODE_DOWN,
            node="rabbit@qa-mq-2",
            detail="rabbit@qa-mq-2 is not running (the management API of rabbit@qa-mq-1 says so)",
        ),
        c.RabbitmqRecovered(
            check=c.RabbitCheck.NODE_DOWN,
            node="rabbit@qa-mq-2",
            detail="rabbit@qa-mq-2 runs again",
            duration_s=74.0,
        ),
        c.MessageDeadLettered(
            message_id="0d3e4f5a-6b7c-4d8e-9f00-112233445566",
            original_type="changeset.created",
            queue="version-db.events",
            dead_letter_queue="version-db.events.dead",
            reason=c.DeadLetterReason.RETRIES_EXHAUSTED,
            error="OperationalError: (2003) Can't connect to MySQL server",
            attempts=4,
            original_routing_key="changeset.created",
            dead_lettered_at=_AT,
        ),
    )
}
