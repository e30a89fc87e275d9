"""Keeping the notifier's database small: what ended longer ago than ``RETENTION_DAYS`` is forgotten."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Delete, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conveyor_notifier.models import (
    Alert,
    AlertState,
    Delivery,
    InboxMessage,
    Notification,
    NotificationState,
    Silence,
)

__all__ = ["prune"]


async def _delete(session: AsyncSession, statement: Delete) -> int:
    result = cast(CursorResult[Any], await session.execute(statement))
    return result.rowcount or 0


async def prune(sessions: async_sessionmaker[AsyncSession], before: datetime) -> dict[str, int]:
    """Forget what ended before ``before``: deliveries, finished notifications, events no open alert
    points at, resolved alerts, ended silences. Rows removed, per table."""
    finished = (NotificationState.SENT, NotificationState.FAILED, NotificationState.SILENCED)
    async with sessions.begin() as session:
        kept = {
            message_id
            for events in await session.scalars(
                select(Alert.events).where(Alert.state != AlertState.RESOLVED)
            )
            for message_id in events
        }
        counts = {
            "deliveries": await _delete(session, delete(Delivery).where(Delivery.at < before)),
            "notifications": await _delete(
                session,
                delete(Notification).where(
                    Notification.state.in_(finished), Notification.finished_at < before
                ),
            ),
            "alerts": await _delete(
                session,
                delete(Alert).where(Alert.state == AlertState.RESOLVED, Alert.resolved_at < before),
            ),
            "silences": await _delete(session, delete(Silence).where(Silence.ends_at < before)),
        }
        old = select(InboxMessage.message_id).where(InboxMessage.received_at < before)
        stale = [m for m in await session.scalars(old) if m not in kept]
        counts["events"] = 0
        for start in range(0, len(stale), 500):
            chunk = stale[start : start + 500]
            counts["events"] += await _delete(
                session, delete(InboxMessage).where(InboxMessage.message_id.in_(chunk))
            )
        return counts
