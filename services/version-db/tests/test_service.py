"""Recording events: rows once per message id, whatever the order, on SQLite and MariaDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conveyor.contracts import (
    DeploymentNodeSucceeded,
    DeploymentRequested,
    DeploymentStarted,
    DeploymentSucceeded,
    Envelope,
    NodeHeartbeat,
    NodeOutcome,
)
from conveyor.contracts.examples import EXAMPLES
from conveyor_version_db.db import session_factory
from conveyor_version_db.models import (
    AuditEntry,
    Base,
    Deployment,
    DeploymentNode,
    Environment,
    EnvVersion,
    InboxMessage,
    Node,
    NodeVersion,
)
from conveyor_version_db.service import ensure_environments, record


async def apply(engine: AsyncEngine, *envelopes: Envelope[Any]) -> list[bool]:
    sessions = session_factory(engine)
    results = []
    for envelope in envelopes:
        async with sessions() as session, session.begin():
            results.append(await record(session, envelope))
    return results


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with session_factory(engine)() as session:
        return {
            table.name: (await session.execute(select(func.count()).select_from(table))).scalar_one()
            for table in Base.metadata.sorted_tables
        }


async def test_every_catalogue_event_is_recorded_once(engine: AsyncEngine) -> None:
    events = [
        Envelope.wrap(p, env="qa", source="test", actor="ada") for p in EXAMPLES.values() if p.kind == "event"
    ]
    assert all(await apply(engine, *events))
    first = await counts(engine)
    assert first["inbox"] == len(events)
    assert first["changesets"] == 1
    assert first["drift_reports"] == 1
    assert first["deployments"] == 1
    assert await apply(engine, *events) == [False] * len(events)  # redelivered: nothing changes
    assert await counts(engine) == first


async def test_environments_follow_the_configured_order(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await ensure_environments(session, ["dev", "qa", "prod"])
    async with sessions() as session, session.begin():
        await ensure_environments(session, ["dev", "staging", "qa", "prod"])
    async with sessions() as session:
        rows = (await session.scalars(select(Environment).order_by(Environment.position))).all()
    assert [e.name for e in rows] == ["dev", "staging", "qa", "prod"]


async def test_results_arriving_before_their_deployment_end_the_same(engine: AsyncEngine) -> None:
    deployment = uuid4()
    requested = Envelope.wrap(
        DeploymentRequested(
            deployment_id=deployment,
            package="web",
            version="v2",
            from_env="dev",
            to_env="qa",
            requested_by="ada",
        ),
        env="qa",
        source="deployer",
        actor="ada",
    )
    started = requested.follow_up(
        DeploymentStarted(
            deployment_id=deployment,
            package="web",
            version="v2",
            to_env="qa",
            waves=[["qa-1"], ["qa-2"]],
            failure_budget=0,
        ),
        source="deployer",
    )
    node_done = [
        started.follow_up(
            DeploymentNodeSucceeded(
                deployment_id=deployment, package="web", version="v2", node=name, wave=wave, duration_s=1.5
            ),
            source="deployer",
        )
        for wave, name in enumerate(["qa-1", "qa-2"])
    ]
    finished = started.follow_up(
        DeploymentSucceeded(
            deployment_id=deployment,
            package="web",
            version="v2",
            to_env="qa",
            nodes={"qa-1": NodeOutcome.SUCCEEDED, "qa-2": NodeOutcome.SUCCEEDED},
            duration_s=3.0,
        ),
        source="deployer",
    )
    # Everything in reverse: the end first, the request last.
    await apply(engine, finished, *reversed(node_done), started, requested)
    async with session_factory(engine)() as session:
        row = await session.get(Deployment, str(deployment))
        assert row is not None
        assert (row.state, row.requested_by, row.version) == ("succeeded", "ada", "v2")
        assert row.requested_at == requested.occurred_at
        assert row.finished_at == finished.occurred_at
        results = (await session.scalars(select(DeploymentNode))).all()
        assert sorted((r.state, r.wave) for r in results) == [("succeeded", 0), ("succeeded", 1)]
        [current] = (await session.scalars(select(EnvVersion))).all()
        assert (current.version, current.deployment_id) == ("v2", str(deployment))
        audited = (await session.scalars(select(AuditEntry.outcome))).all()
        assert sorted(audited) == ["requested", "succeeded"]


async def test_a_late_old_heartbeat_does_not_roll_a_node_back(engine: AsyncEngine) -> None:
    new = Envelope.wrap(
        NodeHeartbeat(
            node="qa-1",
            agent="changelog-listener",
            agent_version="2",
            started_at=datetime(2026, 11, 26, 6, 0, tzinfo=UTC),
            packages={"web": "v3"},
        ),
        env="qa",
        source="listener",
    )
    old = new.model_copy(
        update={
            "id": uuid4(),
            "occurred_at": new.occurred_at - timedelta(minutes=5),
            "payload": new.payload.model_copy(update={"agent_version": "1", "packages": {"web": "v2"}}),
        }
    )
    await apply(engine, new, old)
    async with session_factory(engine)() as session:
        node = await session.scalar(select(Node))
        assert node is not None
        assert node.agent_versions == {"changelog-listener": "2"}
        assert node.last_heartbeat_at == new.occurred_at
        [version] = (await session.scalars(select(NodeVersion))).all()
        assert version.version == "v3"
        assert (await session.scalar(select(func.count()).select_from(InboxMessage))) == 2
