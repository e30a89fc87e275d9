"""Settings shared by every Conveyor process, read from the environment.

Each service subclasses :class:`ServiceSettings` with its own prefix
(``CONVEYOR_<SERVICE>_``); nothing is read until the class is instantiated.
"""

from __future__ import annotations

import re
import socket
import sys
from enum import StrEnum
from pathlib import PurePath
from typing import Annotated, Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_ENVS",
    "BusSettings",
    "CliSettings",
    "LogFormat",
    "NodeAgentSettings",
    "ServiceSettings",
    "load_settings",
    "redact_url",
    "redact_value",
    "redacted",
]

DEFAULT_ENVS: dict[str, str] = {
    "dev": "amqp://guest:guest@127.0.0.1:5672/dev",
    "qa": "amqp://guest:guest@127.0.0.1:5672/qa",
    "prod": "amqp://guest:guest@127.0.0.1:5672/prod",
}


class LogFormat(StrEnum):
    AUTO = "auto"  # JSON unless stderr is a terminal
    JSON = "json"
    CONSOLE = "console"


def redact_url(url: str) -> str:
    """``amqp://user:secret@host/vhost`` → ``amqp://user:***@host/vhost``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _check_amqp_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"amqp", "amqps"} or not parts.hostname:
        raise ValueError(f"{url!r} is not an AMQP URL (expected amqp[s]://user:pass@host:port/vhost)")
    return url


def _check_envs(value: dict[str, str]) -> dict[str, str]:
    if not value:
        raise ValueError("at least one environment is needed")
    for name, url in value.items():
        _check_amqp_url(url)
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
            raise ValueError(f"environment name {name!r} must be lower-case letters, digits, '-' or '_'")
    return value


Envs = Annotated[dict[str, str], AfterValidator(_check_envs)]


class BusSettings(BaseModel):
    """How a process talks to the brokers; embedded in every service's settings."""

    prefetch: int = Field(default=32, ge=1, le=10_000, description="unacked messages per consumer")
    retry_delays_s: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [1.0, 4.0, 16.0, 64.0],
        description="delay before each retry of a failed handler (exponential); its length is the "
        "retry count",
    )
    delivery_limit: int = Field(
        default=20,
        ge=1,
        description="broker-side cap on redeliveries (crash loops), then dead-letter",
    )
    publish_timeout_s: float = Field(
        default=30.0, gt=0, description="give up on a publish the broker has not confirmed by then"
    )
    reconnect_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="pause between reconnects to a lost broker (at start-up it doubles up to 30 s)",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="on stop, how long in-flight handlers may finish"
    )
    idempotency_capacity: int = Field(
        default=100_000, ge=1, description="handled message ids remembered per process"
    )


class ServiceSettings(BaseSettings):
    """What every service has: its brokers, HTTP listener, logging, bus tuning."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    service_name: ClassVar[str] = "conveyor"

    envs: Envs = Field(
        default_factory=lambda: dict(DEFAULT_ENVS),
        description="environment → AMQP URL, in promotion order (JSON)",
    )
    http_host: str = Field(default="127.0.0.1", description="address of /healthz and /metrics")
    http_port: int = Field(default=8100, ge=0, le=65535, description="port of /healthz and /metrics")
    http_access_log: bool = Field(default=False, description="log every HTTP request")
    log_level: str = Field(default="info", description="debug, info, warning or error")
    log_format: LogFormat = Field(
        default=LogFormat.AUTO, description="json, console, or auto (JSON unless stderr is a terminal)"
    )
    bus: BusSettings = Field(default_factory=BusSettings, description="bus tuning (nested)")

    def selected_envs(self) -> dict[str, str]:
        """The environments this process connects to (all of them, by default)."""
        return dict(self.envs)


class CliSettings(BaseSettings):
    """The ``conveyor`` command's own settings (``CONVEYOR_*``)."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    envs: Envs = Field(
        default_factory=lambda: dict(DEFAULT_ENVS),
        description="environment → AMQP URL, in promotion order (JSON)",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="how long to wait for a broker")
    version_db_url: str = Field(
        default="http://127.0.0.1:8101",
        description="the version-db API (conveyor versions, history, diff, audit)",
    )
    token: SecretStr | None = Field(default=None, description="bearer token for the version-db API")
    deployer_url: str = Field(
        default="http://127.0.0.1:8100",
        description="the deployer API (conveyor promote, approve, promotions, rollback, nodes)",
    )
    deployer_token: SecretStr | None = Field(
        default=None, description="bearer token for the deployer API (default: CONVEYOR_TOKEN)"
    )
    notifier_url: str = Field(
        default="http://127.0.0.1:8102", description="the notifier API (conveyor alerts, conveyor silence)"
    )
    notifier_token: SecretStr | None = Field(
        default=None, description="bearer token for the notifier API (default: CONVEYOR_TOKEN)"
    )


def _default_node_name() -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return name or "node"


class NodeAgentSettings(ServiceSettings):
    """An agent on one node, in one environment."""

    env: str = Field(default="dev", description="the environment this node belongs to")
    node: str = Field(
        default_factory=_default_node_name,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="this node's inventory name (routing-key safe)",
        json_schema_extra={"doc_default": "the host name, lower-cased"},
    )

    @model_validator(mode="after")
    def _env_is_known(self) -> NodeAgentSettings:
        if self.env not in self.envs:
            raise ValueError(f"env {self.env!r} is not one of the configured envs: {', '.join(self.envs)}")
        return self

    def selected_envs(self) -> dict[str, str]:
        return {self.env: self.envs[self.env]}


def redact_value(value: Any) -> Any:
    """Plain, JSON-ready data with secrets masked: SecretStr and URL passwords."""
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else ""
    if isinstance(value, BaseModel):
        return {name: redact_value(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    return value


def redacted(settings: BaseModel) -> dict[str, Any]:
    """The settings as plain data with secrets masked."""
    result = redact_value(settings)
    assert isinstance(result, dict)
    return result


S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_class: type[S]) -> S:
    """Read the settings, or exit with one line per bad setting naming its variable."""
    try:
        return settings_class()
    except ValidationError as exc:
        prefix = str(settings_class.model_config.get("env_prefix", ""))
        what = getattr(settings_class, "service_name", settings_class.__name__)
        print(f"error: invalid configuration of {what}:", file=sys.stderr)
        for error in exc.errors(include_url=False):
            name = "__".join(str(part) for part in error["loc"] if isinstance(part, str)).upper()
            variable = f"{prefix}{name}" if name else prefix.rstrip("_")
            print(f"  {variable}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
