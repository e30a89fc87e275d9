"""What the firewall-agent consumes: firewall commands addressed to this node."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.bus import COMMANDS_EXCHANGE, Consumer, QueueSpec
from conveyor.contracts.catalogue import FirewallDisable, FirewallEnable
from conveyor_firewall_agent.config import Settings
from conveyor_firewall_agent.service import FirewallAgent

__all__ = ["command_handlers", "queue_name", "queues"]


def queue_name(settings: Settings) -> str:
    return f"firewall-agent.{settings.node}.commands"


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    del env
    return [
        QueueSpec(
            name=queue_name(settings),
            exchange=COMMANDS_EXCHANGE,
            binding_keys=(f"firewall.*.{settings.node}",),
        )
    ]


def command_handlers(agent: FirewallAgent) -> Callable[[Consumer], None]:
    def register(consumer: Consumer) -> None:
        consumer.on(FirewallDisable, agent.on_disable)
        consumer.on(FirewallEnable, agent.on_enable)

    return register
