"""What the changelog-listener consumes. Apply commands addressed to this node."""

from __future__ import annotations

from conveyor.bus import COMMANDS_EXCHANGE, QueueSpec
from conveyor_changelog_listener.config import Settings

__all__ = ["queues"]


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    return [
        QueueSpec(
            name=f"listener.{settings.node}.commands",
            exchange=COMMANDS_EXCHANGE,
            binding_keys=(f"changeset.apply.{settings.node}",),
        )
    ]
