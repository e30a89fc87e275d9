"""Settings of the release board, from environment variables ``RELEASE_BOARD_*``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from conveyor.settings import BusSettings

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELEASE_BOARD_", env_nested_delimiter="__", extra="ignore")

    service_name: ClassVar[str] = "release-board"

    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/dev",
        pattern=r"^amqps?://[^/]+",
        description="the broker of the environment the board follows (its vhost included)",
    )
    env: str = Field(
        default="dev",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="the Conveyor environment that broker serves",
    )
    http_host: str = Field(default="127.0.0.1", description="address of the board's HTTP API")
    http_port: int = Field(default=8190, ge=0, le=65535, description="port of the board's HTTP API")
    http_access_log: bool = Field(default=False, description="log every HTTP request")
    board_size: int = Field(default=200, ge=1, description="entries the board keeps (oldest dropped)")
    log_level: str = Field(default="info", description="debug, info, warning or error")
    bus: BusSettings = Field(default_factory=BusSettings, description="bus tuning (nested, `__`)")
