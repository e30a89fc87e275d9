"""Alerts and silences on the notifier's real schema (SQLite): which events open and resolve an alert,
escalation when it is due and not after an acknowledgement, what a silence matches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conveyor.contracts import Envelope
from conveyor.contracts.examples import EXAMPLES
from conveyor_notifier import alerts, silences
from conveyor_notifier.db import create_engine, migrate, session_factory
from conveyor_notifier.model import EventFacts, facts_of
from conveyor_notifier.models import Alert, Delivery, InboxMessage, Notification, Silence
from conveyor_notifier.retention import prune
from conveyor_notifier.rules import Route
from conveyor_notifier.service import fingerprint

T0 = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def facts(
    message_type: str, env: str = "prod", labels: dict[str, str] | None = None, **changes: Any
) -> EventFacts:
    payload = EXAMPLES[message_type].model_copy(update=changes)
    envelope = Envelope.wrap(payload, env=env, source="test", actor="ada")
    node = changes.get("node") or getattr(payload, "node", None)
    return facts_of(envelope, {node: labels} if labels and node else None)


def paged(after: float | None = 60.0) -> Route:
    return Route(
        rule="prod",
        receivers=("chat",),
        group_by=("correlation_id",),
        group_wait_s=0,
        group_interval_s=60,
        escalate_after_s=after,
        escalate_to=("pager",) if after else (),
    )


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'n.sqlite3'}")
    await migrate(engine)
    yield session_factory(engine)
    await engine.dispose()


def test_which_events_open_and_resolve_alerts() -> None:
    opened = alerts.signal_of(facts("deployment.failed"))
    assert opened is not None
    assert (opened.action, opened.key) == ("open", "deployment|prod|package=web")
    resolved = alerts.signal_of(facts("deployment.succeeded"))
    assert resolved is not None
    assert (resolved.action, resolved.key) == ("resolve", opened.key)
    failed = alerts.signal_of(facts("changeset.failed", node="prod-web-1"))
    assert failed is not None
    assert failed.key == "changeset|prod|node=prod-web-1|package=web"
    firewall = alerts.signal_of(facts("firewall.disabled", node="prod-db-1"))
    assert firewall is not None
    assert firewall.action == "open"
    assert alerts.signal_of(facts("firewall.disabled", env="qa", node="qa-db-1")) is None  # qa: no alert
    assert alerts.signal_of(facts("changeset.applied", env="qa", node="qa-web-1")) is not None
    assert alerts.signal_of(facts("deployment.node.succeeded")) is None


async def test_an_alert_opens_counts_repeats_and_resolves_to_everyone_who_heard(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    failure = facts("changeset.failed", node="prod-web-1")
    signal = alerts.signal_of(failure)
    assert signal is not None
    async with sessions.begin() as session:
        assert await alerts.on_signal(session, signal, failure, [paged()], T0) == "opened"
    again = facts("changeset.failed", node="prod-web-1")
    async with sessions.begin() as session:
        assert (
            await alerts.on_signal(session, signal, again, [paged()], T0 + timedelta(seconds=5)) == "refired"
        )
        assert await alerts.escalate_due(session, T0 + timedelta(seconds=59)) == 0
        assert await alerts.escalate_due(session, T0 + timedelta(seconds=60)) == 1
        assert await alerts.escalate_due(session, T0 + timedelta(seconds=120)) == 0  # once
    fixed = facts("changeset.applied", node="prod-web-1")
    resolve = alerts.signal_of(fixed)
    assert resolve is not None
    async with sessions.begin() as session:
        assert await alerts.on_signal(session, resolve, fixed, [], T0 + timedelta(seconds=200)) == "resolved"
        assert await alerts.on_signal(session, resolve, fixed, [], T0 + timedelta(seconds=201)) == "none"
    async with sessions() as session:
        [alert] = await session.scalars(select(Alert))
        assert (alert.state, alert.count, alert.resolved_by) == ("resolved", 2, fixed.message_id)
        assert alert.events == [failure.message_id, again.message_id]
        sent = [
            (n.kind, n.receiver)
            for n in await session.scalars(select(Notification).order_by(Notification.id))
        ]
    assert sent == [("escalation", "pager"), ("resolution", "chat"), ("resolution", "pager")]


async def test_an_acknowledged_alert_does_not_escalate(sessions: async_sessionmaker[AsyncSession]) -> None:
    failure = facts("deployment.failed")
    signal = alerts.signal_of(failure)
    assert signal is not None
    async with sessions.begin() as session:
        await alerts.on_signal(session, signal, failure, [paged(30)], T0)
    async with sessions.begin() as session:
        [alert] = await session.scalars(select(Alert))
        acked = await alerts.acknowledge(session, alert.id, by="grace", comment="on it", now=T0)
        assert (acked.state, acked.acknowledged_by, acked.escalation_due_at) == (
            "acknowledged",
            "grace",
            None,
        )
        assert await alerts.escalate_due(session, T0 + timedelta(hours=1)) == 0
        with pytest.raises(alerts.AlertNotFound):
            await alerts.acknowledge(session, 999, by="grace", comment=None, now=T0)
        assert await alerts.next_escalation(session) is None


async def test_a_rule_without_escalation_leaves_the_alert_open_without_a_deadline(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    failure = facts("node.host_key_changed")
    signal = alerts.signal_of(failure)
    assert signal is not None
    async with sessions.begin() as session:
        await alerts.on_signal(session, signal, failure, [paged(None)], T0)
        [alert] = await session.scalars(select(Alert))
        assert alert.escalation_due_at is None
        assert alert.escalate_to == []


def test_silence_matchers_are_facts_with_patterns() -> None:
    assert silences.check_matchers({"type": "drift.*", "labels.role": "db"}) == {
        "type": "drift.*",
        "labels.role": "db",
    }
    with pytest.raises(ValueError, match="'colour' is not a fact"):
        silences.check_matchers({"colour": "red"})
    with pytest.raises(ValueError, match="at least one matcher"):
        silences.check_matchers({})
    with pytest.raises(ValueError, match="env: an empty pattern"):
        silences.check_matchers({"env": " "})


def test_a_silence_matches_when_every_matcher_does() -> None:
    silence = Silence(matchers={"type": "drift.*", "env": "dev", "labels.role": "db"})
    assert silences.matches(
        silence, facts("drift.detected", env="dev", node="dev-db-1", labels={"role": "db"})
    )
    assert not silences.matches(
        silence, facts("drift.detected", env="qa", node="qa-db-1", labels={"role": "db"})
    )
    assert not silences.matches(
        silence, facts("drift.detected", env="dev", node="dev-web-1", labels={"role": "web"})
    )
    assert not silences.matches(silence, facts("deployment.failed", env="dev"))  # no node, no labels


async def test_silences_start_end_and_expire(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions.begin() as session:
        now = datetime.now(UTC)
        silence = await silences.create(
            session, {"env": "dev"}, duration=timedelta(hours=2), reason="upgrade", by="ada", now=now
        )
        later = await silences.create(
            session,
            {"env": "qa"},
            duration=timedelta(hours=1),
            reason="later",
            by="ada",
            now=now,
            starts_at=now + timedelta(hours=1),
        )
        with pytest.raises(ValueError, match="between 1 s and 30 days"):
            await silences.create(
                session, {"env": "qa"}, duration=timedelta(days=31), reason="x", by="a", now=now
            )
    async with sessions.begin() as session:
        assert [s.id for s in await silences.active(session, now)] == [silence.id]
        assert later.state(now) == "pending"
        ended = await silences.expire(session, silence.id, by="grace", now=now + timedelta(minutes=5))
        assert (ended.state(now + timedelta(minutes=5)), ended.expired_by) == ("expired", "grace")
        assert await silences.active(session, now + timedelta(minutes=6)) == []
        with pytest.raises(silences.SilenceNotFound):
            await silences.expire(session, 999, by="grace", now=now)
        listed = await silences.listing(session, now + timedelta(minutes=6), include_expired=False)
        assert [s.id for s in listed] == [later.id]


async def test_pruning_forgets_what_ended_but_keeps_open_alerts_and_their_events(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    old = T0 - timedelta(days=40)
    failure, noise = facts("deployment.failed"), facts("changeset.created")
    signal = alerts.signal_of(failure)
    assert signal is not None
    async with sessions.begin() as session:
        for event in (failure, noise):
            session.add(
                InboxMessage(
                    message_id=event.message_id,
                    type=event.type,
                    env=event.env,
                    fingerprint="f" * 64,
                    received_at=old,
                    envelope="{}",
                    outcome="routed",
                )
            )
        await alerts.on_signal(session, signal, failure, [paged(None)], old)
        sent = Notification(
            group_key="g", receiver="chat", kind="new", state="sent", due_at=old, finished_at=old, events=[]
        )
        session.add(sent)
        await session.flush()
        session.add(
            Delivery(notification_id=sent.id, at=old, receiver="chat", attempt=1, outcome="sent", detail="")
        )
        session.add(Silence(matchers={"env": "dev"}, reason="r", created_by="a", starts_at=old, ends_at=old))
    removed = await prune(sessions, T0 - timedelta(days=30))
    assert removed == {"deliveries": 1, "notifications": 1, "alerts": 0, "silences": 1, "events": 1}
    async with sessions() as session:
        assert list(await session.scalars(select(InboxMessage.message_id))) == [failure.message_id]
        assert len(list(await session.scalars(select(Alert)))) == 1


def test_the_same_report_has_the_same_fingerprint_and_two_deployments_do_not() -> None:
    first = facts("drift.detected", node="prod-web-1")
    again = facts("drift.detected", node="prod-web-1")  # another message id, correlation, time
    assert first.message_id != again.message_id
    assert fingerprint(first) == fingerprint(again)
    assert fingerprint(first) != fingerprint(facts("drift.detected", node="prod-web-2"))
    one = facts("deployment.succeeded", deployment_id=uuid4(), duration_s=3.0)
    other = facts("deployment.succeeded", deployment_id=uuid4(), duration_s=3.0)
    assert fingerprint(one) != fingerprint(other)
    assert fingerprint(one) == fingerprint(replace(one, payload={**one.payload, "duration_s": 9.0}))
