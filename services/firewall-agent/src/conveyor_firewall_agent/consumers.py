"""What the firewall-agent consumes. Firewall commands addressed to this node."""

from __future__ import annotations

from conveyor.bus import COMMANDS_EXCHANGE, QueueSpec
from conveyor_firewall_agent.config import Settings

__all__ = ["queues"]


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    return [
        QueueSpec(
            name=f"firewall-agent.{settings.node}.commands",
            exchange=COMMANDS_EXCHANGE,
            binding_keys=(f"firewall.*.{settings.node}",),
        )
    ]
