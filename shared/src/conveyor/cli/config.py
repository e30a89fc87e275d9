"""``conveyor config show``: the effective configuration, secrets redacted."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

from pydantic_settings import BaseSettings
from rich.table import Table

from conveyor.cli.output import console, error
from conveyor.settings import CliSettings, load_settings, redacted

__all__ = ["show"]

ENTRY_POINT_GROUP = "conveyor.services"


def _settings_class(service: str | None) -> type[BaseSettings] | None:
    if service is None:
        return CliSettings
    installed = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    entry = installed.get(service)
    if entry is None:
        known = ", ".join(sorted(installed)) or "none"
        error(f"no service {service!r} is installed here; installed services: {known}")
        return None
    loaded = entry.load()
    assert isinstance(loaded, type)
    assert issubclass(loaded, BaseSettings)
    return loaded


def _flatten(data: dict[str, object], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "envs":
            rows.extend(_flatten(value, f"{name}."))
        else:
            rows.append((name, json.dumps(value) if not isinstance(value, str) else value))
    return rows


def show(service: str | None, *, as_json: bool) -> int:
    settings_class = _settings_class(service)
    if settings_class is None:
        return 2
    data = redacted(load_settings(settings_class))
    if as_json:
        console.print_json(json.dumps(data))
        return 0
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    table = Table("setting", "value", title=f"{service or 'conveyor CLI'} ({prefix}*)")
    for name, value in _flatten(data):
        table.add_row(name, value)
    console.print(table)
    return 0
