"""What the deployer consumes. Outcomes from the nodes that drive promotions."""

from __future__ import annotations

from conveyor.bus import QueueSpec
from conveyor_deployer.config import Settings

__all__ = ["queues"]


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    del settings
    return [
        QueueSpec(
            name="deployer.events",
            binding_keys=("changeset.#", "node.#", "drift.#", "firewall.#"),
        )
    ]
