"""Settings of the notifier service (environment variables `CONVEYOR_NOTIFIER_*`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from conveyor.settings import ServiceSettings

__all__ = ["Role", "Settings", "User"]


class Role(StrEnum):
    READER = "reader"  # reads alerts, silences, notifications and the delivery log
    RESPONDER = "responder"  # also acknowledges alerts, adds and expires silences

    @property
    def rank(self) -> int:
        return [Role.READER, Role.RESPONDER].index(self)


class User(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: SecretStr
    role: Role


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_NOTIFIER_")

    service_name: ClassVar[str] = "notifier"

    http_port: int = Field(default=8102, ge=0, le=65535, description="port of the API, /healthz and /metrics")
    users: dict[str, User] = Field(
        default_factory=dict,
        description='API users: name → {"token", "role": reader|responder} (JSON); none: all refused',
    )
    state_dir: Path = Field(
        default=Path("/var/lib/conveyor/notifier"), description="the embedded database lives here"
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL: sqlite+aiosqlite:///PATH or mysql+asyncmy://USER:PASSWORD@HOST/DB",
        json_schema_extra={"doc_default": "SQLite in STATE_DIR/notifier.sqlite3"},
    )
    rules_file: Path = Field(
        default=Path("/etc/conveyor/notifier-rules.yaml"),
        description="routing rules and receivers (see rules.example.yaml); the notifier refuses to start "
        "without a valid one",
    )
    templates_dir: Path | None = Field(
        default=None,
        description="message templates that replace the packaged ones (same file names)",
        json_schema_extra={"doc_default": "the packaged templates"},
    )
    link_base: str | None = Field(
        default=None, description="the deployer's API or dashboard URL that messages link to"
    )
    inventory_file: Path | None = Field(
        default=None, description="the deployer's inventory, for node labels in rules (optional)"
    )
    dedup_window_s: float = Field(
        default=300.0, ge=0, description="an event the same as one received this recently is not sent again"
    )
    retention_days: float = Field(
        default=30.0,
        ge=1,
        description="events, messages and the delivery log are kept this long (open alerts and their "
        "events for as long as they are open)",
    )
    retry_base_s: float = Field(
        default=1.0, gt=0, description="first pause before a failed delivery is tried again (doubling)"
    )
    smtp_host: str = Field(default="127.0.0.1", description="SMTP server for email receivers")
    smtp_port: int = Field(default=25, ge=1, le=65535, description="its port")
    smtp_starttls: bool = Field(default=False, description="upgrade the connection with STARTTLS")
    smtp_tls: bool = Field(default=False, description="implicit TLS (port 465)")
    smtp_username: str | None = Field(default=None, description="SMTP authentication user")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP authentication password")
    smtp_sender: str = Field(default="conveyor@localhost", description="the From address")
    smtp_validate_certs: bool = Field(default=True, description="check the SMTP server's certificate")

    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.state_dir / 'notifier.sqlite3'}"
