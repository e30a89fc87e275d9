"""Firewall requests: targets resolved, the policy applied, one signed command per node, the answers.

A request names servers (by inventory name) or an environment with labels, an action (disable or
enable), for disable a lease and always a reason. The policy (``FIREWALL_POLICY``) decides per
environment: the caller's role must be listed, the lease must not exceed ``max_lease_s``, and with
``approvals: 1`` a disable waits for a second person with an allowed role. A request the policy
refuses changes nothing, as a whole, and is audited (``firewall.rejected`` per node, from the
deployer). An allowed one becomes one ``firewall.disable``/``firewall.enable`` per node, signed with
the caller as actor and their role, valid only a little longer than the deployer waits for the
answers, so a node that comes back later refuses it as expired instead of acting on it unseen.

The deployer keeps each node's last known firewall state from the agents' events (``status``), and
``verify_audit`` compares a node's hash-chained audit log, read over SSH, with the records version-db
holds of it.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx

from conveyor.auditlog import verify
from conveyor.bus import Bus
from conveyor.bus.outbox import Outbox
from conveyor.contracts import Envelope
from conveyor.contracts.catalogue import (
    FirewallDisable,
    FirewallDisabled,
    FirewallEnable,
    FirewallEnabled,
    FirewallRejected,
)
from conveyor.observability import get_logger
from conveyor.pkgvcs.storage import atomic_write
from conveyor.signing import SigningKey, unsigned_authorization
from conveyor_deployer.config import Role, Settings
from conveyor_deployer.inventory import Inventory, Node
from conveyor_deployer.nodes import Announce, NodeAccess
from conveyor_deployer.ssh import SshError

__all__ = ["FirewallControl", "FirewallRefused"]

log = get_logger(__name__)

Action = Literal["disable", "enable"]


class FirewallRefused(Exception):
    """A request that cannot be carried out as asked (no targets, unknown request, not the approver…)."""

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class FirewallRequest:
    id: str
    action: Action
    requested_by: str
    role: str
    reason: str
    lease_s: int | None
    targets: list[tuple[str, str]]  # (env, node)
    unknown: list[str]
    created_at: str
    state: str = "new"  # awaiting_approval, refused, sent, done, lapsed
    approved_by: str | None = None
    decision: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)


class FirewallControl:
    def __init__(
        self,
        settings: Settings,
        inventory: Inventory,
        buses: dict[str, Bus],
        outboxes: dict[str, Outbox],
        *,
        key: Callable[[], SigningKey | None],
        nodes: NodeAccess,
        announce: Announce,
    ) -> None:
        self.settings = settings
        self.inventory = inventory
        self.buses = buses
        self.outboxes = outboxes
        self.key = key
        self.nodes = nodes
        self.announce = announce
        self.directory = settings.state_dir / "firewall"
        (self.directory / "requests").mkdir(parents=True, exist_ok=True)
        self.state_file = self.directory / "nodes.json"
        self._waiters: dict[tuple[str, str], asyncio.Future[Envelope[Any]]] = {}

    # -- targets and policy ----------------------------------------------------------------

    def resolve(
        self, servers: list[str] | None, env: str | None, labels: dict[str, str]
    ) -> tuple[list[tuple[str, Node]], list[str]]:
        """The nodes named (each once, in the order given; unknown names returned apart) or the env's
        nodes with ``labels``."""
        if servers:
            found: dict[str, tuple[str, Node]] = {}
            unknown: list[str] = []
            for raw in servers:
                name = raw.strip()
                if not name or name in found or name in unknown:
                    continue
                try:
                    env_name, node = self.inventory.node(name)
                except KeyError:
                    unknown.append(name)
                    continue
                if env is not None and env_name != env:
                    unknown.append(name)
                    continue
                found[name] = (env_name, node)
            return list(found.values()), unknown
        if env is None:
            raise FirewallRefused("name the servers or an environment", status=422)
        try:
            nodes = self.inventory.env(env).nodes()
        except KeyError as exc:
            raise FirewallRefused(str(exc.args[0]), status=404) from None
        return [(env, n) for n in nodes if n.matches(labels)], []

    def decide(self, role: str, action: Action, envs: set[str], lease_s: int | None) -> tuple[bool, str, int]:
        """(allowed, why, approvals needed) for a caller with ``role``."""
        approvals = 0
        for env in sorted(envs):
            policy = self.settings.firewall_policy.get(env)
            if policy is None:
                return (
                    False,
                    f"policy: no firewall policy for env {env}: firewall requests there are refused",
                    0,
                )
            if role not in {r.value for r in policy.roles}:
                allowed = ", ".join(r.value for r in policy.roles)
                return False, f"policy: role {role} may not change firewalls in {env} (allowed: {allowed})", 0
            if action == "disable":
                if lease_s is None or lease_s <= 0:
                    return False, "a disable needs a lease (--for)", 0
                if lease_s > policy.max_lease_s:
                    return (
                        False,
                        f"policy: a lease of {lease_s}s is longer than {env} allows ({policy.max_lease_s}s)",
                        0,
                    )
                approvals = max(approvals, policy.approvals)
        return True, "allowed by the policy", approvals

    # -- requests --------------------------------------------------------------------------

    async def request(
        self,
        *,
        caller: str,
        role: Role,
        action: Action,
        servers: list[str] | None,
        env: str | None,
        labels: dict[str, str],
        lease_s: int | None,
        reason: str,
        dry_run: bool,
    ) -> dict[str, Any]:
        targets, unknown = self.resolve(servers, env, labels)
        if not targets:
            raise FirewallRefused(
                "no such servers" + (f": {', '.join(unknown)}" if unknown else " (no node matches)"),
                status=404,
            )
        allowed, why, approvals = self.decide(role.value, action, {e for e, _ in targets}, lease_s)
        request = FirewallRequest(
            id=str(uuid.uuid4()),
            action=action,
            requested_by=caller,
            role=role.value,
            reason=reason,
            lease_s=lease_s if action == "disable" else None,
            targets=[(e, n.name) for e, n in targets],
            unknown=unknown,
            created_at=datetime.now(UTC).isoformat(),
            decision=why,
        )
        if dry_run:
            request.state = "dry_run"
            verb = "would disable" if action == "disable" else "would enable"
            request.results = [
                {"env": e, "node": n, "result": verb if allowed else "refused", "detail": why}
                for e, n in request.targets
            ]
            if allowed and approvals:
                request.decision += f"; needs {approvals} approval by another person first"
            return self._view(request, allowed=allowed, approvals=approvals)
        if not allowed:
            request.state = "refused"
            request.results = [
                {"env": e, "node": n, "result": "refused", "detail": why} for e, n in request.targets
            ]
            for env_name, node in request.targets:
                self.announce(
                    env_name,
                    FirewallRejected(request_id=uuid.UUID(request.id), node=node, command=action, reason=why),
                    actor=caller,
                )
            self._save(request)
            log.warning("firewall_request_refused", request=request.id, actor=caller, reason=why)
            return self._view(request, allowed=False, approvals=0)
        if approvals:
            request.state = "awaiting_approval"
            request.results = [
                {"env": e, "node": n, "result": "awaiting approval", "detail": ""} for e, n in request.targets
            ]
            self._save(request)
            log.info("firewall_request_awaits_approval", request=request.id, actor=caller)
            return self._view(request, allowed=True, approvals=approvals)
        await self._carry_out(request)
        return self._view(request, allowed=True, approvals=0)

    async def approve(self, request_id: str, *, caller: str, role: Role) -> dict[str, Any]:
        request = self._load(request_id)
        if request.state != "awaiting_approval":
            raise FirewallRefused(f"firewall request {request_id} is {request.state}, not awaiting approval")
        if caller == request.requested_by:
            raise FirewallRefused(
                "a firewall request must be approved by someone other than its requester", status=403
            )
        allowed, why, _ = self.decide(
            role.value, request.action, {e for e, _ in request.targets}, request.lease_s
        )
        if not allowed:
            raise FirewallRefused(f"you may not approve it: {why}", status=403)
        age = datetime.now(UTC) - datetime.fromisoformat(request.created_at)
        if age > timedelta(seconds=self.settings.firewall_approval_ttl_s):
            request.state = "lapsed"
            self._save(request)
            raise FirewallRefused(f"firewall request {request_id} lapsed; ask again")
        request.approved_by = caller
        await self._carry_out(request)
        return self._view(request, allowed=True, approvals=1)

    def get(self, request_id: str) -> dict[str, Any]:
        request = self._load(request_id)
        return self._view(request, allowed=request.state not in ("refused",), approvals=0)

    async def _carry_out(self, request: FirewallRequest) -> None:
        signing = self.key()
        if signing is None:
            raise FirewallRefused(
                f"no signing key at {self.settings.signing_key_file}: run `conveyor keys init`"
            )
        request.state = "sent"
        self._save(request)
        policy_max = {e: p.max_lease_s for e, p in self.settings.firewall_policy.items()}
        waits = []
        for env_name, node in request.targets:
            command: FirewallDisable | FirewallEnable
            if request.action == "disable":
                assert request.lease_s is not None
                command = FirewallDisable(
                    request_id=uuid.UUID(request.id),
                    node=node,
                    lease_s=request.lease_s,
                    reason=request.reason,
                    policy_max_s=policy_max[env_name],
                    approved_by=request.approved_by,
                    authorization=unsigned_authorization(),
                )
            else:
                command = FirewallEnable(
                    request_id=uuid.UUID(request.id),
                    node=node,
                    reason=request.reason,
                    authorization=unsigned_authorization(),
                )
            future: asyncio.Future[Envelope[Any]] = asyncio.get_running_loop().create_future()
            self._waiters[(request.id, node)] = future
            envelope = signing.sign(
                self.buses[env_name].wrap(
                    command, actor=request.requested_by, correlation_id=uuid.UUID(request.id)
                ),
                role=request.role,
                ttl_s=self.settings.firewall_reply_timeout_s,
            )
            self.outboxes[env_name].put(envelope)
            waits.append(self._answer(request, env_name, node, future))
        log.info("firewall_commands_sent", request=request.id, action=request.action, nodes=len(waits))
        request.results = list(await asyncio.gather(*waits))
        request.state = "done"
        self._save(request)

    async def _answer(
        self, request: FirewallRequest, env: str, node: str, future: asyncio.Future[Envelope[Any]]
    ) -> dict[str, Any]:
        row: dict[str, Any] = {"env": env, "node": node}
        try:
            reply = await asyncio.wait_for(future, self.settings.firewall_reply_timeout_s)
        except TimeoutError:
            return row | {
                "result": "unreachable",
                "detail": f"no answer within {self.settings.firewall_reply_timeout_s:g}s; its command "
                "expired then (the node allows 60 s of clock skew) and a node that gets it later refuses it",
            }
        finally:
            self._waiters.pop((request.id, node), None)
        event = reply.payload
        if isinstance(event, FirewallDisabled):
            result = "already disabled, lease extended" if event.already_disabled else "disabled"
            if event.capped:
                result += " (capped at the maximum)"
            return row | {
                "result": result,
                "detail": "",
                "backend": event.backend,
                "lease_expires_at": event.lease_expires_at.isoformat(),
            }
        if isinstance(event, FirewallEnabled):
            result = "already enabled" if event.already_enabled else "enabled"
            return row | {"result": result, "detail": "", "backend": event.backend}
        assert isinstance(event, FirewallRejected)
        return row | {"result": "failed" if event.failed else "refused", "detail": event.reason}

    # -- events ----------------------------------------------------------------------------

    async def on_event(self, envelope: Envelope[Any]) -> None:
        """An agent's answer or report: the node's state recorded, a waiting request answered."""
        event = envelope.payload
        if envelope.source == self.settings.service_name:
            return  # the deployer's own policy refusals
        state = self._states()
        now = envelope.occurred_at.isoformat()
        if isinstance(event, FirewallDisabled):
            state[event.node] = {
                "state": "disabled",
                "backend": event.backend,
                "lease_expires_at": event.lease_expires_at.isoformat(),
                "actor": envelope.actor,
                "reason": event.reason,
                "updated_at": now,
            }
        elif isinstance(event, FirewallEnabled):
            state[event.node] = {
                "state": "enabled",
                "backend": event.backend,
                "lease_expires_at": None,
                "actor": envelope.actor if event.trigger == "requested" else None,
                "reason": {"requested": "requested", "lease_expired": "lease expired"}.get(
                    event.trigger, "restored at agent start"
                ),
                "updated_at": now,
            }
        elif isinstance(event, FirewallRejected) and event.failed:  # the agent says how it left it
            state[event.node] = {
                **state.get(event.node, {}),
                "state": "unknown (a change failed)",
                "reason": event.reason[:300],
                "updated_at": now,
            }
        self._save_states(state)
        request_id = str(getattr(event, "request_id", None))
        future = self._waiters.get((request_id, event.node))
        if future is not None and not future.done():
            future.set_result(envelope)

    def status(self, env: str | None) -> list[dict[str, Any]]:
        state = self._states()
        rows = []
        now = datetime.now(UTC)
        for env_name, node in self.inventory.all_nodes():
            if env is not None and env_name != env:
                continue
            known = state.get(node.name, {})
            row = {"env": env_name, "node": node.name, "state": known.get("state", "unknown"), **known}
            expires = known.get("lease_expires_at")
            if row["state"] == "disabled" and expires and datetime.fromisoformat(expires) < now:
                row["state"] = "disabled (lease expired, restore not reported yet)"
            rows.append(row)
        return rows

    # -- audit -----------------------------------------------------------------------------

    async def verify_audit(self, node_name: str) -> dict[str, Any]:
        """The node's audit log (over SSH) checked as a chain and against version-db's copies."""
        try:
            env, node = self.inventory.node(node_name)
        except KeyError as exc:
            raise FirewallRefused(str(exc.args[0]), status=404) from None
        path = self.settings.firewall_audit_file.replace("{node}", node_name)
        try:
            text = await self.nodes.run(node, f"cat {shlex.quote(path)}")
        except SshError as exc:
            raise FirewallRefused(f"cannot read {path} on {node_name}: {exc}", status=502) from None
        anchors = await self._anchors(node_name)
        report = verify(text.splitlines(), anchors)
        return {
            "node": node_name,
            "env": env,
            "file": path,
            "records": report.records,
            "last_seq": report.last_seq,
            "anchors": len(anchors),
            "intact": report.intact,
            "problems": report.problems,
        }

    async def _anchors(self, node: str) -> dict[int, str]:
        token = self.settings.artifact_store_token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        anchors: dict[int, str] = {}
        async with httpx.AsyncClient(
            base_url=self.settings.artifact_store_url, headers=headers, timeout=30
        ) as client:
            for action in ("firewall.disabled", "firewall.enabled", "firewall.rejected"):
                offset: int | None = 0
                while offset is not None:
                    try:
                        response = await client.get(
                            "/audit",
                            params={"action": action, "target": node, "limit": 500, "offset": offset},
                        )
                        response.raise_for_status()
                    except httpx.HTTPError as exc:
                        raise FirewallRefused(
                            f"version-db's audit log cannot be read: {exc}", status=502
                        ) from None
                    page = response.json()
                    for item in page["items"]:
                        seq, digest = item["detail"].get("audit_seq"), item["detail"].get("audit_hash")
                        if seq is not None and digest:
                            anchors[int(seq)] = str(digest)
                    offset = page.get("next_offset")
        return anchors

    # -- files -----------------------------------------------------------------------------

    def _view(self, request: FirewallRequest, *, allowed: bool, approvals: int) -> dict[str, Any]:
        return asdict(request) | {"allowed": allowed, "approvals_needed": approvals}

    def _path(self, request_id: str) -> Path:
        try:
            uuid.UUID(request_id)
        except ValueError:
            raise FirewallRefused(f"{request_id!r} is not a request id", status=404) from None
        return self.directory / "requests" / f"{request_id}.json"

    def _save(self, request: FirewallRequest) -> None:
        atomic_write(self._path(request.id), json.dumps(asdict(request), indent=2).encode())

    def _load(self, request_id: str) -> FirewallRequest:
        try:
            data = json.loads(self._path(request_id).read_text())
        except FileNotFoundError:
            raise FirewallRefused(f"no firewall request {request_id}", status=404) from None
        data["targets"] = [tuple(t) for t in data["targets"]]
        return FirewallRequest(**data)

    def _states(self) -> dict[str, dict[str, Any]]:
        try:
            data: dict[str, dict[str, Any]] = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        return data

    def _save_states(self, state: dict[str, dict[str, Any]]) -> None:
        atomic_write(self.state_file, json.dumps(state, indent=2, sort_keys=True).encode())
