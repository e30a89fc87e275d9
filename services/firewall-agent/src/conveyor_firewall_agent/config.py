"""Settings of the firewall-agent service (environment variables `CONVEYOR_FIREWALL_AGENT_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, get_args

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from conveyor.contracts.catalogue import FirewallBackend
from conveyor.settings import NodeAgentSettings

__all__ = ["Settings"]


class Settings(NodeAgentSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_FIREWALL_AGENT_")

    service_name: ClassVar[str] = "firewall-agent"

    http_port: int = Field(default=8104, ge=0, le=65535, description="port of /healthz and /metrics")
    state_dir: Path = Field(
        default=Path("/var/lib/conveyor/firewall-agent"),
        description="the lease, the saved firewall, the audit log, the outbox and the command journal",
    )
    trusted_keys_file: Path = Field(
        default=Path("/etc/conveyor/trusted-keys"),
        description="public keys whose signed firewall commands are accepted (none: all refused)",
    )
    backend: FirewallBackend | None = Field(
        default=None,
        description="nftables, iptables-nft, iptables-legacy, ufw or firewalld; unset: detected when needed",
        json_schema_extra={"doc_default": "detected"},
    )
    netns: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="act on this network namespace's firewall (`ip netns exec`), not the host's",
        json_schema_extra={"doc_default": "unset: the host's"},
    )
    allowed_roles: list[str] = Field(
        default_factory=lambda: ["deployer", "admin"],
        description="signed roles whose firewall commands are accepted (the deployer's policy decides first)",
    )
    max_lease_s: int = Field(
        default=24 * 3600,
        gt=0,
        description="the longest this node keeps its firewall open in all, whatever a command says",
    )
    command_timeout_s: float = Field(default=30.0, gt=0, description="each firewall tool run")
    restore_retry_s: float = Field(
        default=10.0, gt=0, description="pause before trying again when restoring the firewall failed"
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _known_backend(cls, value: object) -> object:
        if value in ("", None):
            return None
        if value not in get_args(FirewallBackend):
            raise ValueError(f"{value!r} is not one of {', '.join(get_args(FirewallBackend))}")
        return value
