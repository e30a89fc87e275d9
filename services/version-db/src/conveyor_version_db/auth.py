"""Bearer-token authentication with roles; every refused request is audited."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, status
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conveyor.observability import get_logger
from conveyor_version_db.config import Role, Settings
from conveyor_version_db.models import AuditEntry, utcnow

__all__ = ["Caller", "TokenAuth"]

log = get_logger(__name__)

# What each role may do includes what the roles below it may.
_RANK: dict[Role, int] = {"reader": 0, "deployer": 1, "admin": 2}


class Caller:
    __slots__ = ("name", "role")

    def __init__(self, name: str, role: Role) -> None:
        self.name = name
        self.role = role


class TokenAuth:
    """``require("deployer")`` is a FastAPI dependency admitting deployers and admins."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._tokens: list[tuple[bytes, Role]] = [
            (token.get_secret_value().encode(), role)
            for role, tokens in settings.api_tokens.items()
            for token in tokens
        ]
        self._sessions = sessions

    def _role_of(self, presented: str) -> Role | None:
        given = presented.encode()
        found: Role | None = None
        for token, role in self._tokens:  # compare with every token, in constant time each
            if hmac.compare_digest(token, given) and (found is None or _RANK[role] > _RANK[found]):
                found = role
        return found

    def require(self, minimum: Role) -> Callable[[Request], Awaitable[Caller]]:
        async def dependency(request: Request) -> Caller:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                await self._refuse(request, minimum, status.HTTP_401_UNAUTHORIZED, "no bearer token")
            role = self._role_of(token.strip())
            if role is None:
                await self._refuse(request, minimum, status.HTTP_401_UNAUTHORIZED, "unknown token")
            assert role is not None
            if _RANK[role] < _RANK[minimum]:
                await self._refuse(
                    request, minimum, status.HTTP_403_FORBIDDEN, f"role {role} is not {minimum}"
                )
            caller = Caller(name=f"token:{role}", role=role)
            request.state.caller = caller
            return caller

        return dependency

    async def _refuse(self, request: Request, needed: Role, code: int, why: str) -> None:
        target = f"{request.method} {request.url.path}"
        log.warning(
            "api_request_refused",
            target=target,
            reason=why,
            client=request.client.host if request.client else None,
        )
        async with self._sessions() as session, session.begin():
            session.add(
                AuditEntry(
                    at=utcnow(),
                    actor=None,
                    action="api.refused",
                    target=target[:255],
                    outcome="refused",
                    env=None,
                    message_id=None,
                    detail={
                        "reason": why,
                        "needed": needed,
                        "client": request.client.host if request.client else None,
                    },
                )
            )
        headers = {"WWW-Authenticate": "Bearer"} if code == status.HTTP_401_UNAUTHORIZED else None
        raise HTTPException(status_code=code, detail=f"{why}; this needs a {needed} token", headers=headers)
