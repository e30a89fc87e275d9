"""What the version-db consumes. Every event of every environment, to record it."""

from __future__ import annotations

from conveyor.bus import QueueSpec
from conveyor_version_db.config import Settings

__all__ = ["queues"]


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    del settings
    return [QueueSpec(name="version-db.events", binding_keys=("#",))]
