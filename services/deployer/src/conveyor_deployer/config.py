"""Settings of the deployer service (environment variables `CONVEYOR_DEPLOYER_*`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from conveyor.settings import ServiceSettings

__all__ = ["Role", "Settings", "User"]


class Role(StrEnum):
    READER = "reader"  # sees promotions, nodes, blocked versions
    DEPLOYER = "deployer"  # promotes, approves others' promotions, retries, rolls back, unblocks
    ADMIN = "admin"  # everything a deployer does, plus node trust and bootstrap

    @property
    def rank(self) -> int:
        return [Role.READER, Role.DEPLOYER, Role.ADMIN].index(self)


class User(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: SecretStr
    role: Role


class FirewallPolicy(BaseModel):
    """Who may open the firewalls of one environment's nodes, and for how long at most."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: list[Role] = Field(min_length=1, description="roles that may disable (and enable) firewalls here")
    max_lease_s: int = Field(
        gt=0, le=7 * 24 * 3600, description="the longest a firewall may stay open, in all"
    )
    approvals: int = Field(default=0, ge=0, le=1, description="a second person must approve a disable")


def _default_firewall_policy() -> dict[str, FirewallPolicy]:
    return {
        "dev": FirewallPolicy(roles=[Role.DEPLOYER, Role.ADMIN], max_lease_s=4 * 3600),
        "qa": FirewallPolicy(roles=[Role.DEPLOYER, Role.ADMIN], max_lease_s=2 * 3600),
        "prod": FirewallPolicy(roles=[Role.ADMIN], max_lease_s=30 * 60, approvals=1),
    }


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_DEPLOYER_")

    service_name: ClassVar[str] = "deployer"

    http_port: int = Field(default=8100, ge=0, le=65535, description="port of the API, /healthz and /metrics")
    inventory_file: Path = Field(
        default=Path("/etc/conveyor/inventory.yaml"), description="environments, clusters and nodes (YAML)"
    )
    state_dir: Path = Field(
        default=Path("/var/lib/conveyor/deployer"),
        description="promotions, node versions, blocked versions, the package mirror",
    )
    rabbit_dir: Path = Field(
        default=Path("/etc/conveyor/rabbitmq"),
        description="the RabbitMQ clusters' desired state, <env>.yaml each (see deploy/rabbitmq/README.md)",
    )
    rabbit_watch: bool = Field(
        default=True, description="poll every cluster with a file there; rabbitmq.alarm/recovered events"
    )
    users: dict[str, User] = Field(
        default_factory=dict,
        description='API users: name → {"token", "role": reader|deployer|admin} (JSON); none: all refused',
    )
    signing_key_file: Path = Field(
        default=Path("/etc/conveyor/signing.key"), description="Ed25519 key signing privileged commands"
    )
    command_ttl_s: float = Field(
        default=900.0, gt=0, le=3600, description="how long a signed command is valid"
    )
    artifact_store_url: str = Field(
        default="http://127.0.0.1:8101", description="the version-db's artifact store"
    )
    artifact_store_token: SecretStr | None = Field(
        default=None, description="version-db token with the deployer role (stores changesets)"
    )
    source_env: str = Field(default="dev", description="where changesets are created (the package mirror)")
    node_timeout_s: float = Field(
        default=300.0, gt=0, description="wait this long for a node's reply before calling it unreachable"
    )
    heartbeat_stale_s: float = Field(
        default=120.0, gt=0, description="a node without a heartbeat for this long counts as unreachable"
    )
    mirror_keep: int = Field(default=50, ge=2, description="versions of each package kept in the mirror")
    ssh_key_file: Path = Field(
        default=Path("/etc/conveyor/id_ed25519"), description="the deployment server's SSH key"
    )
    known_hosts_file: Path = Field(
        default=Path("/var/lib/conveyor/deployer/known_hosts"), description="trusted node host keys"
    )
    ssh_concurrency: int = Field(default=20, ge=1, description="SSH operations at once")
    bootstrap_wheels_dir: Path = Field(
        default=Path("/var/lib/conveyor/deployer/wheels"),
        description="`conveyor nodes bootstrap`: the wheels installed on nodes (conveyor and the agents)",
    )
    agent_envs: dict[str, str] = Field(
        default_factory=dict,
        description="env → AMQP URL the node agents use (JSON; their own broker users, not the deployer's)",
    )
    agent_artifact_store_url: str | None = Field(
        default=None,
        description="artifact store URL for the agents",
        json_schema_extra={"doc_default": "ARTIFACT_STORE_URL"},
    )
    agent_artifact_store_token: SecretStr | None = Field(
        default=None, description="the agents' artifact store token (the reader role)"
    )
    agent_prefix: str = Field(default="/opt/conveyor", description="where bootstrap installs the agents")
    agent_python: str = Field(default="python3", description="the nodes' Python that makes the virtualenv")
    agent_index_url: str | None = Field(
        default=None,
        description="package index for the agents' dependencies",
        json_schema_extra={"doc_default": "the node's pip configuration"},
    )
    agent_from_index: bool = Field(
        default=False,
        description="bootstrap installs the agents of the deployer's own version from AGENT_INDEX_URL "
        "(the central package index) instead of uploading BOOTSTRAP_WHEELS_DIR",
    )
    listener_http_port: int = Field(default=8103, ge=1, le=65535, description="the listener's port on nodes")
    firewall_http_port: int = Field(default=8104, ge=1, le=65535, description="the firewall agent's port")
    install_firewall_agent: bool = Field(default=True, description="bootstrap installs the firewall agent")
    supervisor_conf: str = Field(
        default="/etc/supervisor/supervisord.conf", description="supervisorctl -c, on supervisord nodes"
    )
    supervisor_include: str = Field(
        default="/etc/supervisor/conf.d/conveyor.conf",
        description="the file bootstrap writes the agents' programs to (supervisord.conf includes it)",
    )
    bootstrap_install_timeout_s: float = Field(default=900.0, gt=0, description="pip install on a node")
    bootstrap_health_timeout_s: float = Field(
        default=60.0, ge=0, description="started agents must answer /healthz within this (0: not checked)"
    )
    firewall_policy: dict[str, FirewallPolicy] = Field(
        default_factory=_default_firewall_policy,
        description='env → {"roles": [...], "max_lease_s": N, "approvals": 0|1} (JSON); an env without an '
        "entry: every firewall request refused",
        json_schema_extra={
            "doc_default": "dev: deployer+admin, 4 h; qa: deployer+admin, 2 h; prod: admin, 30 min, "
            "1 approval"
        },
    )
    firewall_reply_timeout_s: float = Field(
        default=20.0,
        gt=0,
        le=600,
        description="how long a request waits for each node's answer; its commands expire then (plus skew)",
    )
    firewall_approval_ttl_s: float = Field(
        default=3600.0, gt=0, description="a firewall request awaiting approval lapses after this"
    )
    firewall_audit_file: str = Field(
        default="/opt/conveyor/state/firewall-agent/audit.jsonl",
        description="the firewall agent's audit log on the nodes, `{node}` replaced by the node's name "
        "(`conveyor audit verify` reads it over SSH)",
    )
    ctl_account: str = Field(
        default="conveyor-ctl",
        pattern=r"^[a-z_][a-z0-9_-]{0,30}$",
        description="the system-control user on nodes (`conveyor nodes provision-ctl-user`)",
    )
    ctl_in_bootstrap: bool = Field(
        default=True,
        description="`conveyor nodes bootstrap` provisions the system-control user first and the listener "
        "restarts units through it",
    )
    ctl_remote: bool = Field(
        default=False,
        description="the deployer's SSH key may log in as the system-control user (forced command: "
        "`VERB UNIT` only)",
    )
    ctl_polkit: bool = Field(
        default=False, description="also install a polkit rule for the same units (systemd nodes with polkit)"
    )
    ctl_sudo_defaults: list[str] = Field(
        default_factory=list,
        description='extra sudoers `Defaults:<account>` settings, JSON list (e.g. ["log_output"])',
    )
    ctl_systemctl: str = Field(default="/usr/bin/systemctl", description="systemctl's path on nodes")
    ctl_supervisorctl: str = Field(
        default="/usr/bin/supervisorctl", description="supervisorctl's path on supervisord nodes"
    )
    remote_conveyor: str = Field(
        default="/opt/conveyor/venv/bin/conveyor",
        description="the conveyor command on agentless nodes (runs `conveyor changeset apply` there)",
    )
