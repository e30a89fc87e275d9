"""Settings of the version-db service (environment variables ``CONVEYOR_VERSION_DB_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from conveyor.settings import ServiceSettings

__all__ = ["Role", "Settings"]

Role = Literal["reader", "deployer", "admin"]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_VERSION_DB_")

    service_name: ClassVar[str] = "version-db"

    http_port: int = Field(default=8101, ge=0, le=65535, description="port of the API, /healthz and /metrics")
    database_url: SecretStr = Field(
        default=SecretStr("sqlite+aiosqlite:///version-db.sqlite3"),
        description="SQLAlchemy URL: sqlite+aiosqlite:///PATH (embedded) or mysql+asyncmy://user:pass@host/db",
    )
    migrate_on_start: bool = Field(default=True, description="upgrade the schema to head at start-up")
    artifacts_dir: Path = Field(default=Path("artifacts"), description="where changeset archives are stored")
    artifact_max_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="largest archive PUT /artifacts accepts"
    )
    api_tokens: dict[Role, list[SecretStr]] = Field(
        default_factory=dict,
        description='role → bearer tokens (JSON: {"deployer": ["<token>"]}); none: every API call refused',
    )
