"""Settings of the changelog-listener service (environment variables `CONVEYOR_CHANGELOG_LISTENER_*`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator
from pydantic_settings import SettingsConfigDict

from conveyor.settings import NodeAgentSettings

__all__ = ["HealthCheck", "ManagedPackage", "Role", "ServiceManager", "Settings", "SourceMode"]

UnitName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9@._:-]{0,254}$")]


class Role(StrEnum):
    SOURCE = "source"  # changes are authored here: commit, build changesets, upload, announce
    TARGET = "target"  # changesets are applied here


class SourceMode(StrEnum):
    COMMIT = "commit"  # commit each quiet change as a version and ship it as a changeset
    STATUS = "status"  # only report what changed (package.changed), never commit


class ServiceManager(StrEnum):
    SYSTEMD = "systemd"
    SUPERVISORD = "supervisord"
    NONE = "none"  # nothing to restart (static files served by something else)


class HealthCheck(BaseModel):
    """Either an HTTP URL that must answer 2xx, or a command that must exit 0."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description="GET this; 2xx is healthy")
    command: list[str] | None = Field(default=None, min_length=1, description="run this; exit 0 is healthy")
    expect: str | None = Field(default=None, description="the HTTP body must contain this text")
    timeout_s: float = Field(default=30.0, gt=0, description="give up (unhealthy) after this long")
    interval_s: float = Field(default=0.5, gt=0, description="pause between attempts")

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        if (self.url is None) == (self.command is None):
            raise ValueError("a health check has exactly one of url or command")
        return self


class ManagedPackage(BaseModel):
    """One package this node manages."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    root: Path = Field(description="source: the package directory; target: the release root")
    role: Role
    mode: SourceMode = Field(default=SourceMode.COMMIT, description="source packages only")
    units: list[UnitName] = Field(default_factory=list, description="restarted after each switch")
    health_check: HealthCheck | None = None


class Settings(NodeAgentSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_CHANGELOG_LISTENER_")

    service_name: ClassVar[str] = "changelog-listener"

    http_port: int = Field(default=8103, ge=0, le=65535, description="port of /healthz and /metrics")
    packages: list[ManagedPackage] = Field(
        default_factory=list,
        description="the packages this node manages (JSON list; fields in the README)",
    )
    state_dir: Path = Field(
        default=Path("/var/lib/conveyor/changelog-listener"),
        description="downloads, built changesets, the outbox and the command journal",
    )
    artifact_store_url: str = Field(
        default="http://127.0.0.1:8101", description="the version-db's artifact store (…/artifacts/<sha256>)"
    )
    artifact_store_token: SecretStr | None = Field(
        default=None, description="bearer token: reader on targets, deployer on sources"
    )
    trusted_keys_file: Path = Field(
        default=Path("/etc/conveyor/trusted-keys"),
        description="public keys whose signed changeset.apply commands are accepted (none: all refused)",
    )
    artifact_retry_delays_s: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0],
        description="pauses between attempts while the artifact store is unreachable",
    )
    service_manager: ServiceManager = Field(
        default=ServiceManager.SYSTEMD, description="systemd (systemctl), supervisord (supervisorctl) or none"
    )
    supervisorctl_config: Path | None = Field(
        default=None, description="passed to supervisorctl -c (supervisord only)"
    )
    control_user: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_-]{0,30}$",
        description="restart units through this system-control user: `sudo -n systemctl …` as that user "
        "(the listener switches to it with runuser when it runs as root); unset: run the tool directly",
        json_schema_extra={"doc_default": "unset"},
    )
    systemctl: str = Field(default="systemctl", description="systemctl (found on PATH unless absolute)")
    supervisorctl: str = Field(default="supervisorctl", description="supervisorctl (PATH unless absolute)")
    restart_timeout_s: float = Field(default=60.0, gt=0, description="per unit restart")
    quiet_period_s: float = Field(
        default=2.0, gt=0, description="source: wait this long without file events before acting"
    )
    watch_events: bool = Field(
        default=True,
        description="source: react to file-system events (off where inotify sees nothing, e.g. NFS: "
        "the rescan alone finds changes)",
    )
    rescan_interval_s: float = Field(
        default=60.0, gt=0, description="full rescan (sources: missed events; targets: drift)"
    )
    heartbeat_interval_s: float = Field(default=30.0, gt=0, description="node.heartbeat period")
    keep_releases: int = Field(default=5, ge=2, description="releases kept per target package")
    max_archive_bytes: int = Field(default=2 << 30, gt=0, description="larger archives are refused")
    max_unpacked_bytes: int = Field(
        default=8 << 30, gt=0, description="archives unpacking to more are refused"
    )
    author: str | None = Field(
        default=None,
        description="author of versions a source commits",
        json_schema_extra={"doc_default": "changelog-listener@<node>"},
    )

    @model_validator(mode="after")
    def _packages_are_distinct(self) -> Settings:
        names = [p.name for p in self.packages]
        roots = [p.root.resolve() for p in self.packages]
        if len(set(names)) != len(names):
            raise ValueError("each package may be listed once")
        if len(set(roots)) != len(roots):
            raise ValueError("two packages share a root directory")
        needs_config = (
            self.service_manager is ServiceManager.SUPERVISORD and self.supervisorctl_config is None
        )
        if needs_config and any(p.units for p in self.packages):
            raise ValueError("service_manager=supervisord needs supervisorctl_config")
        return self
