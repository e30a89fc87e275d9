"""Cluster control: status through the management API; rolling restart and user rotation.

A rolling restart goes one node at a time, over SSH to the host the node runs on (through the
deployer's SSH, host keys checked), with the cluster's ``cli_prefix`` (e.g. ``sudo -n``):

1. ``rabbitmq-upgrade await_online_quorum_plus_one`` — stopping this node leaves every quorum queue
   its quorum (refused, and the restart stops, when it would not);
2. ``rabbitmq-upgrade drain`` — maintenance mode: clients move to the other nodes, quorum queue
   leaders are transferred away;
3. the cluster's ``restart_command`` (default ``systemctl restart rabbitmq-server``);
4. ``rabbitmqctl await_startup``, then ``rabbitmq-upgrade revive``;
5. wait until the management API shows the node running and every quorum queue with all its members
   online, before the next node.

After the last node, ``rabbitmq-queues rebalance quorum`` spreads the queue leaders again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from conveyor.observability import get_logger
from conveyor_deployer.rabbit.desired import ClusterNode, DesiredState
from conveyor_deployer.rabbit.plan import Management, Refused, password_matches

__all__ = ["RestartFailed", "Runner", "cluster_status", "quorum_health", "rolling_restart", "rotate_user"]

log = get_logger(__name__)

Runner = Callable[[ClusterNode, list[str]], Awaitable[str]]
"""Runs a command on the host of a cluster node; its standard output (raises on failure)."""


class RestartFailed(RuntimeError):
    pass


def _version(node: dict[str, Any]) -> str | None:
    for app in node.get("applications") or []:
        if app.get("name") == "rabbit":
            return str(app.get("version"))
    return None


async def quorum_health(api: Management) -> list[dict[str, Any]]:
    """Every quorum queue: members, online members, leader."""
    queues = await api.get("/queues?columns=name,vhost,type,members,online,leader,messages")
    return [
        {
            "vhost": q["vhost"],
            "name": q["name"],
            "members": sorted(q.get("members") or []),
            "online": sorted(q.get("online") or []),
            "leader": q.get("leader"),
            "messages": q.get("messages"),
        }
        for q in queues
        if q.get("type") == "quorum"
    ]


async def cluster_status(state: DesiredState, api: Management) -> dict[str, Any]:
    """Nodes (running, version, alarms, partitions, memory and disk), and the quorum queues."""
    live = {n["name"]: n for n in await api.get("/nodes")}
    overview = await api.get("/overview")
    rows = []
    for name in [n.name for n in state.cluster.nodes] + sorted(
        set(live) - {n.name for n in state.cluster.nodes}
    ):
        node = live.get(name, {})
        alarms = [
            a for a, on in (("memory", node.get("mem_alarm")), ("disk", node.get("disk_free_alarm"))) if on
        ]
        rows.append(
            {
                "name": name,
                "in_file": any(n.name == name for n in state.cluster.nodes),
                "running": bool(node.get("running")),
                "version": _version(node),
                "uptime_s": (node.get("uptime") or 0) / 1000 if node.get("running") else None,
                "mem_used": node.get("mem_used"),
                "mem_limit": node.get("mem_limit"),
                "disk_free": node.get("disk_free"),
                "disk_free_limit": node.get("disk_free_limit"),
                "alarms": alarms,
                "partitions": list(node.get("partitions") or []),
            }
        )
    queues = await quorum_health(api)
    every = await api.get("/queues?columns=name,vhost,messages_ready,messages_unacknowledged,consumers")
    vhosts = []
    for vhost in state.vhosts:
        mine = [q for q in every if q["vhost"] == vhost.name]
        vhosts.append(
            {
                "name": vhost.name,
                "queues": len(mine),
                "ready": sum(q.get("messages_ready") or 0 for q in mine),
                "unacked": sum(q.get("messages_unacknowledged") or 0 for q in mine),
                "consumers": sum(q.get("consumers") or 0 for q in mine),
                "idle_queues": sorted(
                    q["name"]
                    for q in mine
                    if not q.get("consumers")
                    and ".delay." not in q["name"]
                    and not q["name"].endswith(".dead")
                ),
            }
        )
    return {
        "env": state.env,
        "vhosts": vhosts,
        "cluster_name": overview.get("cluster_name"),
        "rabbitmq_version": overview.get("rabbitmq_version"),
        "erlang_version": overview.get("erlang_version"),
        "nodes": rows,
        "quorum_queues": len(queues),
        "quorum_queues_under_replicated": [
            f"{q['vhost']}/{q['name']}" for q in queues if len(q["online"]) < len(q["members"])
        ],
        "quorum_queues_below_quorum": [
            f"{q['vhost']}/{q['name']}" for q in queues if len(q["online"]) <= len(q["members"]) // 2
        ],
    }


def _cli(state: DesiredState, tool: str, node: ClusterNode, *args: str) -> list[str]:
    path = f"{state.cluster.cli_dir.rstrip('/')}/{tool}" if state.cluster.cli_dir else tool
    return [*state.cluster.cli_prefix, path, "-n", node.name, *args]


async def _settled(api: Management, node: ClusterNode, timeout: float) -> None:
    """Until the node runs and every quorum queue has all its members online again."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = {n["name"]: n for n in await api.get("/nodes")}
        queues = await quorum_health(api)
        lagging = [f"{q['vhost']}/{q['name']}" for q in queues if len(q["online"]) < len(q["members"])]
        if nodes.get(node.name, {}).get("running") and not lagging:
            return
        if time.monotonic() > deadline:
            running = nodes.get(node.name, {}).get("running")
            raise RestartFailed(
                f"{node.name} did not settle in {timeout:.0f} s: running={running}, "
                f"quorum queues not fully online: {', '.join(lagging[:10]) or 'none'}"
            )
        await asyncio.sleep(1.0)


async def rolling_restart(
    state: DesiredState,
    api: Management,
    run: Runner,
    *,
    progress: Callable[[str], None] = lambda line: None,
    settle_timeout_s: float = 300.0,
) -> list[dict[str, Any]]:
    """Restart the cluster's nodes one by one (see the module's description); a row per node. Stops at
    the first node that fails, saying where (the nodes before it were restarted)."""
    live = {n["name"]: n for n in await api.get("/nodes")}
    down = [n.name for n in state.cluster.nodes if not live.get(n.name, {}).get("running")]
    if down:
        raise Refused(f"not restarting: {', '.join(down)} not running; bring it back first")
    hostless = [n.name for n in state.cluster.nodes if n.host is None]
    if hostless:
        raise Refused(f"not restarting: {', '.join(hostless)} name no host (the inventory node to SSH to)")
    done: list[dict[str, Any]] = []
    for node in state.cluster.nodes:
        if node.host is None:
            raise Refused(
                f"not restarting: cluster node {node.name} has no host (the inventory node to SSH to)"
            )
        started = time.monotonic()
        steps = [
            (
                "await_online_quorum_plus_one",
                _cli(state, "rabbitmq-upgrade", node, "await_online_quorum_plus_one", "-t", "300"),
            ),
            ("drain", _cli(state, "rabbitmq-upgrade", node, "drain")),
            (
                "restart",
                [
                    *state.cluster.cli_prefix,
                    *(a.replace("NODE", node.name) for a in state.cluster.restart_command),
                ],
            ),
            ("await_startup", _cli(state, "rabbitmqctl", node, "await_startup", "-t", "300")),
            ("revive", _cli(state, "rabbitmq-upgrade", node, "revive")),
        ]
        for step, command in steps:
            progress(f"{node.name}: {step}")
            try:
                await run(node, command)
            except Exception as exc:
                raise RestartFailed(f"{node.name}: {step} failed: {exc}") from exc
        progress(f"{node.name}: waiting for it and its quorum queues")
        await _settled(api, node, settle_timeout_s)
        done.append({"node": node.name, "restarted": True, "took_s": round(time.monotonic() - started, 1)})
        log.info("rabbit_node_restarted", env=state.env, node=node.name)
    last = state.cluster.nodes[-1]
    progress("rebalancing quorum queue leaders")
    try:
        await run(last, _cli(state, "rabbitmq-queues", last, "rebalance", "quorum"))
    except Exception as exc:
        raise RestartFailed(
            f"every node restarted, but rebalancing the quorum queue leaders failed: {exc}"
        ) from exc
    return done


async def rotate_user(state: DesiredState, api: Management, name: str) -> dict[str, Any]:
    """A new random password for ``name``: written to the user's ``password_file`` (mode 0600) and set
    in the cluster. Connections open with the old password stay open; new ones need the new one.
    ``Refused`` for a user the file does not list or whose password is not in a file."""
    user = next((u for u in state.users if u.name == name), None)
    if user is None:
        raise Refused(f"{state.env}: no user {name} in the desired state")
    if name == state.management.user:
        raise Refused(f"{name} is the management user the deployer works as: change its password by hand")
    if user.password_file is None:
        raise Refused(
            f"{name} keeps its password in ${user.password_env}: rotation writes the new one to a file; "
            "give the user a password_file"
        )
    password = secrets.token_urlsafe(32)
    target = Path(user.password_file)
    staged = target.with_name(f".{target.name}.new")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    try:
        await api.request(
            "PUT", f"/users/{quote(name, safe='')}", {"password": password, "tags": ",".join(user.tags)}
        )
    except Exception:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, target)
    stored = await api.get(f"/users/{quote(name, safe='')}")
    if not password_matches(stored["password_hash"], stored["hashing_algorithm"], password):
        raise RuntimeError(f"{name}: the cluster does not hold the new password after setting it")
    log.info("rabbit_user_rotated", env=state.env, user=name)
    return {"env": state.env, "user": name, "password_file": str(target), "rotated": True}
