"""The notifier's HTTP API: alerts (list, acknowledge), silences (add, list, expire), the messages and
the delivery log.

Every route needs ``Authorization: Bearer <token>`` of a user in ``USERS``; readers read, responders
also acknowledge alerts and add or expire silences. The user's name is recorded as who did it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conveyor_notifier import alerts, silences
from conveyor_notifier.config import Role, Settings
from conveyor_notifier.models import Alert, AlertState, Delivery, InboxMessage, Notification, utcnow

__all__ = ["api_router"]


class Caller(BaseModel):
    name: str
    role: Role


class AckRequest(BaseModel):
    comment: str | None = Field(default=None, max_length=2000)


class SilenceRequest(BaseModel):
    matchers: dict[str, str] = Field(
        min_length=1,
        description="fact → fnmatch glob, all must match: type, env, package, version, node, actor, "
        "source, severity, correlation_id, labels.<key>",
    )
    duration_s: float = Field(gt=0, le=silences.MAX_SPAN.total_seconds())
    reason: str = Field(min_length=1, max_length=2000)
    starts_at: AwareDatetime | None = Field(default=None, description="default: now")


def _authenticate(request: Request) -> Caller:
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    for name, user in settings.users.items():
        if hmac.compare_digest(user.token.get_secret_value().encode(), token.encode()):
            return Caller(name=name, role=user.role)
    raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})


def _need(role: Role) -> Callable[[Caller], Caller]:
    def check(caller: Annotated[Caller, Depends(_authenticate)]) -> Caller:
        if caller.role.rank < role.rank:
            raise HTTPException(403, f"{caller.name} is a {caller.role}; this needs {role}")
        return caller

    return check


Reader = Annotated[Caller, Depends(_need(Role.READER))]
Responder = Annotated[Caller, Depends(_need(Role.RESPONDER))]
Limit = Annotated[int, Query(ge=1, le=1000)]
AlertStates = Literal["active", "open", "acknowledged", "resolved", "all"]


def api_router(sessions: async_sessionmaker[AsyncSession]) -> APIRouter:
    router = APIRouter()
    _alert_routes(router, sessions)
    _silence_routes(router, sessions)
    _log_routes(router, sessions)
    return router


def _alert_routes(router: APIRouter, sessions: async_sessionmaker[AsyncSession]) -> None:
    @router.get("/alerts")
    async def list_alerts(
        _: Reader, state: AlertStates = "active", env: str | None = None, limit: Limit = 100
    ) -> list[dict[str, Any]]:
        """Alerts, newest first; ``active`` (the default): open or acknowledged, not yet resolved."""
        query = select(Alert).order_by(Alert.id.desc()).limit(limit)
        if state == "active":
            query = query.where(Alert.state != AlertState.RESOLVED)
        elif state != "all":
            query = query.where(Alert.state == state)
        if env is not None:
            query = query.where(Alert.env == env)
        async with sessions() as session:
            return [row.as_dict() for row in await session.scalars(query)]

    @router.get("/alerts/kinds")
    async def alert_kinds(_: Reader) -> list[dict[str, object]]:
        """Which events open an alert, which resolve it, and what names the condition."""
        return alerts.kinds_table()

    @router.get("/alerts/{alert_id}")
    async def show_alert(alert_id: int, _: Reader) -> dict[str, Any]:
        """One alert and its escalation and resolution messages."""
        async with sessions() as session:
            alert = await session.get(Alert, alert_id)
            if alert is None:
                raise HTTPException(404, f"no alert #{alert_id}")
            related = await session.scalars(
                select(Notification).where(Notification.alert_id == alert_id).order_by(Notification.id)
            )
            return alert.as_dict() | {"notifications": [n.as_dict() for n in related]}

    @router.post("/alerts/{alert_id}/ack")
    async def ack_alert(alert_id: int, body: AckRequest, caller: Responder) -> dict[str, Any]:
        """Acknowledge an alert: someone is on it, it does not escalate. An alert acknowledged or
        resolved before is answered as it is."""
        try:
            async with sessions.begin() as session:
                alert = await alerts.acknowledge(
                    session, alert_id, by=caller.name, comment=body.comment, now=utcnow()
                )
                return alert.as_dict()
        except alerts.AlertNotFound as exc:
            raise HTTPException(404, str(exc)) from None


def _silence_routes(router: APIRouter, sessions: async_sessionmaker[AsyncSession]) -> None:
    @router.get("/silences")
    async def list_silences(_: Reader, include_expired: bool = False) -> list[dict[str, Any]]:
        """Silences, newest first: active and pending ones, and with ``include_expired`` the ended ones."""
        now = utcnow()
        async with sessions() as session:
            rows = await silences.listing(session, now, include_expired=include_expired)
            return [row.as_dict(now) for row in rows]

    @router.post("/silences", status_code=201)
    async def add_silence(body: SilenceRequest, caller: Responder) -> dict[str, Any]:
        """Silence matching events for a while: their notifications are recorded, not sent."""
        now = utcnow()
        try:
            async with sessions.begin() as session:
                silence = await silences.create(
                    session,
                    body.matchers,
                    duration=timedelta(seconds=body.duration_s),
                    reason=body.reason,
                    by=caller.name,
                    now=now,
                    starts_at=body.starts_at,
                )
                return silence.as_dict(now)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @router.delete("/silences/{silence_id}")
    async def expire_silence(silence_id: int, caller: Responder) -> dict[str, Any]:
        """End a silence now."""
        now = utcnow()
        try:
            async with sessions.begin() as session:
                silence = await silences.expire(session, silence_id, by=caller.name, now=now)
                return silence.as_dict(now)
        except silences.SilenceNotFound as exc:
            raise HTTPException(404, str(exc)) from None


def _log_routes(router: APIRouter, sessions: async_sessionmaker[AsyncSession]) -> None:
    @router.get("/events/{message_id}")
    async def event(message_id: str, _: Reader) -> dict[str, Any]:
        """What became of an event: routed, duplicate (the same report within the dedup window) or
        ignored, and the messages that tell of it."""
        async with sessions() as session:
            row = await session.scalar(select(InboxMessage).where(InboxMessage.message_id == message_id))
            if row is None:
                raise HTTPException(404, f"no event {message_id} was received")
            recent = await session.scalars(
                select(Notification)
                .where(Notification.due_at >= row.received_at)
                .order_by(Notification.id)
                .limit(1000)
            )
            return {
                "message_id": row.message_id,
                "type": row.type,
                "env": row.env,
                "received_at": row.received_at.isoformat(),
                "outcome": row.outcome,
                "notifications": [n.id for n in recent if message_id in n.events],
            }

    @router.get("/deliveries")
    async def deliveries(_: Reader, limit: Limit = 100, receiver: str | None = None) -> list[dict[str, Any]]:
        """The delivery log, newest first: every attempt, to whom, when, with what outcome."""
        query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
        if receiver is not None:
            query = query.where(Delivery.receiver == receiver)
        async with sessions() as session:
            return [row.as_dict() for row in await session.scalars(query)]

    @router.get("/notifications")
    async def notifications(_: Reader, limit: Limit = 100, state: str | None = None) -> list[dict[str, Any]]:
        """Messages, newest first: their group, receiver, state and the events they tell of."""
        query = select(Notification).order_by(Notification.id.desc()).limit(limit)
        if state is not None:
            query = query.where(Notification.state == state)
        async with sessions() as session:
            return [row.as_dict() for row in await session.scalars(query)]
