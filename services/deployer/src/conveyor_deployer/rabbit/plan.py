"""Desired against live: what ``conveyor rabbit apply`` would create, change and delete, and doing it.

The live state is read through the management HTTP API. What is compared:

- vhosts of the file, and their limits; a live vhost not in the file is deleted (destructive when
  it holds queues);
- users (tags and password: the stored salted hash is checked against the secret), every live user
  not in the file deleted (destructive) except the management user, and ``guest`` removed where the
  profile says so (not counted as destructive: the file asks for it);
- permissions, exchanges (``amq.*`` and the default exchange aside) and policies of the file's vhosts;
- queues of the file (a queue whose arguments differ must be deleted and declared again:
  destructive, its messages are lost); live queues not in the file are left to whoever declared them
  (Conveyor's services declare their own) unless ``prune_queues``;
- bindings between exchanges and queues the file declares.

Changes that lose data or lock clients out are marked destructive; :func:`apply` refuses them
without ``allow_destructive``. Applying the plan and planning again gives an empty plan.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx

from conveyor_deployer.rabbit.desired import DesiredState

__all__ = [
    "Change",
    "Management",
    "ManagementError",
    "Plan",
    "Refused",
    "apply",
    "live_state",
    "make_plan",
    "password_matches",
]

Action = Literal["create", "update", "delete"]
_PHASE = {  # creates and updates in this order, deletes in the reverse
    "vhost": 0,
    "user": 1,
    "permission": 2,
    "limit": 3,
    "exchange": 4,
    "queue": 5,
    "binding": 6,
    "policy": 7,
}


class ManagementError(RuntimeError):
    """The management API refused a request or could not be reached; says which and why."""


def _q(value: str) -> str:
    return quote(value, safe="")


class Management:
    """The management HTTP API of one cluster, tried node by node until one answers."""

    def __init__(self, urls: Sequence[str], user: str, password: str, *, timeout: float = 15.0) -> None:
        if not urls:
            raise ManagementError("no management API URL")
        self.urls = list(urls)
        self._client = httpx.AsyncClient(auth=(user, password), timeout=timeout)
        self.user = user

    async def close(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        errors = []
        for url in self.urls:
            try:
                response = await self._client.request(method, f"{url.rstrip('/')}/api{path}", json=body)
            except httpx.HTTPError as exc:
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            if response.status_code in (401, 403):
                raise ManagementError(
                    f"{url} refused {self.user}: {response.status_code} {response.text[:200]}"
                )
            if response.is_error:
                raise ManagementError(
                    f"{method} {path} at {url}: {response.status_code} {response.text[:300]}"
                )
            return response.json() if response.content else None
        raise ManagementError("no management API answered: " + "; ".join(errors))

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    body: Any = None


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str
    key: str
    detail: str = ""
    destructive: bool = False
    ops: tuple[Op, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "key": self.key,
            "detail": self.detail,
            "destructive": self.destructive,
        }

    def order(self) -> tuple[int, int]:
        phase = _PHASE[self.kind]
        return (1, -phase) if self.action == "delete" else (0, phase)


@dataclass
class Plan:
    env: str
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """What keeps the plan from being applied at all (a password that is not set...)."""

    @property
    def destructive(self) -> list[Change]:
        return [c for c in self.changes if c.destructive]

    def as_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "changes": [c.as_dict() for c in sorted(self.changes, key=Change.order)],
            "problems": list(self.problems),
            "destructive": len(self.destructive),
        }


def password_matches(stored_hash: str, algorithm: str, password: str) -> bool:
    """Whether ``password`` is the one RabbitMQ stored as ``stored_hash`` (4-byte salt + digest)."""
    names = {
        "rabbit_password_hashing_sha256": "sha256",
        "rabbit_password_hashing_sha512": "sha512",
        "rabbit_password_hashing_md5": "md5",
    }
    try:
        raw = base64.b64decode(stored_hash)
    except ValueError:
        return False
    if algorithm not in names or len(raw) < 5:
        return False
    salt, digest = raw[:4], raw[4:]
    return hmac.compare_digest(hashlib.new(names[algorithm], salt + password.encode()).digest(), digest)


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(sorted(t for t in value.split(",") if t))
    return tuple(sorted(value or ()))


def _differs(fields: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(
        f"{name}: {json.dumps(live, sort_keys=True)} → {json.dumps(want, sort_keys=True)}"
        for name, (live, want) in fields.items()
        if live != want
    )


class _Planner:
    def __init__(self, state: DesiredState, live: dict[str, Any], environ: Mapping[str, str] | None) -> None:
        self.state, self.live, self.environ = state, live, environ
        self.plan = Plan(state.env)
        self.vhosts = {v.name for v in state.vhosts}

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.plan.changes.append(Change(*args, **kwargs))

    def vhosts_and_limits(self) -> None:
        live = {v["name"]: v for v in self.live["vhosts"]}
        limits = {entry["vhost"]: entry.get("value") or {} for entry in self.live["limits"]}
        for vhost in self.state.vhosts:
            path = f"/vhosts/{_q(vhost.name)}"
            body = {"description": vhost.description, "tags": ""}
            if vhost.name not in live:
                self.add("create", "vhost", vhost.name, ops=(Op("PUT", path, body),))
            elif (live[vhost.name].get("description") or "") != vhost.description:
                self.add("update", "vhost", vhost.name, "description", ops=(Op("PUT", path, body),))
            want, have = vhost.limits.as_dict(), limits.get(vhost.name, {})
            for name in sorted(set(want) | set(have)):
                limit_path = f"/vhost-limits/{_q(vhost.name)}/{name}"
                if name not in want:
                    self.add("delete", "limit", f"{vhost.name}/{name}", ops=(Op("DELETE", limit_path),))
                elif have.get(name) != want[name]:
                    action: Action = "create" if name not in have else "update"
                    detail = f"{have.get(name)} → {want[name]}"
                    self.add(
                        action,
                        "limit",
                        f"{vhost.name}/{name}",
                        detail,
                        ops=(Op("PUT", limit_path, {"value": want[name]}),),
                    )
        for name in sorted(set(live) - self.vhosts):
            queues = [q for q in self.live["queues"] if q["vhost"] == name]
            messages = sum(q.get("messages") or 0 for q in queues)
            detail = f"{len(queues)} queue(s), {messages} message(s) lost" if queues else "it holds no queue"
            path = f"/vhosts/{_q(name)}"
            self.add("delete", "vhost", name, detail, destructive=bool(queues), ops=(Op("DELETE", path),))

    def users(self) -> None:
        live = {u["name"]: u for u in self.live["users"]}
        for user in self.state.users:
            password = user.read(self.environ)
            path = f"/users/{_q(user.name)}"
            if password is None:
                self.plan.problems.append(f"user {user.name}: its password ({user.describe()}) is not set")
                continue
            body = {"password": password, "tags": ",".join(user.tags)}
            have = live.get(user.name)
            if have is None:
                self.add("create", "user", user.name, f"tags {list(user.tags)}", ops=(Op("PUT", path, body),))
                continue
            reasons = []
            if _tags(have.get("tags")) != tuple(sorted(user.tags)):
                reasons.append(f"tags {list(_tags(have.get('tags')))} → {sorted(user.tags)}")
            if not password_matches(
                have.get("password_hash", ""), have.get("hashing_algorithm", ""), password
            ):
                reasons.append(f"password (from {user.describe()})")
            if reasons:
                self.add("update", "user", user.name, "; ".join(reasons), ops=(Op("PUT", path, body),))
        keep = {u.name for u in self.state.users} | {self.state.management.user}
        for name in sorted(set(live) - keep):
            path = f"/users/{_q(name)}"
            if name == "guest":
                if self.state.guest_removed():
                    self.add(
                        "delete",
                        "user",
                        name,
                        f"the {self.state.profile} profile removes guest",
                        ops=(Op("DELETE", path),),
                    )
                continue
            self.add(
                "delete",
                "user",
                name,
                "clients using it are locked out",
                destructive=True,
                ops=(Op("DELETE", path),),
            )

    def permissions(self) -> None:
        live = {(p["vhost"], p["user"]): p for p in self.live["permissions"] if p["vhost"] in self.vhosts}
        kept = {u.name for u in self.state.users} | {self.state.management.user}
        for want in self.state.permissions:
            path = f"/permissions/{_q(want.vhost)}/{_q(want.user)}"
            body = {"configure": want.configure, "write": want.write, "read": want.read}
            have = live.pop((want.vhost, want.user), None)
            if have is None:
                self.add("create", "permission", f"{want.user}@{want.vhost}", ops=(Op("PUT", path, body),))
            elif detail := _differs({k: (have.get(k), v) for k, v in body.items()}):
                self.add(
                    "update", "permission", f"{want.user}@{want.vhost}", detail, ops=(Op("PUT", path, body),)
                )
        for (vhost, user), _ in sorted(live.items()):
            if user not in kept:
                continue  # deleted with its user, or guest left alone where the profile keeps it
            path = f"/permissions/{_q(vhost)}/{_q(user)}"
            self.add("delete", "permission", f"{user}@{vhost}", destructive=True, ops=(Op("DELETE", path),))

    def exchanges(self) -> None:
        live = {
            (e["vhost"], e["name"]): e
            for e in self.live["exchanges"]
            if e["vhost"] in self.vhosts and e["name"] and not e["name"].startswith("amq.")
        }
        for want in self.state.exchanges:
            path = f"/exchanges/{_q(want.vhost)}/{_q(want.name)}"
            body = {
                "type": want.type,
                "durable": want.durable,
                "auto_delete": want.auto_delete,
                "internal": want.internal,
                "arguments": want.arguments,
            }
            have = live.pop((want.vhost, want.name), None)
            key = f"{want.vhost}/{want.name}"
            if have is None:
                self.add("create", "exchange", key, want.type, ops=(Op("PUT", path, body),))
            elif detail := _differs({k: (have.get(k), v) for k, v in body.items()}):
                self.add(
                    "update",
                    "exchange",
                    key,
                    f"{detail} (deleted and declared again; its bindings go)",
                    destructive=True,
                    ops=(Op("DELETE", path), Op("PUT", path, body)),
                )
        for (vhost, name), _ in sorted(live.items()):
            path = f"/exchanges/{_q(vhost)}/{_q(name)}"
            self.add(
                "delete",
                "exchange",
                f"{vhost}/{name}",
                "its bindings go too",
                destructive=True,
                ops=(Op("DELETE", path),),
            )

    def queues(self) -> None:
        live = {
            (q["vhost"], q["name"]): q
            for q in self.live["queues"]
            if q["vhost"] in self.vhosts and not q.get("exclusive")
        }
        for want in self.state.queues:
            path = f"/queues/{_q(want.vhost)}/{_q(want.name)}"
            body = {
                "durable": want.durable,
                "auto_delete": want.auto_delete,
                "arguments": want.declared_arguments(),
            }
            have = live.pop((want.vhost, want.name), None)
            key = f"{want.vhost}/{want.name}"
            if have is None:
                self.add("create", "queue", key, want.type, ops=(Op("PUT", path, body),))
                continue
            fields = {
                "durable": (have.get("durable"), want.durable),
                "auto_delete": (have.get("auto_delete"), want.auto_delete),
                "arguments": (have.get("arguments") or {}, want.declared_arguments()),
            }
            if detail := _differs(fields):
                lost = f"; {have.get('messages', 0)} message(s) lost" if have.get("messages") else ""
                self.add(
                    "update",
                    "queue",
                    key,
                    f"{detail} (deleted and declared again{lost})",
                    destructive=True,
                    ops=(Op("DELETE", path), Op("PUT", path, body)),
                )
        if self.state.prune_queues:
            for (vhost, name), have in sorted(live.items()):
                path = f"/queues/{_q(vhost)}/{_q(name)}"
                self.add(
                    "delete",
                    "queue",
                    f"{vhost}/{name}",
                    f"{have.get('messages', 0)} message(s) lost",
                    destructive=True,
                    ops=(Op("DELETE", path),),
                )

    def bindings(self) -> None:
        exchanges = {(e.vhost, e.name) for e in self.state.exchanges}
        queues = {(q.vhost, q.name) for q in self.state.queues}

        def managed(vhost: str, source: str, destination: str, kind: str) -> bool:
            target = queues if kind == "queue" else exchanges
            return (vhost, source) in exchanges and (vhost, destination) in target

        live: dict[tuple[str, str, str, str, str, str], dict[str, Any]] = {}
        for b in self.live["bindings"]:
            if (
                b["vhost"] in self.vhosts
                and b["source"]
                and managed(b["vhost"], b["source"], b["destination"], b["destination_type"])
            ):
                key = (
                    b["vhost"],
                    b["source"],
                    b["destination_type"],
                    b["destination"],
                    b["routing_key"],
                    json.dumps(b.get("arguments") or {}, sort_keys=True),
                )
                live[key] = b
        kinds = {"queue": "q", "exchange": "e"}
        for want in self.state.bindings:
            key = (
                want.vhost,
                want.source,
                want.destination_type,
                want.destination,
                want.routing_key,
                json.dumps(want.arguments, sort_keys=True),
            )
            if live.pop(key, None) is None:
                kind = kinds[want.destination_type]
                path = f"/bindings/{_q(want.vhost)}/e/{_q(want.source)}/{kind}/{_q(want.destination)}"
                body = {"routing_key": want.routing_key, "arguments": want.arguments}
                label = f"{want.vhost}/{want.source} → {want.destination} ({want.routing_key or '-'})"
                self.add("create", "binding", label, ops=(Op("POST", path, body),))
        for key, b in sorted(live.items()):
            vhost, source, kind, destination, routing_key, _ = key
            props = _q(b["properties_key"])
            path = f"/bindings/{_q(vhost)}/e/{_q(source)}/{kinds[kind]}/{_q(destination)}/{props}"
            self.add(
                "delete",
                "binding",
                f"{vhost}/{source} → {destination} ({routing_key or '-'})",
                "messages stop flowing that way",
                destructive=True,
                ops=(Op("DELETE", path),),
            )

    def policies(self) -> None:
        live = {(p["vhost"], p["name"]): p for p in self.live["policies"] if p["vhost"] in self.vhosts}
        for want in self.state.policies:
            path = f"/policies/{_q(want.vhost)}/{_q(want.name)}"
            body = {
                "pattern": want.pattern,
                "definition": want.definition,
                "priority": want.priority,
                "apply-to": want.apply_to,
            }
            have = live.pop((want.vhost, want.name), None)
            key = f"{want.vhost}/{want.name}"
            if have is None:
                self.add("create", "policy", key, ops=(Op("PUT", path, body),))
            elif detail := _differs({k: (have.get(k), v) for k, v in body.items()}):
                self.add("update", "policy", key, detail, ops=(Op("PUT", path, body),))
        for (vhost, name), _ in sorted(live.items()):
            self.add(
                "delete",
                "policy",
                f"{vhost}/{name}",
                ops=(Op("DELETE", f"/policies/{_q(vhost)}/{_q(name)}"),),
            )


async def live_state(api: Management) -> dict[str, Any]:
    """Everything the plan compares, read through the management API."""
    queue_columns = "name,vhost,durable,auto_delete,exclusive,arguments,type,messages"
    return {
        "vhosts": await api.get("/vhosts"),
        "limits": await api.get("/vhost-limits"),
        "users": await api.get("/users"),
        "permissions": await api.get("/permissions"),
        "exchanges": await api.get("/exchanges"),
        "queues": await api.get(f"/queues?columns={queue_columns}"),
        "bindings": await api.get("/bindings"),
        "policies": await api.get("/policies"),
    }


async def make_plan(
    state: DesiredState, api: Management, *, environ: Mapping[str, str] | None = None
) -> Plan:
    planner = _Planner(state, await live_state(api), environ)
    planner.vhosts_and_limits()
    planner.users()
    planner.permissions()
    planner.exchanges()
    planner.queues()
    planner.bindings()
    planner.policies()
    planner.plan.changes.sort(key=Change.order)
    return planner.plan


class Refused(RuntimeError):
    """The plan cannot be applied as it is (destructive changes without the flag, missing secrets)."""


async def apply(plan: Plan, api: Management, *, allow_destructive: bool = False) -> list[Change]:
    """Carry out ``plan`` in order (creates before what needs them, deletes after); the changes made.
    ``Refused`` before changing anything when the plan has problems or, without
    ``allow_destructive``, destructive changes."""
    if plan.problems:
        raise Refused("nothing applied: " + "; ".join(plan.problems))
    if plan.destructive and not allow_destructive:
        listed = ", ".join(f"{c.action} {c.kind} {c.key}" for c in plan.destructive)
        raise Refused(f"nothing applied: destructive changes need --allow-destructive: {listed}")
    done = []
    for change in sorted(plan.changes, key=Change.order):
        for op in change.ops:
            await api.request(op.method, op.path, op.body)
        done.append(change)
    return done
