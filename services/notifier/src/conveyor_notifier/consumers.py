"""What the notifier consumes. Every event of every environment, to route it to people."""

from __future__ import annotations

from conveyor.bus import QueueSpec
from conveyor_notifier.config import Settings

__all__ = ["queues"]


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    del settings
    return [QueueSpec(name="notifier.events", binding_keys=("#",))]
