"""What the deployer consumes: what the nodes say (changesets, replies, heartbeats) in every environment."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.bus import Consumer, QueueSpec
from conveyor.contracts import ChangesetApplied, ChangesetCreated, ChangesetFailed, NodeHeartbeat
from conveyor.contracts.catalogue import FirewallDisabled, FirewallEnabled, FirewallRejected
from conveyor_deployer.config import Settings
from conveyor_deployer.service import Deployer

__all__ = ["QUEUE", "handlers", "queues"]

QUEUE = "deployer.events"


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    del settings, env
    return [QueueSpec(name=QUEUE, binding_keys=("changeset.#", "node.#", "drift.#", "firewall.#"))]


def handlers(deployer: Deployer) -> Callable[[Consumer], None]:
    def register(consumer: Consumer) -> None:
        consumer.on(ChangesetCreated, deployer.on_created)
        consumer.on(ChangesetApplied, deployer.on_reply)
        consumer.on(ChangesetFailed, deployer.on_reply)
        consumer.on(NodeHeartbeat, deployer.on_heartbeat)
        for event in (FirewallDisabled, FirewallEnabled, FirewallRejected):
            consumer.on(event, deployer.firewall.on_event)

    return register
