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
    remote_conveyor: str = Field(
        default="/opt/conveyor/venv/bin/conveyor",
        description="the conveyor command on agentless nodes (runs `conveyor changeset apply` there)",
    )
