"""Settings of the version-db service (environment variables `CONVEYOR_VERSION_DB_*`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from conveyor.settings import ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_VERSION_DB_")

    service_name: ClassVar[str] = "version-db"

    http_port: int = Field(default=8101, ge=0, le=65535, description="port of /healthz and /metrics")
