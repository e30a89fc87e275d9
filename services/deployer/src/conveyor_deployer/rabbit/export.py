"""``conveyor rabbit export``: a cluster's live state in the desired-state format.

Everything the plan compares is written out explicitly (vhosts without ``conveyor: true``, Conveyor's
exchanges, policies, users and permissions as they are), so planning the exported file against the
same cluster shows no change. Passwords are never exported: each user gets ``password_env:
CONVEYOR_RABBIT_<ENV>_<USER>_PASSWORD`` (the naming the Conveyor service users have anyway).
"""

from __future__ import annotations

from typing import Any

from conveyor_deployer.rabbit.desired import DesiredState
from conveyor_deployer.rabbit.plan import Management, live_state

__all__ = ["export"]

_PROFILE_BY_SIZE = {1: "dev", 3: "qa", 5: "prod"}


def _env_var(env: str, user: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in user.removeprefix("conveyor-"))
    return f"CONVEYOR_RABBIT_{env}_{cleaned}_PASSWORD".upper()


def _tags(value: Any) -> list[str]:
    if isinstance(value, str):
        return sorted(t for t in value.split(",") if t)
    return sorted(value or ())


async def export(api: Management, env: str, *, current: DesiredState | None = None) -> dict[str, Any]:
    """The live state of the cluster behind ``api`` as a desired-state document (a dict to dump as
    YAML). ``current``: the environment's file, whose cluster, management, tuning and TLS sections are
    kept (they are not in the management API)."""
    live = await live_state(api)
    nodes = await api.get("/nodes")
    if current is not None:
        head: dict[str, Any] = current.model_dump(
            mode="json",
            by_alias=True,
            exclude_defaults=True,
            include={"env", "profile", "cluster", "management", "tuning", "tls", "remove_guest", "poll_s"},
        )
        head["env"], head["profile"] = current.env, current.profile
    else:
        head = {
            "env": env,
            "profile": _PROFILE_BY_SIZE.get(len(nodes), "qa"),
            "cluster": {"nodes": [{"name": n["name"]} for n in nodes]},
            "management": {"user": api.user, "url": api.urls[0], "password_env": _env_var(env, "admin")},
        }
    limits = {entry["vhost"]: entry.get("value") or {} for entry in live["limits"]}
    vhosts = [
        {"name": v["name"], **({"description": v["description"]} if v.get("description") else {})}
        | ({"limits": limits[v["name"]]} if limits.get(v["name"]) else {})
        for v in live["vhosts"]
    ]
    users = [
        {"name": u["name"], "password_env": _env_var(env, u["name"])}
        | ({"tags": _tags(u["tags"])} if _tags(u["tags"]) else {})
        for u in live["users"]
        if u["name"] != api.user
    ]
    permissions = [
        {k: p[k] for k in ("user", "vhost", "configure", "write", "read")} for p in live["permissions"]
    ]
    exchanges = [
        {
            "vhost": e["vhost"],
            "name": e["name"],
            "type": e["type"],
            **({"durable": False} if not e["durable"] else {}),
            **({"auto_delete": True} if e["auto_delete"] else {}),
            **({"internal": True} if e["internal"] else {}),
            **({"arguments": e["arguments"]} if e.get("arguments") else {}),
        }
        for e in live["exchanges"]
        if e["name"] and not e["name"].startswith("amq.")
    ]
    queues = []
    for q in live["queues"]:
        if q.get("exclusive"):
            continue
        arguments = dict(q.get("arguments") or {})
        kind = arguments.pop("x-queue-type", None) or q.get("type") or "classic"
        queues.append(
            {"vhost": q["vhost"], "name": q["name"], "type": kind}
            | ({"durable": False} if not q["durable"] else {})
            | ({"auto_delete": True} if q["auto_delete"] else {})
            | ({"arguments": arguments} if arguments else {})
        )
    bindings = [
        {
            "vhost": b["vhost"],
            "source": b["source"],
            "destination": b["destination"],
            "destination_type": b["destination_type"],
            "routing_key": b["routing_key"],
        }
        | ({"arguments": b["arguments"]} if b.get("arguments") else {})
        for b in live["bindings"]
        if b["source"]
    ]
    policies = [
        {
            "vhost": p["vhost"],
            "name": p["name"],
            "pattern": p["pattern"],
            "apply-to": p["apply-to"],
            "priority": p["priority"],
            "definition": p["definition"],
        }
        for p in live["policies"]
    ]
    return head | {
        "vhosts": vhosts,
        "users": users,
        "permissions": permissions,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
        "policies": policies,
        "prune_queues": True,
    }
