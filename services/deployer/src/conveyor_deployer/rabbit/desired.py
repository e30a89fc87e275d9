"""A RabbitMQ cluster's desired state, one YAML file per environment (``deploy/rabbitmq/<env>.yaml``).

The file names the cluster (its nodes, the hosts the deployer reaches them on over SSH, the management
API), a tuning profile (``dev``, ``qa``, ``prod``; rendered into ``rabbitmq.conf`` by
:mod:`conveyor_deployer.rabbit.profiles`), and the definitions: vhosts with their limits, users (their
passwords come from environment variables or files, never from this file), permissions, exchanges,
queues, bindings and policies. A vhost with ``conveyor: true`` gets Conveyor's own topology too: its
four exchanges, the profile's queue policy and one least-privilege user per Conveyor service
(:func:`conveyor_topology`). The schema is documented in ``deploy/rabbitmq/README.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

__all__ = [
    "CONVEYOR_EXCHANGES",
    "SERVICE_QUEUE_PREFIXES",
    "Binding",
    "ClusterNode",
    "DesiredError",
    "DesiredState",
    "Exchange",
    "Permission",
    "Policy",
    "Queue",
    "User",
    "Vhost",
    "conveyor_topology",
    "load_desired",
]

ProfileName = Literal["dev", "qa", "prod"]
Name = Annotated[str, StringConstraints(min_length=1, max_length=255)]
RabbitNode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+$")]
EnvVar = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]

ExchangeType = Literal["direct", "fanout", "topic", "headers"]
CONVEYOR_EXCHANGES: dict[str, ExchangeType] = {
    "conveyor.events": "topic",
    "conveyor.commands": "topic",
    "conveyor.retry": "direct",
    "conveyor.dead-letter": "direct",
}
SERVICE_QUEUE_PREFIXES: dict[str, tuple[str, ...]] = {
    "deployer": ("deployer.events",),
    "version-db": ("version-db.events",),
    "notifier": ("notifier.events",),
    "agent": ("listener.", "firewall-agent."),
}
"""Conveyor's broker users (``conveyor-<name>``) → the start of the names of the queues they declare
(and their .delay.N, .dead). ``agent`` is the node agents' user: a node's changelog listener and
firewall agent share one broker URL (the deployer's ``AGENT_ENVS``)."""


class DesiredError(ValueError):
    """The file is missing, not YAML, or does not follow the schema; one line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Secret(_Strict):
    """Where a password is: an environment variable of the deployer, or a file (first line)."""

    password_env: EnvVar | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("give password_env or password_file (one of them)")
        return self

    def describe(self) -> str:
        return f"${self.password_env}" if self.password_env else str(self.password_file)

    def read(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The password, or None when the variable is unset or the file unreadable."""
        if self.password_env is not None:
            return (environ if environ is not None else os.environ).get(self.password_env) or None
        assert self.password_file is not None
        try:
            text = self.password_file.read_text().splitlines()
        except OSError:
            return None
        return text[0] if text and text[0] else None


class User(Secret):
    name: Name
    tags: tuple[str, ...] = ()


class Permission(_Strict):
    user: Name
    vhost: Name
    configure: str = "^$"
    write: str = "^$"
    read: str = "^$"


class Limits(_Strict):
    max_connections: int | None = Field(default=None, ge=0, alias="max-connections")
    max_queues: int | None = Field(default=None, ge=0, alias="max-queues")

    def as_dict(self) -> dict[str, int]:
        return {
            k: v
            for k, v in (("max-connections", self.max_connections), ("max-queues", self.max_queues))
            if v is not None
        }


class Vhost(_Strict):
    name: Name
    description: str = ""
    limits: Limits = Limits()
    conveyor: bool = Field(default=False, description="Conveyor's own exchanges, policy and service users")


class Exchange(_Strict):
    vhost: Name
    name: Name
    type: ExchangeType = "topic"
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = Field(default_factory=dict)


class Queue(_Strict):
    vhost: Name
    name: Name
    type: Literal["classic", "quorum", "stream"] = "quorum"
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = Field(default_factory=dict)

    def declared_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": self.type, **self.arguments}


class Binding(_Strict):
    vhost: Name
    source: Name
    destination: Name
    destination_type: Literal["queue", "exchange"] = "queue"
    routing_key: str = ""
    arguments: dict[str, Any] = Field(default_factory=dict)


class Policy(_Strict):
    vhost: Name
    name: Name
    pattern: str
    apply_to: Literal["queues", "exchanges", "all"] = Field(default="queues", alias="apply-to")
    priority: int = 0
    definition: dict[str, Any]

    @model_validator(mode="after")
    def _pattern_compiles(self) -> Policy:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from None
        return self


class ClusterNode(_Strict):
    name: RabbitNode
    host: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] | None = Field(
        default=None, description="the deployer inventory node it runs on (for SSH)"
    )
    management_url: str | None = Field(default=None, description="this node's management API")


class Management(Secret):
    user: Name = "conveyor-admin"
    url: str | None = Field(default=None, description="default: each node's management_url")


class Cluster(_Strict):
    nodes: tuple[ClusterNode, ...] = Field(min_length=1)
    cli_prefix: tuple[str, ...] = Field(
        default=("sudo", "-n"), description="runs rabbitmqctl & co. on a node, e.g. sudo -n"
    )
    cli_dir: str = Field(default="", description="directory of rabbitmqctl & co. (default: on PATH)")
    restart_command: tuple[str, ...] = Field(
        default=("systemctl", "restart", "rabbitmq-server"),
        description="restarts the broker on its host (after cli_prefix); NODE is replaced by the node name",
    )


class Tls(_Strict):
    port: int = Field(default=5671, ge=1, le=65535)
    cacertfile: str
    certfile: str
    keyfile: str
    verify_peer: bool = True
    fail_if_no_peer_cert: bool = True
    plain_listener: bool = Field(default=False, description="keep the plain 5672 listener too")


class Tuning(_Strict):
    """Overrides of the profile's values (see profiles.PROFILES); unset: the profile's."""

    vm_memory_high_watermark: float | None = Field(default=None, gt=0, le=1)
    disk_free_limit: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?(kB|MB|GB|KiB|MiB|GiB)?$")
    consumer_timeout_ms: int | None = Field(default=None, ge=0)
    heartbeat_s: int | None = Field(default=None, ge=0)
    cluster_partition_handling: Literal["ignore", "pause_minority", "autoheal"] | None = None
    delivery_limit: int | None = Field(default=None, ge=1)
    max_length: int | None = Field(default=None, ge=1)
    message_ttl_ms: int | None = Field(default=None, ge=0)
    management_bind: str | None = Field(default=None, description="management API address")
    queue_depth_max: int | None = Field(default=None, ge=1)
    unacked_max: int | None = Field(default=None, ge=1)


class DesiredState(_Strict):
    env: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    profile: ProfileName
    cluster: Cluster
    management: Management
    tuning: Tuning = Tuning()
    tls: Tls | None = None
    vhosts: tuple[Vhost, ...] = ()
    users: tuple[User, ...] = ()
    permissions: tuple[Permission, ...] = ()
    exchanges: tuple[Exchange, ...] = ()
    queues: tuple[Queue, ...] = ()
    bindings: tuple[Binding, ...] = ()
    policies: tuple[Policy, ...] = ()
    remove_guest: bool | None = Field(default=None, description="default: true except in the dev profile")
    prune_queues: bool = Field(default=False, description="delete live queues not in this file")
    poll_s: float = Field(
        default=15.0, ge=1, le=3600, description="how often the deployer checks the cluster"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DesiredState:
        from conveyor_deployer.rabbit.profiles import check_size  # noqa: PLC0415 - avoids an import cycle

        check_size(self.profile, len(self.cluster.nodes))
        vhosts = {v.name for v in self.vhosts}
        users = {u.name for u in self.users} | {self.management.user}
        for kind, items in (
            ("permissions", self.permissions),
            ("exchanges", self.exchanges),
            ("queues", self.queues),
            ("bindings", self.bindings),
            ("policies", self.policies),
        ):
            for item in items:
                if item.vhost not in vhosts:
                    raise ValueError(f"{kind}: vhost {item.vhost!r} is not in vhosts")
        for permission in self.permissions:
            if permission.user not in users:
                raise ValueError(f"permissions: user {permission.user!r} is not in users")
        if self.management.url is None and not all(n.management_url for n in self.cluster.nodes):
            raise ValueError("management: give url, or a management_url for every cluster node")
        return self

    def guest_removed(self) -> bool:
        return self.remove_guest if self.remove_guest is not None else self.profile != "dev"

    def management_urls(self) -> list[str]:
        if self.management.url:
            return [self.management.url]
        return [n.management_url for n in self.cluster.nodes if n.management_url]


def conveyor_topology(state: DesiredState) -> DesiredState:
    """``state`` with Conveyor's own topology added to every ``conveyor: true`` vhost: its exchanges,
    the profile's queue policy, and a user per service (``conveyor-<service>``, password in
    ``CONVEYOR_RABBIT_<ENV>_<SERVICE>_PASSWORD`` unless the file lists the user itself) allowed to
    configure, write and read only Conveyor's exchanges and its own queues."""
    from conveyor_deployer.rabbit.profiles import queue_policy  # noqa: PLC0415 - avoids an import cycle

    exchanges, policies = list(state.exchanges), list(state.policies)
    users, permissions = list(state.users), list(state.permissions)
    admin = state.management.user
    exchange_pattern = "|".join(re.escape(name) for name in CONVEYOR_EXCHANGES)
    for vhost in (v for v in state.vhosts if v.conveyor):
        for name, kind in CONVEYOR_EXCHANGES.items():
            if not any(e.vhost == vhost.name and e.name == name for e in exchanges):
                exchanges.append(Exchange(vhost=vhost.name, name=name, type=kind))
        policy = queue_policy(state.profile, state.tuning, vhost.name)
        if policy is not None and not any(p.vhost == vhost.name and p.name == policy.name for p in policies):
            policies.append(policy)
        if not any(p.vhost == vhost.name and p.user == admin for p in permissions):
            permissions.append(
                Permission(user=admin, vhost=vhost.name, configure=".*", write=".*", read=".*")
            )
        for service, prefixes in SERVICE_QUEUE_PREFIXES.items():
            user = f"conveyor-{service}"
            if not any(u.name == user for u in users):
                variable = f"CONVEYOR_RABBIT_{state.env}_{service}_PASSWORD".upper().replace("-", "_")
                users.append(User(name=user, password_env=variable))
            if not any(p.vhost == vhost.name and p.user == user for p in permissions):
                own = "|".join(re.escape(p) + (".+" if p.endswith(".") else r"(\..+)?") for p in prefixes)
                pattern = f"^({exchange_pattern}|{own})$"
                permissions.append(
                    Permission(user=user, vhost=vhost.name, configure=pattern, write=pattern, read=pattern)
                )
    return state.model_copy(
        update={
            "exchanges": tuple(exchanges),
            "policies": tuple(policies),
            "users": tuple(users),
            "permissions": tuple(permissions),
        }
    )


def _where(data: Any, loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            item = node[key]
            label = item.get("name") if isinstance(item, dict) else None
            parts[-1:] = [f"{parts[-1] if parts else ''}[{label or key}]"]
            node = item
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(p for p in parts if p)


def load_desired(path: Path) -> DesiredState:
    """The file at ``path``, validated, with Conveyor's topology added; ``DesiredError`` naming the
    file and field of every problem."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DesiredError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise DesiredError(f"{path}: not valid YAML: {exc}") from None
    try:
        return conveyor_topology(DesiredState.model_validate(data))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = _where(data, tuple(error["loc"]))
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{path}: {where}: {message}" if where else f"{path}: {message}")
        raise DesiredError("\n".join(problems)) from None
