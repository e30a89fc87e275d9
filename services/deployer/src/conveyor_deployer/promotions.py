"""Promotions: a package version into an environment, in waves, within a failure budget.

A promotion is a JSON file in ``<state_dir>/promotions/``, rewritten (atomically) at
every step, so a restarted deployer picks each unfinished one up where it was: nodes
whose command went out wait for their reply (it waits in the deployer's queue), the
others are sent theirs. Every node ends succeeded, failed, rolled back or unreachable,
every promotion succeeded, failed or refused.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from uuid import UUID, uuid4

from pydantic import BaseModel, Field, StringConstraints

from conveyor.contracts.catalogue import NodeOutcome
from conveyor.pkgvcs.storage import atomic_write

__all__ = [
    "Kind",
    "NodeRun",
    "NodeState",
    "Promotion",
    "PromotionState",
    "PromotionStore",
    "budget_of",
    "plan_waves",
]

Count = Annotated[str, StringConstraints(pattern=r"^(\d+|\d{1,3}%)$")]


class PromotionState(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (PromotionState.SUCCEEDED, PromotionState.FAILED)


class NodeState(StrEnum):
    PENDING = "pending"
    APPLYING = "applying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    UNREACHABLE = "unreachable"

    @property
    def final(self) -> bool:
        return self not in (NodeState.PENDING, NodeState.APPLYING)

    @property
    def bad(self) -> bool:
        return self in (NodeState.FAILED, NodeState.ROLLED_BACK, NodeState.UNREACHABLE)

    def outcome(self) -> NodeOutcome:
        return NodeOutcome(self.value)


class Kind(StrEnum):
    PROMOTION = "promotion"
    ROLLBACK = "rollback"


class NodeRun(BaseModel):
    node: str
    wave: int
    state: NodeState = NodeState.PENDING
    from_version: str | None = None
    changeset_id: str | None = None
    command_id: UUID | None = None
    sent_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    undo_command_id: UUID | None = None  # the command taking it back when the promotion rolls back


class Promotion(BaseModel):
    id: UUID = Field(default_factory=uuid4)
    kind: Kind = Kind.PROMOTION
    package: str
    version: str
    from_env: str | None
    to_env: str
    requested_by: str
    requested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    reason: str | None = None
    state: PromotionState = PromotionState.RUNNING
    approved_by: str | None = None
    canary: int = 1
    wave_size: Count = "25%"
    max_failures: Count = "0"
    budget: int = 0
    waves: list[list[str]] = Field(default_factory=list)
    nodes: dict[str, NodeRun] = Field(default_factory=dict)
    outcome: str | None = None  # why it ended as it did
    rolled_back: bool = False
    finished_at: datetime | None = None
    attempt: int = 1  # raised by each retry

    def failures(self) -> int:
        return sum(1 for run in self.nodes.values() if run.state.bad)

    def by_command(self, command_id: UUID) -> NodeRun | None:
        for run in self.nodes.values():
            if command_id in (run.command_id, run.undo_command_id):
                return run
        return None


def _count(spec: str, total: int, *, at_least: int) -> int:
    if spec.endswith("%"):
        return max(at_least, math.floor(total * int(spec[:-1]) / 100))
    return max(at_least, int(spec))


def budget_of(max_failures: str, total: int) -> int:
    """``"1"`` → 1 node may fail; ``"10%"`` → a tenth of the nodes (rounded down)."""
    if not re.fullmatch(r"\d+|\d{1,3}%", max_failures):
        raise ValueError(f"max failures {max_failures!r}: a count (1) or a percentage (10%)")
    return _count(max_failures, total, at_least=0)


def plan_waves(nodes: list[str], *, canary: int, wave_size: str) -> list[list[str]]:
    """Canary node(s) first, then waves of ``wave_size`` (a count, or a percentage of all nodes)."""
    if not re.fullmatch(r"\d+|\d{1,3}%", wave_size):
        raise ValueError(f"wave size {wave_size!r}: a count (5) or a percentage (25%)")
    ordered = sorted(nodes)
    if not ordered:
        return []
    if wave_size.endswith("%"):
        size = max(1, math.ceil(len(ordered) * int(wave_size[:-1]) / 100))
    else:
        size = max(1, int(wave_size))
    waves = [ordered[:canary]] if canary > 0 else []
    rest = ordered[canary:]
    waves += [rest[i : i + size] for i in range(0, len(rest), size)]
    return [wave for wave in waves if wave]


class PromotionStore:
    """One JSON file per promotion; ``blocked.json`` for blocked versions."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.promotions_dir = directory / "promotions"
        self.promotions_dir.mkdir(parents=True, exist_ok=True)
        self.blocked_path = directory / "blocked.json"
        self.cache: dict[UUID, Promotion] = {}
        for path in sorted(self.promotions_dir.glob("*.json")):
            promotion = Promotion.model_validate_json(path.read_bytes())
            self.cache[promotion.id] = promotion

    def save(self, promotion: Promotion) -> None:
        self.cache[promotion.id] = promotion
        atomic_write(
            self.promotions_dir / f"{promotion.id}.json", promotion.model_dump_json(indent=1).encode()
        )

    def get(self, promotion_id: UUID) -> Promotion | None:
        return self.cache.get(promotion_id)

    def all(self) -> list[Promotion]:
        return sorted(self.cache.values(), key=lambda p: p.requested_at, reverse=True)

    def unfinished(self) -> list[Promotion]:
        return [p for p in self.all() if not p.state.final]

    # -- blocked versions -------------------------------------------------------------

    def blocked(self) -> dict[str, dict[str, dict[str, str]]]:
        """package → version → {by, reason, at, env}."""
        try:
            data: dict[str, dict[str, dict[str, str]]] = json.loads(self.blocked_path.read_text())
        except FileNotFoundError:
            return {}
        return data

    def is_blocked(self, package: str, version: str) -> dict[str, str] | None:
        return self.blocked().get(package, {}).get(version)

    def block(self, package: str, version: str, *, by: str, reason: str, env: str) -> None:
        data = self.blocked()
        data.setdefault(package, {})[version] = {
            "by": by,
            "reason": reason,
            "env": env,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write(self.blocked_path, json.dumps(data, indent=1).encode())

    def unblock(self, package: str, version: str) -> bool:
        data = self.blocked()
        if version not in data.get(package, {}):
            return False
        del data[package][version]
        atomic_write(self.blocked_path, json.dumps(data, indent=1).encode())
        return True
