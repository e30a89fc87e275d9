"""Silences: for a while, notifications of matching events are recorded, not sent.

A silence has matchers (fact → fnmatch glob; every one must match: ``type=drift.*``, ``env=dev``,
``node=web-*``, ``labels.role=db`` ...), a reason, who made it, and a time span. It is checked when a
notification is due, so a silence added while a group is still waiting holds that group back too:
events of a message that a silence matches are left out of it, and a message left with none is
recorded as silenced (the delivery log says which silence) and not sent. An escalation or a
resolution is held back when the alert's first event is silenced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from fnmatch import fnmatchcase

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from conveyor_notifier.model import EventFacts
from conveyor_notifier.models import Delivery, Notification, NotificationState, Silence, utcnow
from conveyor_notifier.rules import fact_name

__all__ = [
    "SilenceNotFound",
    "active",
    "check_matchers",
    "create",
    "expire",
    "hold_back",
    "listing",
    "matches",
    "matching",
    "unsilenced",
]

MAX_SPAN = timedelta(days=30)


class SilenceNotFound(LookupError):
    pass


def check_matchers(matchers: Mapping[str, str]) -> dict[str, str]:
    """``matchers`` if every key is a fact and every value a non-empty glob; ``ValueError`` naming the
    first that is not."""
    if not matchers:
        raise ValueError("a silence needs at least one matcher, e.g. type=drift.detected")
    for name, glob in matchers.items():
        fact_name(name)
        if not glob.strip():
            raise ValueError(f"{name}: an empty pattern (use * to match any value)")
    return dict(matchers)


def matches(silence: Silence, facts: EventFacts) -> bool:
    for name, glob in silence.matchers.items():
        value = facts.field(name)
        if value is None or not fnmatchcase(value, glob):
            return False
    return True


def matching(silences: Sequence[Silence], facts: EventFacts) -> Silence | None:
    return next((s for s in silences if matches(s, facts)), None)


async def active(session: AsyncSession, now: datetime) -> list[Silence]:
    rows = await session.scalars(
        select(Silence).where(Silence.starts_at <= now, Silence.ends_at > now).order_by(Silence.id)
    )
    return list(rows)


async def create(
    session: AsyncSession,
    matchers: Mapping[str, str],
    *,
    duration: timedelta,
    reason: str,
    by: str,
    now: datetime,
    starts_at: datetime | None = None,
) -> Silence:
    if duration <= timedelta(0) or duration > MAX_SPAN:
        raise ValueError(f"a silence lasts between 1 s and {MAX_SPAN.days} days")
    start = max(starts_at or now, now)
    silence = Silence(
        matchers=check_matchers(matchers),
        reason=reason,
        created_by=by,
        created_at=now,
        starts_at=start,
        ends_at=start + duration,
    )
    session.add(silence)
    await session.flush()
    return silence


async def expire(session: AsyncSession, silence_id: int, *, by: str, now: datetime) -> Silence:
    """End a silence now (one that already ended is left as it is)."""
    silence = await session.get(Silence, silence_id)
    if silence is None:
        raise SilenceNotFound(f"no silence #{silence_id}")
    if silence.ends_at > now:
        silence.ends_at, silence.expired_by = now, by
        silence.starts_at = min(silence.starts_at, now)
    return silence


async def listing(session: AsyncSession, now: datetime, *, include_expired: bool) -> list[Silence]:
    query = select(Silence).order_by(Silence.id.desc()).limit(500)
    if not include_expired:
        query = query.where(Silence.ends_at > now)
    return list(await session.scalars(query))


def unsilenced(
    events: list[EventFacts], active: Sequence[Silence], kind: str
) -> tuple[list[EventFacts], Silence | None]:
    """The events of a notification no silence matches, or the silence that holds all of it back. An
    escalation or a resolution is about its alert's first event: silenced with it, or not at all."""
    if not active or not events:
        return events, None
    if kind in ("escalation", "resolution"):
        return events, matching(active, events[0])
    kept = [e for e in events if matching(active, e) is None]
    return (kept, None) if kept else (events, matching(active, events[0]))


def hold_back(session: AsyncSession, notification: Notification, silence: Silence) -> None:
    now = utcnow()
    notification.state, notification.silenced_by, notification.finished_at = (
        NotificationState.SILENCED,
        silence.id,
        now,
    )
    session.add(
        Delivery(
            notification_id=notification.id,
            at=now,
            receiver=notification.receiver,
            attempt=0,
            outcome="silenced",
            detail=f"silence #{silence.id} by {silence.created_by}: {silence.reason}"[:4000],
            subject=None,
        )
    )
