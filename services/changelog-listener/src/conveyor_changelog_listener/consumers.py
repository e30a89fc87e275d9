"""What the changelog-listener consumes: apply commands addressed to this node."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.bus import COMMANDS_EXCHANGE, Consumer, QueueSpec
from conveyor.contracts import ChangesetApply
from conveyor_changelog_listener.config import Settings
from conveyor_changelog_listener.service import Listener

__all__ = ["command_handlers", "queue_name", "queues"]


def queue_name(settings: Settings) -> str:
    return f"listener.{settings.node}.commands"


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    del env
    return [
        QueueSpec(
            name=queue_name(settings),
            exchange=COMMANDS_EXCHANGE,
            binding_keys=(f"changeset.apply.{settings.node}",),
        )
    ]


def command_handlers(listener: Listener) -> Callable[[Consumer], None]:
    def register(consumer: Consumer) -> None:
        consumer.on(ChangesetApply, listener.on_apply)

    return register
