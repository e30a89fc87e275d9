"""Settings tables in the READMEs, generated from the settings classes.

Each service README holds a block between ``<!-- conveyor:settings:begin -->``
and ``<!-- conveyor:settings:end -->``; ``conveyor config docs`` rewrites it
and ``--check`` fails when one is stale, so the documented variables,
defaults and meanings are always the ones the code reads.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from conveyor.settings import CliSettings, redact_value

__all__ = ["BEGIN", "END", "main", "readme_targets", "render_table", "settings_rows"]

BEGIN = "<!-- conveyor:settings:begin -->"
END = "<!-- conveyor:settings:end -->"


def _default(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("doc_default"), str):
        return str(extra["doc_default"])
    value: Any = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):  # a default is public: show it
        value = value.get_secret_value()
    value = redact_value(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


def settings_rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, nested ones flattened."""
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name}".upper()
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from settings_rows(annotation, f"{variable}__")
            continue
        yield variable, _default(field), field.description or ""


def render_table(settings_class: type[BaseSettings]) -> str:
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, default, meaning in settings_rows(settings_class, prefix):
        lines.append(f"| `{variable}` | `{default}` | {meaning} |")
    return "\n".join(lines)


def readme_targets(root: Path) -> list[tuple[Path, type[BaseSettings]]]:
    """The CLI's README and each installed service's README, with its settings class."""
    targets: list[tuple[Path, type[BaseSettings]]] = [(root / "shared" / "README.md", CliSettings)]
    for entry in sorted(entry_points(group="conveyor.services"), key=lambda e: e.name):
        settings_class = entry.load()
        targets.append((root / "services" / entry.name / "README.md", settings_class))
    return targets


def _with_table(text: str, table: str, path: Path) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {BEGIN} … {END} block to fill")
    return f"{text[: start + len(BEGIN)]}\n{table}\n{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    root = Path(args[args.index("--root") + 1]) if "--root" in args else Path()
    stale = 0
    for path, settings_class in readme_targets(root):
        current = path.read_text()
        wanted = _with_table(current, render_table(settings_class), path)
        if current == wanted:
            continue
        if check:
            print(f"stale: {path} (run `conveyor config docs`)", file=sys.stderr)
            stale += 1
        else:
            path.write_text(wanted)
            print(f"wrote {path}")
    return 1 if stale else 0
