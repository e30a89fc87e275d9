"""The deployer's reach into the nodes over SSH: host keys shown and trusted, nodes checked.

A host key is trusted only after a person saw its fingerprint (``conveyor nodes trust``); a
node presenting another key later is refused, reported once (``node.host_key_changed``) and
sent nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any, Protocol

from conveyor.contracts import Payload
from conveyor.contracts.catalogue import NodeHostKeyChanged
from conveyor.observability import get_logger
from conveyor_deployer.config import Settings
from conveyor_deployer.inventory import Inventory, Node
from conveyor_deployer.ssh import (
    HostKeyChanged,
    KnownHosts,
    NodeUnreachable,
    SshPool,
    SshTarget,
    fingerprint,
)

__all__ = ["Announce", "NodeAccess", "TrustRefused"]

log = get_logger(__name__)


class Announce(Protocol):
    def __call__(self, env: str, payload: Payload, *, actor: str | None = None) -> None: ...


class TrustRefused(Exception):
    """The fingerprint to trust is not the one the node presents now."""


class NodeAccess:
    def __init__(self, settings: Settings, inventory: Inventory, announce: Announce) -> None:
        self.settings = settings
        self.inventory = inventory
        self.announce = announce
        self.known_hosts = KnownHosts(settings.known_hosts_file)
        self._pool: SshPool | None = None
        self._reported: set[tuple[str, str]] = set()

    @property
    def pool(self) -> SshPool:
        if self._pool is None:
            self._pool = SshPool(
                self.known_hosts, self.settings.ssh_key_file, concurrency=self.settings.ssh_concurrency
            )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @staticmethod
    def target(node: Node) -> SshTarget:
        return SshTarget(node.name, node.address, node.ssh_port, node.ssh_user)

    def _nodes(self, env: str | None, name: str | None = None) -> list[tuple[str, Node]]:
        return [
            (e, n)
            for e, n in self.inventory.all_nodes()
            if (env is None or e == env) and (name is None or n.name == name)
        ]

    async def host_keys(self, env: str | None, name: str | None = None) -> list[dict[str, Any]]:
        """Per node: the fingerprint it presents, the one trusted, and what that means."""

        async def one(env_name: str, node: Node) -> dict[str, Any]:
            row: dict[str, Any] = {
                "env": env_name,
                "node": node.name,
                "address": f"{node.address}:{node.ssh_port}",
            }
            trusted = self.known_hosts.lookup(node.address, node.ssh_port)
            row["trusted"] = fingerprint(trusted) if trusted is not None else None
            try:
                _, row["presented"] = await self.known_hosts.fingerprint_of(
                    node.address, node.ssh_port, timeout=10
                )
            except NodeUnreachable as exc:
                row["presented"], row["state"], row["error"] = None, "unreachable", str(exc)
                return row
            if row["trusted"] is None:
                row["state"] = "unknown"
            elif row["trusted"] == row["presented"]:
                row["state"] = "trusted"
            else:
                row["state"] = "changed"
                self._report(env_name, node, row["trusted"], row["presented"])
            return row

        return list(await asyncio.gather(*(one(e, n) for e, n in self._nodes(env, name))))

    async def trust(self, name: str, fingerprint: str, *, replace: bool) -> str:
        """Trust the key ``name`` presents, if it is the one with ``fingerprint`` (what a person saw)."""
        env_name, node = self.inventory.node(name)
        key, presented = await self.known_hosts.fingerprint_of(node.address, node.ssh_port, timeout=10)
        if presented != fingerprint:
            raise TrustRefused(f"{name} presents {presented}, not {fingerprint}: nothing trusted")
        trusted = self.known_hosts.trust(node.address, node.ssh_port, key, replace=replace, node=name)
        log.info("node_trusted", node=name, env=env_name, fingerprint=trusted, replaced=replace)
        return trusted

    async def check(self, env: str | None) -> list[dict[str, Any]]:
        async def one(env_name: str, node: Node) -> dict[str, Any]:
            result = await self.pool.check(self.target(node))
            row = {"env": env_name, **asdict(result)}
            row["agents"] = {name: asdict(status) for name, status in result.agents.items()}
            return row

        rows = list(await asyncio.gather(*(one(e, n) for e, n in self._nodes(env))))
        for row in rows:  # why a node could not be reached: its host key is looked at (and reported)
            if not row["reachable"]:
                keys = await self.host_keys(row["env"], row["node"])
                row["host_key"] = keys[0]["state"] if keys else None
        return rows

    async def run(self, node: Node, command: str | list[str], *, timeout: float | None = None) -> str:
        """A command on a node, host key verified; its standard output."""
        try:
            result = await self.pool.run(self.target(node), command, timeout=timeout)
        except HostKeyChanged as exc:
            env_name, _ = self.inventory.node(node.name)
            self._report(env_name, node, exc.expected_fingerprint, exc.presented_fingerprint)
            raise
        return result.stdout

    def _report(self, env: str, node: Node, expected: str, presented: str) -> None:
        if (node.name, presented) in self._reported:
            return
        self._reported.add((node.name, presented))
        log.error("host_key_changed", node=node.name, expected=expected, presented=presented)
        self.announce(
            env,
            NodeHostKeyChanged(
                node=node.name,
                address=f"{node.address}:{node.ssh_port}",
                expected_fingerprint=expected,
                presented_fingerprint=presented,
            ),
        )
