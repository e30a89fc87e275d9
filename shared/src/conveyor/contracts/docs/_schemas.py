"""The catalogue as JSON schemas: one specialised envelope per message, named schemas shared by all.

Pydantic gives each ``Envelope[Model]`` a schema with its own ``$defs``; these are merged into
one set of named schemas (AsyncAPI ``components/schemas``), renaming a def only when two
messages define different schemas under the same name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.contracts.envelope import Envelope, Payload
from conveyor.contracts.registry import Registry

JsonObject = dict[str, Any]

_DEFS_PREFIX = "#/$defs/"
_SCHEMAS_PREFIX = "#/components/schemas/"
_HEADERS_SCHEMA = "AmqpHeaders"
_NAME_UNSAFE = re.compile(r"[^\w.\-]")


@dataclass(frozen=True)
class _Message:
    model: type[Payload]
    key: str  # "<type>.v<schema_version>": the AsyncAPI message id
    envelope: JsonObject  # the specialised envelope schema, its refs pointing into ``schemas``
    payload_schema: str  # the payload model's name in ``schemas``


@dataclass(frozen=True)
class _Catalogue:
    messages: tuple[_Message, ...]
    schemas: dict[str, JsonObject]  # named schemas shared by the messages, sorted by name


def _envelope_of(model: type[Payload]) -> type[Envelope[Payload]]:
    return Envelope[model]  # type: ignore[valid-type]


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _refs(node: Any) -> Iterator[str]:
    """Names of the ``$defs`` that ``node`` refers to, anywhere inside it."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_DEFS_PREFIX):
                yield value.removeprefix(_DEFS_PREFIX)
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _identity(defs: Mapping[str, JsonObject], name: str) -> str:
    """A def together with every def it reaches: equal identities mean equal schemas."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_refs(defs[current]))
    return json.dumps({key: defs[key] for key in sorted(seen)}, sort_keys=True)


def _retarget(node: Any, names: Mapping[str, str]) -> Any:
    """A copy of ``node`` whose ``#/$defs/X`` refs point at ``#/components/schemas/<new name of X>``."""
    if isinstance(node, dict):
        return {
            key: (
                _SCHEMAS_PREFIX + names[value.removeprefix(_DEFS_PREFIX)]
                if key == "$ref" and isinstance(value, str) and value.startswith(_DEFS_PREFIX)
                else _retarget(value, names)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_retarget(item, names) for item in node]
    return node


def _wire_envelope(schema: JsonObject) -> JsonObject:
    """Fields the envelope generates when omitted (``id``, ``occurred_at``) are always on the wire."""
    required = set(schema.get("required", []))
    generated = {name for name, field in Envelope.model_fields.items() if field.default_factory is not None}
    return {**schema, "required": [name for name in schema["properties"] if name in required | generated]}


def _pinned(schema: JsonObject, model: type[Payload]) -> JsonObject:
    """The envelope schema with ``type`` and ``schema_version`` fixed to the model's."""
    properties = dict(schema["properties"])
    properties["type"] = {**properties["type"], "const": model.message_type}
    properties["schema_version"] = {**properties["schema_version"], "const": model.schema_version}
    return _wire_envelope({**schema, "properties": properties})


def _schema_names(identities: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """For each message, def name → unique component name; a name stays as is unless it is ambiguous."""
    variants: dict[str, set[str]] = {}
    for per_message in identities:
        for name, identity in per_message.items():
            variants.setdefault(name, set()).add(identity)

    def unique(name: str, identity: str) -> str:
        safe = _NAME_UNSAFE.sub("_", name)
        if len(variants[name]) == 1:
            return safe
        return f"{safe}.{hashlib.sha256(identity.encode()).hexdigest()[:8]}"

    return [
        {name: unique(name, identity) for name, identity in per_message.items()} for per_message in identities
    ]


def _build(registry: Registry) -> _Catalogue:
    models = list(registry)
    raw = [_envelope_of(model).model_json_schema() for model in models]
    all_defs: list[JsonObject] = [schema.pop("$defs", {}) for schema in raw]
    identities = [{name: _identity(defs, name) for name in defs} for defs in all_defs]
    names = _schema_names(identities)
    schemas: dict[str, JsonObject] = {}
    messages = []
    for model, schema, defs, renames in zip(models, raw, all_defs, names, strict=True):
        for name, definition in defs.items():
            schemas[renames[name]] = _retarget(definition, renames)
        envelope = _pinned(_retarget(schema, renames), model)
        payload = _ref_name(envelope["properties"]["payload"]["$ref"])
        key = f"{model.message_type}.v{model.schema_version}"
        messages.append(_Message(model=model, key=key, envelope=envelope, payload_schema=payload))
    if _HEADERS_SCHEMA in schemas:
        raise ValueError(f"a model is named {_HEADERS_SCHEMA}, which the AsyncAPI document reserves")
    return _Catalogue(messages=tuple(messages), schemas=dict(sorted(schemas.items())))
