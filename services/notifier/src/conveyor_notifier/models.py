"""The notifier's tables (SQLAlchemy 2, typed), the same on MySQL/MariaDB and SQLite.

``inbox``          every event received, once per message id (a redelivery finds its row and stops)
``notifications``  a message to one receiver: the events of one group, waiting until it is due, then
                   sent, failed (its fallback then has one of its own) or silenced
``deliveries``     every attempt to send a notification: when, to whom, what came of it
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from conveyor.db import NAMING, UTCDateTime, utcnow

__all__ = ["Base", "Delivery", "InboxMessage", "Notification", "NotificationState", "utcnow"]

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
        }


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    receiver: Mapped[str] = mapped_column(String(100))
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(20))
    """sent, failed (will be retried), gave_up."""
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
