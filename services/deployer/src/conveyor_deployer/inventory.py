"""The inventory: environments (in promotion order) → clusters → nodes, from a YAML file.

Validated when the deployer starts; every error names the environment, the
node and the field, e.g. ``inventory.yaml: env qa, cluster web, node qa-web-2:
ssh_port: Input should be less than or equal to 65535``. The schema is in
the deployer's README.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

__all__ = ["AgentKind", "Cluster", "Environment", "Inventory", "InventoryError", "Node", "load_inventory"]

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]  # as in the envelope
PackageName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


def _no_dotdot(unit: str) -> str:
    if ".." in unit:
        raise ValueError(f"unit {unit!r}: '..' is not allowed in a unit name")
    return unit


# A systemd unit or supervisord program: written into sudo rules, so no spaces, ';', '*', '..' or leading '-'.
Unit = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9@._:-]{0,254}$"), AfterValidator(_no_dotdot)
]


class InventoryError(ValueError):
    """The inventory file is missing, not YAML, or does not follow the schema."""


class AgentKind(StrEnum):
    LISTENER = "listener"  # a changelog listener applies changesets sent over the bus
    NONE = "none"  # agentless: the deployer ships the archive over SFTP and applies it over SSH


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Node(_Strict):
    name: Name
    address: str = Field(min_length=1, description="host name or IP address for SSH")
    ssh_port: int = Field(default=22, ge=1, le=65535)
    ssh_user: str = Field(default="conveyor", min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    agent: AgentKind = AgentKind.LISTENER
    packages: dict[PackageName, list[Unit]] = Field(
        default_factory=dict, description="package → the units it runs as, restarted after a switch"
    )
    release_roots: dict[PackageName, str] = Field(
        default_factory=dict, description="package → release root on the node (agentless nodes)"
    )
    service_manager: str = Field(default="systemd", pattern=r"^(systemd|supervisord)$")

    def matches(self, labels: dict[str, str]) -> bool:
        return all(self.labels.get(key) == value for key, value in labels.items())

    @model_validator(mode="after")
    def _agentless_needs_roots(self) -> Node:
        if self.agent is AgentKind.NONE:
            missing = [p for p in self.packages if p not in self.release_roots]
            if missing:
                raise ValueError(f"agent: none needs release_roots for {', '.join(missing)}")
        return self


class Cluster(_Strict):
    name: Name
    nodes: list[Node] = Field(min_length=1)


class Environment(_Strict):
    name: EnvName
    soak_s: float = Field(default=0.0, ge=0, description="time a version must run healthy here first")
    approval: bool = Field(default=False, description="promotions into it need a second person")
    clusters: list[Cluster] = Field(default_factory=list)

    def nodes(self) -> list[Node]:
        return [node for cluster in self.clusters for node in cluster.nodes]


class Inventory(_Strict):
    environments: list[Environment] = Field(min_length=1, description="in promotion order")

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        envs = [e.name for e in self.environments]
        if len(set(envs)) != len(envs):
            raise ValueError("an environment is listed twice")
        seen: dict[str, str] = {}
        for env in self.environments:
            for node in env.nodes():
                if node.name in seen:
                    raise ValueError(f"node {node.name} is listed in {seen[node.name]} and in {env.name}")
                seen[node.name] = env.name
        return self

    def env(self, name: str) -> Environment:
        for env in self.environments:
            if env.name == name:
                return env
        raise KeyError(f"no environment {name!r} in the inventory ({', '.join(self.env_names())})")

    def env_names(self) -> list[str]:
        return [e.name for e in self.environments]

    def previous(self, name: str) -> str | None:
        names = self.env_names()
        index = names.index(name)
        return names[index - 1] if index > 0 else None

    def node(self, name: str) -> tuple[str, Node]:
        for env in self.environments:
            for node in env.nodes():
                if node.name == name:
                    return env.name, node
        raise KeyError(f"no node {name!r} in the inventory")

    def all_nodes(self) -> Iterator[tuple[str, Node]]:
        for env in self.environments:
            for node in env.nodes():
                yield env.name, node

    def nodes_of(self, env: str, package: str | None = None) -> list[Node]:
        return [n for n in self.env(env).nodes() if package is None or package in n.packages]


def _where(data: Any, loc: tuple[int | str, ...]) -> str:
    """``('environments', 1, 'clusters', 0, 'nodes', 2, 'ssh_port')`` → ``env qa, cluster web, node
    qa-web-3: ssh_port``, naming things by their names where the file gives them."""
    parts: list[str] = []
    current = data
    labels = {"environments": "env", "clusters": "cluster", "nodes": "node"}
    rest: list[str] = []
    index = 0
    while index < len(loc):
        key = loc[index]
        nxt = loc[index + 1] if index + 1 < len(loc) else None
        if isinstance(key, str) and key in labels and isinstance(nxt, int) and isinstance(current, dict):
            items = current.get(key)
            item = items[nxt] if isinstance(items, list) and nxt < len(items) else None
            name = item.get("name") if isinstance(item, dict) else None
            parts.append(f"{labels[key]} {name if name else f'#{nxt + 1}'}")
            current = item
            index += 2
            continue
        rest = [str(k) for k in loc[index:]]
        break
    where = ", ".join(parts)
    field = ".".join(rest)
    return f"{where}: {field}" if where and field else where or field


def load_inventory(path: Path) -> Inventory:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InventoryError(f"{path}: no such inventory file") from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = _where(data, tuple(error["loc"]))
            problems.append(f"{path}: {where}: {error['msg']}" if where else f"{path}: {error['msg']}")
        raise InventoryError("\n".join(problems)) from None
