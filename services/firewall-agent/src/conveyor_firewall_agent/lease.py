"""The lease under which a node's firewall is open, and the firewall as it was before, kept on disk.

``<state_dir>/saved-firewall``  the backend's snapshot taken before opening (what is restored)
``<state_dir>/lease.json``      who opened it, why, since when, until when, and the most it may last

Order of writes: the snapshot first, then the lease, then the firewall is opened; on restore, the
firewall first, then the lease is removed, then the snapshot. So a crash at any point leaves either
no lease (nothing was opened: a stray snapshot is dropped at start-up) or a lease with its snapshot
(the agent restores at expiry, also when it starts after the expiry).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from conveyor.contracts.catalogue import FirewallBackend
from conveyor.pkgvcs.storage import atomic_write, fsync_dir

__all__ = ["Lease", "LeaseStore"]


@dataclass(frozen=True)
class Lease:
    request_id: str
    actor: str | None
    role: str
    reason: str
    backend: FirewallBackend
    disabled_at: datetime
    """When this opening began (the first disable)."""
    expires_at: datetime
    max_until: datetime
    """The latest the lease may ever be extended to: the first disable plus the policy's maximum."""
    extensions: int = 0

    def extended(self, *, expires_at: datetime, actor: str | None, reason: str, request_id: str) -> Lease:
        return replace(
            self,
            expires_at=expires_at,
            actor=actor,
            reason=reason,
            request_id=request_id,
            extensions=self.extensions + 1,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("disabled_at", "expires_at", "max_until"):
            data[key] = getattr(self, key).isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        for key in ("disabled_at", "expires_at", "max_until"):
            data[key] = datetime.fromisoformat(data[key])
        return cls(**data)


class LeaseStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.snapshot_path = directory / "saved-firewall"
        self.lease_path = directory / "lease.json"

    def save_snapshot(self, snapshot: bytes) -> None:
        atomic_write(self.snapshot_path, snapshot)

    def snapshot(self) -> bytes | None:
        try:
            return self.snapshot_path.read_bytes()
        except FileNotFoundError:
            return None

    def load(self) -> Lease | None:
        """The lease; ``ValueError`` naming the file when it cannot be read (never silently dropped)."""
        try:
            text = self.lease_path.read_text()
        except FileNotFoundError:
            return None
        try:
            return Lease.from_json(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{self.lease_path} is damaged: {exc}") from None

    def save(self, lease: Lease) -> None:
        atomic_write(self.lease_path, json.dumps(lease.to_json(), indent=2).encode())

    def clear(self) -> None:
        """The lease, then the snapshot (see the module for why in this order)."""
        for path in (self.lease_path, self.snapshot_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fsync_dir(self.directory)
