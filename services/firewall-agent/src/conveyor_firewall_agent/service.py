"""The firewall agent: signed ``firewall.disable`` / ``firewall.enable`` commands for this node, a lease
that ends on the node itself, and an audit trail of every request.

A command is checked (signature by a trusted key, this node, this environment, not expired, nonce
unused, an allowed role, a lease no longer than the policy and this node allow) before anything is
done; a refused one changes nothing. Disable saves the backend's exact state, writes the lease, then
opens the firewall; a second disable while open extends the lease, never past the first disable plus
the maximum, and says so. Enable, the lease's expiry and a start-up after the expiry restore the saved
state. Whatever happens is appended to the hash-chained audit log (:mod:`conveyor.auditlog`) and
reported (``firewall.disabled``, ``firewall.enabled``, ``firewall.rejected``, each with its audit
record's ``seq`` and hash) through an on-disk outbox, so expiry works and nothing is lost while the
broker or the deployment server is unreachable. A redelivered command gets its first answer again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from conveyor.auditlog import AuditLog
from conveyor.bus import Bus
from conveyor.bus.journal import Journal, answer_once
from conveyor.bus.outbox import Outbox
from conveyor.contracts import Envelope, Payload
from conveyor.contracts.catalogue import (
    FirewallDisable,
    FirewallDisabled,
    FirewallEnable,
    FirewallEnabled,
    FirewallRejected,
)
from conveyor.observability import get_logger
from conveyor.signing import CommandRefused, NonceStore, TrustedKeys, Verifier
from conveyor.tasks import BackgroundTasks
from conveyor_firewall_agent.backends import BACKENDS, Backend, FirewallError, Runner, detect
from conveyor_firewall_agent.config import Settings
from conveyor_firewall_agent.lease import Lease, LeaseStore

__all__ = ["FirewallAgent"]

log = get_logger(__name__)

Trigger = Literal["requested", "lease_expired", "agent_start"]


def _now() -> datetime:
    return datetime.now(UTC)


class FirewallAgent:
    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        state = settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(0o700)  # the saved firewall and the audit log are root's business
        self.outbox = Outbox(state / "outbox", bus, retry_s=settings.bus.reconnect_interval_s)
        self.journal = Journal(state / "commands")
        self.leases = LeaseStore(state)
        self.audit = AuditLog(state / "audit.jsonl")
        trusted = TrustedKeys.load(settings.trusted_keys_file, missing_ok=True)
        if not len(trusted):
            log.warning("no_trusted_keys", path=str(settings.trusted_keys_file))
        self.verifier = Verifier(
            trusted,
            NonceStore(state / "nonces.log"),
            node=settings.node,
            roles=set(settings.allowed_roles),
            env=settings.env,
        )
        self.runner = Runner(netns=settings.netns, timeout_s=settings.command_timeout_s)
        self._lock = asyncio.Lock()  # one firewall change at a time
        self._lease_changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._background = BackgroundTasks()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Settle what a crash or reboot left (restore an expired lease, re-open an active one), then
        watch the lease's expiry."""
        await self._recover()
        self._background.spawn("outbox", self.outbox.run(self._stop))
        self._background.spawn("lease-expiry", self._expiry_loop())
        log.info("firewall_agent_started", netns=self.settings.netns, backend=self.settings.backend)

    async def stop(self) -> None:
        self._stop.set()
        self._lease_changed.set()
        await self._background.cancel_all()

    async def _recover(self) -> None:
        async with self._lock:
            try:
                lease = self.leases.load()
            except ValueError as exc:  # the agent still starts: commands get a clear refusal, status says so
                log.error("lease_unreadable", error=str(exc))
                return
            if lease is None:
                if self.leases.snapshot() is not None:  # saved, but the lease was never written: not opened
                    self.leases.clear()
                return
            if lease.expires_at <= _now():
                await self._restore_expired(lease, "agent_start")
                return
            backend = BACKENDS[lease.backend](self.runner)
            try:
                await backend.open()  # a reboot may have loaded the rules again; the lease still holds
            except FirewallError as exc:
                log.error("reopen_failed", error=str(exc)[:1000])
            log.info("lease_active", expires_at=lease.expires_at.isoformat(), actor=lease.actor)

    # -- commands ------------------------------------------------------------------------

    async def on_disable(self, envelope: Envelope[FirewallDisable]) -> None:
        await self._answer(envelope, lambda: self._disable(envelope))

    async def on_enable(self, envelope: Envelope[FirewallEnable]) -> None:
        await self._answer(envelope, lambda: self._enable(envelope))

    async def _answer(self, envelope: Envelope[Any], work: Callable[[], Awaitable[Payload]]) -> None:
        async def locked() -> Payload:
            async with self._lock:  # one firewall change at a time
                return await work()

        await answer_once(
            self.journal,
            self.outbox,
            envelope,
            locked,
            source=self.settings.service_name,
            publish_timeout_s=self.settings.bus.publish_timeout_s,
        )

    def _verify(self, envelope: Envelope[Any]) -> str | None:
        """Why the command is refused, or None."""
        try:
            self.verifier.verify(envelope, target_node=self.settings.node)
        except CommandRefused as exc:
            return f"{exc.reason.value}: {exc.detail}"
        return None

    def _record(self, envelope: Envelope[Any] | None, **fields: Any) -> tuple[int, str]:
        record: dict[str, Any] = {"node": self.settings.node, "env": self.settings.env, **fields}
        if envelope is not None:
            payload = envelope.payload
            auth = getattr(payload, "authorization", None)
            record |= {
                "message_id": str(envelope.id),
                "actor": envelope.actor,
                "approved_by": getattr(payload, "approved_by", None),
                "role": auth.role if auth is not None else None,
                "request_id": str(payload.request_id),
                "request_reason": payload.reason,
            }
        return self.audit.append(
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in record.items()}
        )

    def _rejected(
        self,
        envelope: Envelope[Any],
        command: Literal["disable", "enable"],
        reason: str,
        *,
        failed: bool = False,
    ) -> FirewallRejected:
        log.warning("firewall_command_rejected", command=command, reason=reason[:500], failed=failed)
        seq, digest = self._record(
            envelope, command=command, outcome="failed" if failed else "rejected", detail=reason[:2000]
        )
        return FirewallRejected(
            request_id=envelope.payload.request_id,
            node=self.settings.node,
            command=command,
            reason=reason[:2000],
            failed=failed,
            audit_seq=seq,
            audit_hash=digest,
        )

    async def _disable(self, envelope: Envelope[FirewallDisable]) -> Payload:
        command = envelope.payload
        refused = self._verify(envelope)
        if refused is not None:
            return self._rejected(envelope, "disable", refused)
        limit = min(command.policy_max_s or math.inf, self.settings.max_lease_s)
        if command.lease_s > limit:
            return self._rejected(
                envelope,
                "disable",
                f"lease_too_long: {command.lease_s}s asked, at most {limit:.0f}s allowed "
                f"(policy {command.policy_max_s or '-'}s, this node {self.settings.max_lease_s}s)",
            )
        now = _now()
        try:
            lease = self.leases.load()
        except ValueError as exc:
            return self._rejected(envelope, "disable", str(exc), failed=True)
        if lease is not None:
            return self._extend(envelope, lease, now, limit)
        try:
            backend = await detect(self.runner, self.settings.backend)
            snapshot = await backend.snapshot()
        except FirewallError as exc:
            return self._rejected(envelope, "disable", f"backend: {exc}", failed=True)
        self.leases.save_snapshot(snapshot)
        lease = Lease(
            request_id=str(command.request_id),
            actor=envelope.actor,
            role=command.authorization.role,
            reason=command.reason,
            backend=backend.name,
            disabled_at=now,
            expires_at=now + timedelta(seconds=command.lease_s),
            max_until=now + timedelta(seconds=limit),
        )
        self.leases.save(lease)
        try:
            await backend.open()
        except FirewallError as exc:
            return await self._open_failed(envelope, backend, snapshot, exc)
        self._lease_changed.set()
        seq, digest = self._record(
            envelope,
            command="disable",
            outcome="disabled",
            backend=backend.name,
            lease_s=command.lease_s,
            expires_at=lease.expires_at,
        )
        log.warning(
            "firewall_disabled",
            backend=backend.name,
            actor=envelope.actor,
            expires_at=lease.expires_at.isoformat(),
            reason=command.reason[:200],
        )
        return FirewallDisabled(
            request_id=command.request_id,
            node=self.settings.node,
            backend=backend.name,
            lease_expires_at=lease.expires_at,
            reason=command.reason,
            audit_seq=seq,
            audit_hash=digest,
        )

    async def _open_failed(
        self, envelope: Envelope[FirewallDisable], backend: Backend, snapshot: bytes, error: FirewallError
    ) -> FirewallRejected:
        try:
            await backend.restore(snapshot)
        except FirewallError as again:  # the lease stays: expiry keeps trying to restore
            self._lease_changed.set()
            return self._rejected(
                envelope,
                "disable",
                f"opening the firewall failed ({error}) and restoring it failed too ({again}); the agent "
                "keeps trying to restore it",
                failed=True,
            )
        self.leases.clear()
        return self._rejected(
            envelope,
            "disable",
            f"opening the firewall failed, it was restored as it was: {error}",
            failed=True,
        )

    def _extend(
        self, envelope: Envelope[FirewallDisable], lease: Lease, now: datetime, limit: float
    ) -> FirewallDisabled:
        command = envelope.payload
        ceiling = min(lease.max_until, lease.disabled_at + timedelta(seconds=limit))
        wanted = now + timedelta(seconds=command.lease_s)
        expires = max(lease.expires_at, min(wanted, ceiling))
        capped = wanted > ceiling
        updated = lease.extended(
            expires_at=expires,
            actor=envelope.actor,
            reason=command.reason,
            request_id=str(command.request_id),
        )
        self.leases.save(updated)
        self._lease_changed.set()
        seq, digest = self._record(
            envelope,
            command="disable",
            outcome="extended",
            backend=lease.backend,
            lease_s=command.lease_s,
            expires_at=expires,
            capped=capped,
        )
        log.warning(
            "firewall_lease_extended", expires_at=expires.isoformat(), capped=capped, actor=envelope.actor
        )
        return FirewallDisabled(
            request_id=command.request_id,
            node=self.settings.node,
            backend=lease.backend,
            lease_expires_at=expires,
            reason=command.reason,
            already_disabled=True,
            capped=capped,
            audit_seq=seq,
            audit_hash=digest,
        )

    async def _enable(self, envelope: Envelope[FirewallEnable]) -> Payload:
        command = envelope.payload
        refused = self._verify(envelope)
        if refused is not None:
            return self._rejected(envelope, "enable", refused)
        try:
            lease = self.leases.load()
        except ValueError as exc:
            return self._rejected(envelope, "enable", str(exc), failed=True)
        if lease is None:
            try:
                backend = await detect(self.runner, self.settings.backend)
            except FirewallError as exc:
                return self._rejected(envelope, "enable", f"backend: {exc}", failed=True)
            seq, digest = self._record(
                envelope, command="enable", outcome="already_enabled", backend=backend.name
            )
            return FirewallEnabled(
                request_id=command.request_id,
                node=self.settings.node,
                backend=backend.name,
                trigger="requested",
                already_enabled=True,
                audit_seq=seq,
                audit_hash=digest,
            )
        try:
            await self._restore(lease)
        except FirewallError as exc:
            return self._rejected(envelope, "enable", f"restoring the firewall failed: {exc}", failed=True)
        seq, digest = self._record(envelope, command="enable", outcome="enabled", backend=lease.backend)
        return FirewallEnabled(
            request_id=command.request_id,
            node=self.settings.node,
            backend=lease.backend,
            trigger="requested",
            audit_seq=seq,
            audit_hash=digest,
        )

    # -- restoring -----------------------------------------------------------------------

    async def _restore(self, lease: Lease) -> None:
        snapshot = self.leases.snapshot()
        if snapshot is None:
            raise FirewallError(f"the saved firewall {self.leases.snapshot_path} is missing")
        await BACKENDS[lease.backend](self.runner).restore(snapshot)
        self.leases.clear()
        self._lease_changed.set()
        log.warning("firewall_restored", backend=lease.backend)

    async def _restore_expired(self, lease: Lease, trigger: Trigger) -> bool:
        """Restore for expiry (or at start-up after it); False, logged, when the backend failed."""
        try:
            await self._restore(lease)
        except FirewallError as exc:
            log.error("restore_failed", trigger=trigger, error=str(exc)[:1000])
            return False
        seq, digest = self._record(
            None,
            command="enable",
            outcome="enabled",
            trigger=trigger,
            backend=lease.backend,
            lease_request_id=lease.request_id,
            lease_actor=lease.actor,
        )
        self.outbox.put(
            self.bus.wrap(
                FirewallEnabled(
                    request_id=None,
                    node=self.settings.node,
                    backend=lease.backend,
                    trigger=trigger,
                    audit_seq=seq,
                    audit_hash=digest,
                )
            )
        )
        return True

    async def _expiry_loop(self) -> None:
        """Restore when the lease ends, by this node's clock, whatever the broker or the deployer do;
        an unexpected error (a full disk, say) is logged and the loop goes on after a pause."""
        while not self._stop.is_set():
            try:
                await self._expiry_round()
            except Exception:
                log.exception("lease_expiry_round_failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.settings.restore_retry_s)

    async def _expiry_round(self) -> None:
        """One look at the lease: restore it if it ended, else wait until it ends or changes."""
        self._lease_changed.clear()
        try:
            lease = self.leases.load()
        except ValueError as exc:  # nothing to restore from automatically: said once per change
            log.error("lease_unreadable", error=str(exc))
            lease = None
        wait: float | None = None  # no lease: until one is written
        if lease is not None:
            left = (lease.expires_at - _now()).total_seconds()
            if left > 0:
                wait = min(left, 60.0)  # the clock may be set meanwhile: look again at least every minute
            else:
                async with self._lock:
                    current = self.leases.load()
                    if current is None or current.expires_at > _now():
                        return  # restored or extended meanwhile
                    if await self._restore_expired(current, "lease_expired"):
                        return
                wait = self.settings.restore_retry_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lease_changed.wait(), wait)

    # -- status --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        try:
            lease = self.leases.load()
        except ValueError as exc:
            return {"node": self.settings.node, "state": "unknown", "error": str(exc), "lease": None}
        return {
            "node": self.settings.node,
            "state": "disabled" if lease is not None else "enabled",
            "lease": lease.to_json() if lease is not None else None,
            "audit": {"seq": self.audit.seq, "hash": self.audit.last_hash},
        }
