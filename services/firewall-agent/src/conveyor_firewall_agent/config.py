"""Settings of the firewall-agent service (environment variables `CONVEYOR_FIREWALL_AGENT_*`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from conveyor.settings import NodeAgentSettings

__all__ = ["Settings"]


class Settings(NodeAgentSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_FIREWALL_AGENT_")

    service_name: ClassVar[str] = "firewall-agent"

    http_port: int = Field(default=8104, ge=0, le=65535, description="port of /healthz and /metrics")
