"""The board: what was announced, deployed and applied in one environment, newest first, in memory."""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from conveyor.bus import Consumer
from conveyor.contracts import ChangesetApplied, DeploymentSucceeded, Envelope
from release_board.contracts import ReleaseAnnounced

__all__ = ["Board", "Entry"]


class Entry(BaseModel):
    kind: Literal["announced", "deployed", "applied"]
    package: str
    version: str
    env: str
    detail: str
    occurred_at: datetime
    source: str
    message_id: UUID
    correlation_id: UUID


class Board:
    """Fed by the bus; ``register()`` gives a consumer one handler per message the board shows."""

    def __init__(self, *, capacity: int) -> None:
        self._entries: deque[Entry] = deque(maxlen=capacity)

    def entries(self) -> list[Entry]:
        return list(reversed(self._entries))

    def register(self, consumer: Consumer) -> None:
        consumer.on(ReleaseAnnounced, self.on_announced)
        consumer.on(DeploymentSucceeded, self.on_deployment_succeeded)
        consumer.on(ChangesetApplied, self.on_changeset_applied)

    async def on_announced(self, message: Envelope[ReleaseAnnounced]) -> None:
        announced = message.payload
        self._add(message, "announced", announced.package, announced.version, announced.summary)

    async def on_deployment_succeeded(self, message: Envelope[DeploymentSucceeded]) -> None:
        done = message.payload
        detail = f"{len(done.nodes)} node(s) in {done.duration_s:.1f} s"
        self._add(message, "deployed", done.package, done.version, detail)

    async def on_changeset_applied(self, message: Envelope[ChangesetApplied]) -> None:
        applied = message.payload
        detail = f"on {applied.node}, from {applied.previous_version or 'nothing'}"
        self._add(message, "applied", applied.package, applied.version, detail)

    def _add(
        self,
        message: Envelope[Any],
        kind: Literal["announced", "deployed", "applied"],
        package: str,
        version: str,
        detail: str,
    ) -> None:
        self._entries.append(
            Entry(
                kind=kind,
                package=package,
                version=version,
                env=message.env,
                detail=detail,
                occurred_at=message.occurred_at,
                source=message.source,
                message_id=message.id,
                correlation_id=message.correlation_id,
            )
        )
