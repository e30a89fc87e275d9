"""The deployer's watch over each environment's cluster: ``rabbitmq.alarm`` when something is wrong,
``rabbitmq.recovered`` when it is over (the notifier alerts on-call on the first and resolves with the
second).

Every ``poll_s`` seconds it reads the management API (any node that answers) and looks for:

- ``unreachable``: no node's management API answered (the other alarms stay as they were);
- ``node_down``: a node of the file not running; ``memory_alarm``, ``disk_alarm``: a node's resource
  alarm; ``partition``: a node that sees a network partition;
- ``quorum_lost``: a quorum queue with half or fewer of its members online;
- ``queue_depth``, ``unacked``: a queue over the profile's ``queue_depth_max`` / ``unacked_max``;
- ``no_consumers``: one of Conveyor's own queues (``*.events``, ``*.commands`` in a ``conveyor: true``
  vhost) that nobody consumes.

The last three must last ``confirm_s`` (a minute by default) over at least two polls: a service
restarting, or starting after the deployer, is not an alarm. The rest are reported at once. An
alarm is sent once when it starts, a recovery once when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor.contracts import Payload, RabbitCheck, RabbitmqAlarm, RabbitmqRecovered
from conveyor.observability import get_logger
from conveyor_deployer.rabbit.desired import DesiredState
from conveyor_deployer.rabbit.plan import Management, ManagementError
from conveyor_deployer.rabbit.profiles import resolved

__all__ = ["Finding", "RabbitWatch"]

log = get_logger(__name__)

Key = tuple[RabbitCheck, str | None, str | None]
_CONFIRM = {RabbitCheck.QUEUE_DEPTH, RabbitCheck.UNACKED, RabbitCheck.NO_CONSUMERS}


@dataclass(frozen=True)
class Finding:
    check: RabbitCheck
    node: str | None
    subject: str | None
    detail: str
    value: float | None = None
    threshold: float | None = None

    @property
    def key(self) -> Key:
        return (self.check, self.node, self.subject)


def _conveyor_queue(name: str) -> bool:
    return name.endswith((".events", ".commands"))


class RabbitWatch:
    """One environment's cluster, polled; ``announce(env, payload)`` publishes what it finds."""

    def __init__(
        self,
        state: DesiredState,
        api: Management,
        announce: Callable[[str, Payload], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        confirm_s: float = 60.0,
    ) -> None:
        self.state, self.api, self.announce, self.clock = state, api, announce, clock
        self.confirm_s = confirm_s
        self.active: dict[Key, tuple[float, Finding]] = {}
        self._pending: dict[Key, float] = {}  # first seen, for the checks that must last

    async def findings(self) -> list[Finding] | None:
        """What is wrong now; None when no management API answered."""
        try:
            nodes = await self.api.get("/nodes")
            queues = await self.api.get(
                "/queues?columns=name,vhost,type,members,online,messages_ready,messages_unacknowledged,consumers"
            )
        except ManagementError as exc:
            log.warning("rabbit_unreachable", env=self.state.env, error=str(exc)[:300])
            return None
        found: list[Finding] = []
        live = {n["name"]: n for n in nodes}
        for wanted in self.state.cluster.nodes:
            node = live.get(wanted.name)
            if node is None or not node.get("running"):
                found.append(
                    Finding(RabbitCheck.NODE_DOWN, wanted.name, None, f"{wanted.name} is not running")
                )
                continue
            if node.get("mem_alarm"):
                found.append(
                    Finding(
                        RabbitCheck.MEMORY_ALARM,
                        wanted.name,
                        None,
                        f"{wanted.name} uses {node.get('mem_used', 0) / 1e9:.2f} GB of its "
                        f"{node.get('mem_limit', 0) / 1e9:.2f} GB limit: publishers are blocked",
                        node.get("mem_used"),
                        node.get("mem_limit"),
                    )
                )
            if node.get("disk_free_alarm"):
                found.append(
                    Finding(
                        RabbitCheck.DISK_ALARM,
                        wanted.name,
                        None,
                        f"{wanted.name} has {node.get('disk_free', 0) / 1e9:.2f} GB disk free, under its "
                        f"{node.get('disk_free_limit', 0) / 1e9:.2f} GB limit: publishers are blocked",
                        node.get("disk_free"),
                        node.get("disk_free_limit"),
                    )
                )
            if node.get("partitions"):
                others = ", ".join(node["partitions"])
                found.append(
                    Finding(
                        RabbitCheck.PARTITION,
                        wanted.name,
                        None,
                        f"{wanted.name} is partitioned from {others}",
                    )
                )
        found += self._queue_findings(queues)
        return found

    def _queue_findings(self, queues: list[dict[str, Any]]) -> list[Finding]:
        limits = resolved(self.state.profile, self.state.tuning)
        conveyor_vhosts = {v.name for v in self.state.vhosts if v.conveyor}
        found = []
        for q in queues:
            subject = f"{q['vhost']}/{q['name']}"
            members, online = q.get("members") or [], q.get("online") or []
            if q.get("type") == "quorum" and members and len(online) <= len(members) // 2:
                found.append(
                    Finding(
                        RabbitCheck.QUORUM_LOST,
                        None,
                        subject,
                        f"quorum queue {subject} has {len(online)} of {len(members)} members online: "
                        "it accepts and delivers nothing",
                        len(online),
                        len(members) // 2 + 1,
                    )
                )
            ready, unacked = q.get("messages_ready") or 0, q.get("messages_unacknowledged") or 0
            if ready > limits.queue_depth_max:
                found.append(
                    Finding(
                        RabbitCheck.QUEUE_DEPTH,
                        None,
                        subject,
                        f"{subject} holds {ready} ready messages (over {limits.queue_depth_max})",
                        ready,
                        limits.queue_depth_max,
                    )
                )
            if unacked > limits.unacked_max:
                found.append(
                    Finding(
                        RabbitCheck.UNACKED,
                        None,
                        subject,
                        f"{subject} has {unacked} unacknowledged messages (over {limits.unacked_max})",
                        unacked,
                        limits.unacked_max,
                    )
                )
            if q["vhost"] in conveyor_vhosts and _conveyor_queue(q["name"]) and not q.get("consumers"):
                found.append(
                    Finding(RabbitCheck.NO_CONSUMERS, None, subject, f"nobody consumes {subject}", 0, 1)
                )
        return found

    async def poll(self) -> list[Payload]:
        """Look once; the alarms and recoveries announced."""
        findings = await self.findings()
        if findings is None:
            unreachable = Finding(
                RabbitCheck.UNREACHABLE,
                None,
                None,
                f"no management API of the {self.state.env} cluster answers",
            )
            findings = [unreachable] + [
                f for _, f in self.active.values() if f.check is not RabbitCheck.UNREACHABLE
            ]
        now = self.clock()
        current = {f.key: f for f in findings}
        self._pending = {
            key: self._pending.get(key, now) for key, f in current.items() if f.check in _CONFIRM
        }
        confirmed = {
            key: f
            for key, f in current.items()
            if f.check not in _CONFIRM
            or key in self.active
            or (self._pending[key] < now and now - self._pending[key] >= self.confirm_s)
        }
        sent: list[Payload] = []
        for key, finding in confirmed.items():
            if key not in self.active:
                self.active[key] = (now, finding)
                sent.append(
                    RabbitmqAlarm(
                        check=finding.check,
                        node=finding.node,
                        subject=finding.subject,
                        detail=finding.detail[:2000],
                        value=finding.value,
                        threshold=finding.threshold,
                    )
                )
        for key in [k for k in self.active if k not in confirmed]:
            since, finding = self.active.pop(key)
            sent.append(
                RabbitmqRecovered(
                    check=finding.check,
                    node=finding.node,
                    subject=finding.subject,
                    detail=f"over: {finding.detail}"[:2000],
                    duration_s=round(now - since, 1),
                )
            )
        for payload in sent:
            log.warning(
                "rabbit_" + payload.message_type.split(".")[1],
                env=self.state.env,
                **payload.model_dump(mode="json"),
            )
            self.announce(self.state.env, payload)
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll()
            except Exception:  # a bug or an answer it did not expect: look again next time
                log.exception("rabbit_watch_failed", env=self.state.env)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.state.poll_s)
