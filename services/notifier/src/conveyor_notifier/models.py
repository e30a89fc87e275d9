"""The notifier's tables (SQLAlchemy 2, typed), the same on MySQL/MariaDB and SQLite.

``inbox``          every event received, once per message id (a redelivery finds its row and stops)
``notifications``  a message to one receiver: the events of one group, waiting until it is due, then
                   sent, failed (its fallback then has one of its own) or silenced
``deliveries``     every attempt to send a notification: when, to whom, what came of it (a silenced
                   notification has one too, saying which silence held it back)
``alerts``         a condition someone must see to (a failed deployment, a firewall open in prod...):
                   open until acknowledged or resolved, escalated when left unacknowledged
``silences``       matchers and a time span: notifications of matching events are recorded, not sent
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conveyor.db import NAMING, UTCDateTime, utcnow

__all__ = [
    "Alert",
    "AlertState",
    "Base",
    "Delivery",
    "InboxMessage",
    "Notification",
    "NotificationState",
    "Silence",
    "utcnow",
]

_ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class InboxMessage(Base):
    __tablename__ = "inbox"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    env: Mapped[str] = mapped_column(String(32))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    envelope: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(32))
    """routed, duplicate (the same fingerprint within the window), or ignored (no route)."""


class NotificationState:
    WAITING = "waiting"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SILENCED = "silenced"


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_state_due_at", "state", "due_at"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    group_key: Mapped[str] = mapped_column(String(400), index=True)
    receiver: Mapped[str] = mapped_column(String(100))
    rule: Mapped[str | None] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default=NotificationState.WAITING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Message ids of the events it tells of, in arrival order."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    subject: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    """For a fallback: why it is one."""
    last_error: Mapped[str | None] = mapped_column(Text)
    alert_id: Mapped[int | None] = mapped_column(_ID, index=True)
    """For an escalation or a resolution: the alert it is about."""
    silenced_by: Mapped[int | None] = mapped_column(_ID)
    """For a silenced notification: the silence that held it back."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group_key": self.group_key,
            "receiver": self.receiver,
            "rule": self.rule,
            "kind": self.kind,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "due_at": self.due_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "events": list(self.events),
            "attempts": self.attempts,
            "subject": self.subject,
            "note": self.note,
            "last_error": self.last_error,
            "alert_id": self.alert_id,
            "silenced_by": self.silenced_by,
        }


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    receiver: Mapped[str] = mapped_column(String(100))
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(20))
    """sent, failed (will be retried), gave_up, silenced."""
    detail: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "notification_id": self.notification_id,
            "at": self.at.isoformat(),
            "receiver": self.receiver,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "detail": self.detail,
            "subject": self.subject,
        }


class AlertState:
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_state_escalation_due_at", "state", "escalation_due_at"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400), index=True)
    """What the condition is about, e.g. ``deployment|prod|package=web``: one open alert per key."""
    state: Mapped[str] = mapped_column(String(20), default=AlertState.OPEN)
    env: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(100))
    """The type of the event that opened it."""
    severity: Mapped[str] = mapped_column(String(20))
    summary: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    count: Mapped[int] = mapped_column(Integer, default=1)
    """How many events reported the condition while it was open."""
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Message ids of the first events that reported it (at most 100)."""
    receivers: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Who heard of it: they hear of its resolution too."""
    escalate_to: Mapped[list[str]] = mapped_column(JSON, default=list)
    escalation_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ack_comment: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    """The message id of the event that resolved it."""

    def as_dict(self) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "key": self.key,
            "state": self.state,
            "env": self.env,
            "type": self.type,
            "severity": self.severity,
            "summary": self.summary,
            "opened_at": self.opened_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
            "count": self.count,
            "events": list(self.events),
            "receivers": list(self.receivers),
            "escalate_to": list(self.escalate_to),
            "escalation_due_at": when(self.escalation_due_at),
            "escalated_at": when(self.escalated_at),
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": when(self.acknowledged_at),
            "ack_comment": self.ack_comment,
            "resolved_at": when(self.resolved_at),
            "resolved_by": self.resolved_by,
        }


class Silence(Base):
    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    matchers: Mapped[dict[str, str]] = mapped_column(JSON)
    """fact → glob (type, env, package, node, severity, labels.<key>...): all must match."""
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    expired_by: Mapped[str | None] = mapped_column(String(100))
    """Who ended it early (``ends_at`` is then when)."""

    def state(self, now: datetime) -> str:
        if self.ends_at <= now:
            return "expired"
        return "active" if self.starts_at <= now else "pending"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": dict(self.matchers),
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "expired_by": self.expired_by,
            "state": self.state(now),
        }
