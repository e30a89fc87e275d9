"""Settings of the changelog-listener service (environment variables `CONVEYOR_CHANGELOG_LISTENER_*`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from conveyor.settings import NodeAgentSettings

__all__ = ["Settings"]


class Settings(NodeAgentSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_CHANGELOG_LISTENER_")

    service_name: ClassVar[str] = "changelog-listener"

    http_port: int = Field(default=8103, ge=0, le=65535, description="port of /healthz and /metrics")
