"""Alerts: conditions someone must see to, open until acknowledged or resolved.

An event of a type in :data:`ALERT_KINDS` opens an alert (or, when one with the same key is still
open, counts towards it); the kind's resolving event with the same key closes it and sends a
resolution to everyone who heard of it. The key is the kind, the environment and the facts that
name the condition (a package, a node...), so a failed deployment of ``web`` in prod is resolved by
the next successful deployment of ``web`` in prod.

A rule with ``escalate_after_s`` and ``escalate_to`` makes the alerts it routes escalate: if nobody
acknowledged the alert by then, ``escalate_to`` gets it too, once. Acknowledging stops that;
an acknowledged alert is still resolved by its resolving event.

=========================  ===========================  ====================  =====================
opened by                  when                         key                   resolved by
=========================  ===========================  ====================  =====================
deployment.failed          always                       env, package          deployment.succeeded
changeset.failed           always                       env, node, package    changeset.applied
firewall.disabled          severity critical (prod)     env, node             firewall.enabled
node.host_key_changed      always                       env, node             (acknowledge only)
rabbitmq.alarm             always                       env, node, check,     rabbitmq.recovered
                                                        subject
=========================  ===========================  ====================  =====================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from conveyor_notifier.model import EventFacts, Severity
from conveyor_notifier.models import Alert, AlertState, Notification, NotificationState
from conveyor_notifier.rules import Route

__all__ = [
    "ALERT_KINDS",
    "AlertKind",
    "AlertNotFound",
    "Signal",
    "acknowledge",
    "escalate_due",
    "kinds_table",
    "next_escalation",
    "on_signal",
    "signal_of",
]

_MAX_EVENTS = 100


@dataclass(frozen=True)
class AlertKind:
    name: str
    opened_by: str
    resolved_by: str | None
    key: tuple[str, ...]
    """Payload fields (besides the environment) that name the condition."""
    when: Callable[[EventFacts], bool] = lambda facts: True


ALERT_KINDS: tuple[AlertKind, ...] = (
    AlertKind("deployment", "deployment.failed", "deployment.succeeded", ("package",)),
    AlertKind("changeset", "changeset.failed", "changeset.applied", ("node", "package")),
    AlertKind(
        "firewall",
        "firewall.disabled",
        "firewall.enabled",
        ("node",),
        when=lambda facts: facts.severity is Severity.CRITICAL,
    ),
    AlertKind("host-key", "node.host_key_changed", None, ("node",)),
    AlertKind("rabbitmq", "rabbitmq.alarm", "rabbitmq.recovered", ("node", "check", "subject")),
)


@dataclass(frozen=True)
class Signal:
    """What an event does to an alert: opens (or re-fires) the one of ``key``, or resolves it."""

    action: Literal["open", "resolve"]
    key: str
    kind: AlertKind


def _key(kind: AlertKind, facts: EventFacts) -> str:
    parts = [kind.name, facts.env]
    for name in kind.key:
        value = facts.payload.get(name)
        parts.append(f"{name}={value if value is not None else '-'}")
    return "|".join(parts)


def signal_of(facts: EventFacts) -> Signal | None:
    for kind in ALERT_KINDS:
        if facts.type == kind.opened_by and kind.when(facts):
            return Signal("open", _key(kind, facts), kind)
        if facts.type == kind.resolved_by:
            return Signal("resolve", _key(kind, facts), kind)
    return None


def _summary(facts: EventFacts) -> str:
    parts = [facts.type]
    if facts.package:
        parts.append(f"{facts.package} {facts.version or ''}".strip())
    if facts.node:
        parts.append(f"on {facts.node}")
    parts.append(f"in {facts.env}")
    return " ".join(parts)


Transition = Literal["opened", "refired", "resolved", "none"]


async def on_signal(
    session: AsyncSession, signal: Signal, facts: EventFacts, routes: Sequence[Route], now: datetime
) -> Transition:
    """Open, re-fire or resolve the alert ``signal`` names; what happened to it."""
    current = await session.scalar(
        select(Alert)
        .where(Alert.key == signal.key, Alert.state != AlertState.RESOLVED)
        .order_by(Alert.id.desc())
        .limit(1)
    )
    if signal.action == "resolve":
        if current is None:
            return "none"
        current.state, current.resolved_at, current.resolved_by = AlertState.RESOLVED, now, facts.message_id
        current.escalation_due_at = None
        _resolution(session, current, facts, now)
        return "resolved"
    if current is not None:
        current.count += 1
        current.last_seen_at = now
        if len(current.events) < _MAX_EVENTS:
            current.events = [*current.events, facts.message_id]
        current.receivers = _union(current.receivers, (r for route in routes for r in route.receivers))
        return "refired"
    escalating = [r for r in routes if r.escalate_after_s is not None]
    after = min((r.escalate_after_s or 0.0 for r in escalating), default=None)
    session.add(
        Alert(
            key=signal.key,
            state=AlertState.OPEN,
            env=facts.env,
            type=facts.type,
            severity=facts.severity.value,
            summary=_summary(facts),
            opened_at=now,
            last_seen_at=now,
            count=1,
            events=[facts.message_id],
            receivers=_union([], (r for route in routes for r in route.receivers)),
            escalate_to=_union([], (r for route in escalating for r in route.escalate_to)),
            escalation_due_at=None if after is None else now + timedelta(seconds=after),
        )
    )
    return "opened"


def _union(first: Sequence[str], more: Iterable[str]) -> list[str]:
    names = list(first)
    for name in more:
        if name not in names:
            names.append(name)
    return names


def _resolution(session: AsyncSession, alert: Alert, facts: EventFacts, now: datetime) -> None:
    receivers = list(alert.receivers)
    if alert.escalated_at is not None:
        receivers = _union(receivers, alert.escalate_to)
    note = (
        f"Alert #{alert.id} ({alert.summary}) is resolved: {_summary(facts)} at "
        f"{facts.occurred_at.strftime('%Y-%m-%d %H:%M:%S UTC')}."
    )
    for receiver in receivers:
        session.add(
            Notification(
                group_key=f"alert:{alert.id}:resolution",
                receiver=receiver,
                rule=None,
                kind="resolution",
                state=NotificationState.WAITING,
                created_at=now,
                due_at=now,
                events=[alert.events[0], facts.message_id],
                attempts=0,
                note=note,
                alert_id=alert.id,
            )
        )


async def escalate_due(session: AsyncSession, now: datetime) -> int:
    """Escalate every open alert whose time is up: a notification to each of its ``escalate_to``."""
    due = await session.scalars(
        select(Alert).where(
            Alert.state == AlertState.OPEN,
            Alert.escalation_due_at.is_not(None),
            Alert.escalation_due_at <= now,
        )
    )
    count = 0
    for alert in due:
        waited = (now - alert.opened_at).total_seconds()
        note = (
            f"Alert #{alert.id} ({alert.summary}) has not been acknowledged for "
            f"{_minutes(waited)}; it went to {', '.join(alert.receivers) or 'nobody'}. "
            f"Acknowledge it: conveyor alerts ack {alert.id}"
        )
        for receiver in alert.escalate_to:
            session.add(
                Notification(
                    group_key=f"alert:{alert.id}:escalation",
                    receiver=receiver,
                    rule=None,
                    kind="escalation",
                    state=NotificationState.WAITING,
                    created_at=now,
                    due_at=now,
                    events=list(alert.events[:20]),
                    attempts=0,
                    note=note,
                    alert_id=alert.id,
                )
            )
        alert.escalated_at, alert.escalation_due_at = now, None
        count += 1
    return count


async def next_escalation(session: AsyncSession) -> datetime | None:
    return await session.scalar(
        select(Alert.escalation_due_at)
        .where(Alert.state == AlertState.OPEN, Alert.escalation_due_at.is_not(None))
        .order_by(Alert.escalation_due_at)
        .limit(1)
    )


class AlertNotFound(LookupError):
    pass


async def acknowledge(
    session: AsyncSession, alert_id: int, *, by: str, comment: str | None, now: datetime
) -> Alert:
    """Acknowledge an open alert (no escalation any more); an acknowledged or resolved one is left
    as it is. ``AlertNotFound`` for an unknown id."""
    alert = await session.get(Alert, alert_id)
    if alert is None:
        raise AlertNotFound(f"no alert #{alert_id}")
    if alert.state == AlertState.OPEN:
        alert.state, alert.acknowledged_by, alert.acknowledged_at = AlertState.ACKNOWLEDGED, by, now
        alert.ack_comment, alert.escalation_due_at = comment, None
    return alert


def _minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def kinds_table() -> list[dict[str, object]]:
    """The alert kinds, for documentation and the API."""
    return [
        {"kind": k.name, "opened_by": k.opened_by, "resolved_by": k.resolved_by, "key": ["env", *k.key]}
        for k in ALERT_KINDS
    ]
