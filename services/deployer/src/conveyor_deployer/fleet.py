"""What every node runs, as the nodes report it: heartbeats and the replies to apply commands.

Kept in ``<state_dir>/fleet.json`` so a restarted deployer knows the fleet at once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from conveyor.pkgvcs.storage import atomic_write

__all__ = ["Fleet", "NodeRecord"]


class NodeRecord(BaseModel):
    versions: dict[str, str] = Field(default_factory=dict)  # package → version it runs
    since: dict[str, datetime] = Field(default_factory=dict)  # package → when it started running it
    last_heartbeat: datetime | None = None
    last_failure: dict[str, str] = Field(default_factory=dict)  # package → version that failed last


class Fleet:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.nodes: dict[str, NodeRecord] = {}
        try:
            raw = json.loads(path.read_text())
            self.nodes = {name: NodeRecord.model_validate(record) for name, record in raw.items()}
        except FileNotFoundError:
            pass

    def save(self) -> None:
        data = {name: record.model_dump(mode="json") for name, record in self.nodes.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(data, indent=1).encode(), durable=False)

    def _record(self, node: str) -> NodeRecord:
        return self.nodes.setdefault(node, NodeRecord())

    def _runs(self, node: str, package: str, version: str | None, at: datetime) -> None:
        record = self._record(node)
        if version is None:
            return
        since = record.since.get(package)
        if since is not None and at < since:
            return  # an older report (a late reply, a replayed heartbeat) than what is known
        if record.versions.get(package) != version:
            record.versions[package] = version
            record.since[package] = at

    def heartbeat(self, node: str, packages: dict[str, str], at: datetime) -> None:
        record = self._record(node)
        if record.last_heartbeat is None or at >= record.last_heartbeat:
            record.last_heartbeat = at
            for package, version in packages.items():
                self._runs(node, package, version, at)
        self.save()

    def applied(self, node: str, package: str, version: str, at: datetime) -> None:
        self._runs(node, package, version, at)
        self._record(node).last_failure.pop(package, None)
        self.save()

    def failed(self, node: str, package: str, version: str, running: str | None, at: datetime) -> None:
        self._runs(node, package, running, at)
        self._record(node).last_failure[package] = version
        self.save()

    def version(self, node: str, package: str) -> str | None:
        record = self.nodes.get(node)
        return record.versions.get(package) if record else None

    def since(self, node: str, package: str) -> datetime | None:
        record = self.nodes.get(node)
        return record.since.get(package) if record else None

    def alive(self, node: str, stale_s: float, now: datetime | None = None) -> bool:
        record = self.nodes.get(node)
        if record is None or record.last_heartbeat is None:
            return False
        return ((now or datetime.now(UTC)) - record.last_heartbeat).total_seconds() <= stale_s
