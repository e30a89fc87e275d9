"""Generate ``docs/messages.md`` and ``docs/asyncapi.yaml`` from the message catalogue.

Run ``conveyor contracts docs`` after changing a model; ``conveyor contracts docs
--check`` fails when the files on disk are not what would be generated (CI).
Both renderings are deterministic: the same catalogue gives byte-identical text.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import inspect
import itertools
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

import yaml

from conveyor.bus.consumer import (
    ATTEMPTS_HEADER,
    DEAD_LETTER_ERROR_HEADER,
    DEAD_LETTER_REASON_HEADER,
    LAST_ERROR_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
)
from conveyor.bus.topology import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    RETRY_EXCHANGE,
    exchange_for,
)
from conveyor.contracts.catalogue import CATALOGUE, DeadLetterReason
from conveyor.contracts.envelope import Envelope, Payload
from conveyor.contracts.examples import EXAMPLES
from conveyor.contracts.registry import Registry
from conveyor.settings import DEFAULT_ENVS

__all__ = [
    "ASYNCAPI_FILE",
    "COMMAND",
    "MARKDOWN_FILE",
    "generate",
    "main",
    "render_asyncapi",
    "render_markdown",
]

COMMAND = "conveyor contracts docs"
MARKDOWN_FILE = "messages.md"
ASYNCAPI_FILE = "asyncapi.yaml"
DEFAULT_OUT = Path("docs")

JsonObject = dict[str, Any]

_DEFS_PREFIX = "#/$defs/"
_SCHEMAS_PREFIX = "#/components/schemas/"
_HEADERS_SCHEMA = "AmqpHeaders"
_AMQP_BINDING_VERSION = "0.3.0"
_NAME_UNSAFE = re.compile(r"[^\w.\-]")

# The example envelope around every example payload: fixed, so the output is deterministic.
_EXAMPLE_ID = UUID("6f1c8a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b")
_EXAMPLE_CORRELATION = UUID("0e7d5c4b-3a29-4817-9605-f4e3d2c1b0a9")
_EXAMPLE_AT = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
_EXAMPLE_ENV = "qa"
_EXAMPLE_SOURCE = "deployer"
_EXAMPLE_ACTOR = "ada"

# What each envelope field means, for fields whose model declares no description.
_ENVELOPE_MEANINGS: Mapping[str, str] = {
    "id": "Unique id of this message; consumers de-duplicate on it. Mirrored in the AMQP `message_id`.",
    "type": "The message type, `<domain>.<verb>`; with `schema_version` it selects the payload model. "
    "Mirrored in the AMQP `type`.",
    "schema_version": "Version of the payload schema for this type.",
    "occurred_at": "When the fact happened or the command was issued (timezone-aware ISO 8601).",
    "env": "The environment the message belongs to (`dev`, `qa`, `prod`); it is only published there.",
    "source": "The service or agent that published the message. Mirrored in the AMQP `app_id`.",
    "correlation_id": "Id of the first message of the flow this one belongs to; a new flow starts with "
    "its own `id`. Mirrored in the AMQP `correlation_id`.",
    "causation_id": "Id of the message that caused this one, if any.",
    "actor": "Who the flow runs for (a person or a system); agents check it on signed commands.",
    "payload": "The message body: its fields depend on `type` and `schema_version` "
    "(see [Messages](#messages)).",
}

# (header, JSON schema, meaning): set by the bus on copies sent to a delay or dead-letter queue.
_HEADERS: tuple[tuple[str, JsonObject, str], ...] = (
    (ATTEMPTS_HEADER, {"type": "integer", "minimum": 1}, "how many times a handler failed on it"),
    (LAST_ERROR_HEADER, {"type": "string", "maxLength": 500}, "the last handler error (retries)"),
    (
        ORIGINAL_ROUTING_KEY_HEADER,
        {"type": "string"},
        "the routing key it was first published with",
    ),
    (
        DEAD_LETTER_REASON_HEADER,
        {"type": "string", "enum": [reason.value for reason in DeadLetterReason]},
        "why it was dead-lettered",
    ),
    (DEAD_LETTER_ERROR_HEADER, {"type": "string", "maxLength": 2000}, "the error it was dead-lettered for"),
)


# -- the catalogue as JSON schemas -----------------------------------------------


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


# -- facts about a message ---------------------------------------------------------


def _doc(model: type[Any]) -> str:
    return inspect.cleandoc(model.__doc__) if model.__doc__ else ""


def _summary(model: type[Any]) -> str:
    return _doc(model).split("\n\n", 1)[0].replace("\n", " ")


def _routing_key(model: type[Payload], placeholder: str = "<{}>") -> str:
    if model.target_field is None:
        return model.message_type
    return f"{model.message_type}.{placeholder.format(model.target_field)}"


def _example_for(model: type[Payload], examples: Mapping[str, Payload]) -> JsonObject | None:
    """The model's example in a fixed envelope, as JSON data; None when there is none for this version."""
    payload = examples.get(model.message_type)
    if type(payload) is not model:
        return None
    envelope = Envelope[Payload](
        id=_EXAMPLE_ID,
        type=model.message_type,
        schema_version=model.schema_version,
        occurred_at=_EXAMPLE_AT,
        env=_EXAMPLE_ENV,
        source=_EXAMPLE_SOURCE,
        correlation_id=_EXAMPLE_CORRELATION,
        causation_id=_EXAMPLE_CORRELATION,
        actor=_EXAMPLE_ACTOR,
        payload=payload,
    )
    data = envelope.model_dump(mode="json", exclude={"payload"})
    data["payload"] = payload.model_dump(mode="json")
    return data


# -- markdown: types and constraints -------------------------------------------------


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _code(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _object_type(schema: Mapping[str, Any]) -> str:
    values = schema.get("additionalProperties")
    patterns = schema.get("patternProperties")
    if isinstance(patterns, dict) and len(patterns) == 1:
        values = next(iter(patterns.values()))
    if isinstance(values, dict):
        return f"map of string to {_type_text(values)}"
    return "object"


def _type_text(schema: Mapping[str, Any]) -> str:
    """A readable type: ``string (uuid) or null``, ``array of string``, a link to a named type."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{_slug(name)})"
    options = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if options:
        return " or ".join(_type_text(option) for option in options)
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type_text(schema.get('items', {}))}"
    if kind == "object":
        return _object_type(schema)
    if isinstance(kind, str):
        return f"{kind} ({schema['format']})" if "format" in schema else kind
    return "any"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _size(schema: Mapping[str, Any], low: str, high: str, noun: str) -> list[str]:
    if low in schema and high in schema:
        return [f"{schema[low]}\N{EN DASH}{_plural(schema[high], noun)}"]
    if low in schema:
        return [f"at least {_plural(schema[low], noun)}"]
    if high in schema:
        return [f"at most {_plural(schema[high], noun)}"]
    return []


_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def _value_constraints(schema: Mapping[str, Any]) -> list[str]:
    parts = []
    if "const" in schema:
        parts.append(f"always {_code(schema['const'])}")
    if "enum" in schema:
        parts.append("one of " + ", ".join(_code(value) for value in schema["enum"]))
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    parts += _size(schema, "minLength", "maxLength", "character")
    parts += _size(schema, "minItems", "maxItems", "item")
    bounds = [f"{symbol} {schema[key]}" for key, symbol in _BOUNDS if key in schema]
    if bounds:
        parts.append(", ".join(bounds))
    return parts


def _nested_constraints(schema: Mapping[str, Any]) -> list[str]:
    parts = []
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            parts += _constraints(option)
    if "items" in schema and (items := _constraints(schema["items"])):
        parts.append("items: " + ", ".join(items))
    for pattern, values in schema.get("patternProperties", {}).items():
        parts.append(f"keys: pattern `{pattern}`")
        if constraints := _constraints(values):
            parts.append("values: " + ", ".join(constraints))
    return parts


def _constraints(schema: Mapping[str, Any]) -> list[str]:
    return _value_constraints(schema) + _nested_constraints(schema)


def _field_table(schema: Mapping[str, Any], meanings: Mapping[str, str] | None = None) -> str:
    properties: Mapping[str, JsonObject] = schema.get("properties", {})
    if not properties:
        return "_No fields._"
    required = set(schema.get("required", []))
    rows = ["| Field | Type | Required | Description |", "| --- | --- | --- | --- |"]
    for name, prop in properties.items():
        meaning = (prop.get("description") or (meanings or {}).get(name, "")).rstrip(".")
        extra = list(_constraints(prop))
        if "default" in prop:
            extra.append(f"default {_code(prop['default'])}")
        text = "; ".join(part for part in [meaning, *extra] if part)
        cells = [f"`{name}`", _type_text(prop), "yes" if name in required else "no", text]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(rows)


# -- markdown: sections -----------------------------------------------------------------


def _md_header() -> str:
    return (
        "# Conveyor message catalogue\n\n"
        f"<!-- Generated by `{COMMAND}` from conveyor.contracts; do not edit by hand. -->\n\n"
        "> **Generated file — do not edit.** Change the models in `shared/src/conveyor/contracts/`, "
        f"then run `{COMMAND}`; CI runs `{COMMAND} --check`. The same catalogue is described as "
        "AsyncAPI 3 in [`asyncapi.yaml`](asyncapi.yaml)."
    )


def _md_envelope() -> str:
    schema = _wire_envelope(Envelope.model_json_schema())
    schema["properties"] = {**schema["properties"], "payload": {"type": "object"}}
    return (
        "## The envelope\n\n"
        f"{_doc(Envelope)}\n\n"
        "Every message is one JSON object, the envelope, with the message's fields in `payload`. "
        "Unknown fields are rejected at every level.\n\n" + _field_table(schema, _ENVELOPE_MEANINGS)
    )


def _md_routing() -> str:
    return (
        "## Exchanges and routing keys\n\n"
        "| Exchange | Type | Carries | Routing key |\n"
        "| --- | --- | --- | --- |\n"
        f"| `{EVENTS_EXCHANGE}` | topic | events: facts that happened, for any number of consumers | "
        "`<domain>.<verb>`, the message type |\n"
        f"| `{COMMANDS_EXCHANGE}` | topic | commands: requests for one recipient to act | "
        "`<domain>.<verb>.<target>`, the type plus the value of the payload's target field "
        "(`.<node>`) |\n"
        f"| `{RETRY_EXCHANGE}` | direct | copies of messages whose handler failed, on their way to a "
        "delay queue that sends them back to the consumer's queue only | the delay queue's name |\n"
        f"| `{DEAD_LETTER_EXCHANGE}` | direct | messages a consumer gave up on, parked in its "
        "dead-letter queue `<queue>.dead` | the consumer's queue name |\n\n"
        "The routing key is `<domain>.<verb>[.<target>]`: the message type, plus the target for messages "
        "that name one (`firewall.disable.qa-web-1`). Names in routing keys contain no dots, so a "
        "consumer binds its durable queue with patterns such as `changeset.*`, `deployment.#` or "
        "`firewall.*.qa-web-1`. Each environment is a RabbitMQ virtual host of its own."
    )


def _md_amqp() -> str:
    headers = "\n".join(f"| `{name}` | {meaning} |" for name, _, meaning in _HEADERS)
    return (
        "## AMQP properties\n\n"
        "Brokers and tools can route and trace without parsing the body: the bus mirrors envelope "
        "fields in the AMQP message properties.\n\n"
        "| AMQP property | Value |\n"
        "| --- | --- |\n"
        "| `message_id` | the envelope's `id` |\n"
        "| `type` | the envelope's `type` |\n"
        "| `correlation_id` | the envelope's `correlation_id` |\n"
        "| `app_id` | the envelope's `source` |\n"
        "| `content_type` | `application/json` |\n"
        "| `delivery_mode` | `2`, persistent |\n\n"
        "Messages are published `mandatory` with publisher confirms. Copies that go through a retry "
        "or dead-letter queue carry these headers:\n\n"
        "| Header | Meaning |\n"
        "| --- | --- |\n" + headers
    )


def _md_heading(message: _Message, catalogue: _Catalogue) -> str:
    versions = sum(
        1 for other in catalogue.messages if other.model.message_type == message.model.message_type
    )
    suffix = f" v{message.model.schema_version}" if versions > 1 else ""
    return f"`{message.model.message_type}`{suffix}"


def _md_index(catalogue: _Catalogue) -> str:
    rows = [
        "| Type | Kind | Version | Exchange | Routing key | Summary |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for message in catalogue.messages:
        model = message.model
        heading = _md_heading(message, catalogue)
        cells = [
            f"[{model.message_type}](#{_slug(heading)})",
            model.kind.value,
            str(model.schema_version),
            f"`{exchange_for(model.kind)}`",
            f"`{_routing_key(model)}`",
            _summary(model),
        ]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "## Messages\n\n" + "\n".join(rows)


def _md_facts(model: type[Payload]) -> str:
    routing = f"`{_routing_key(model)}`"
    if model.target_field is not None:
        routing += f", where `<{model.target_field}>` is the payload's `{model.target_field}`"
    return (
        f"- **Kind:** {model.kind.value}\n"
        f"- **Schema version:** {model.schema_version}\n"
        f"- **Exchange:** `{exchange_for(model.kind)}` (topic)\n"
        f"- **Routing key:** {routing}\n"
        f"- **Model:** `{model.__module__}.{model.__qualname__}`"
    )


def _md_message(message: _Message, catalogue: _Catalogue, examples: Mapping[str, Payload]) -> str:
    model = message.model
    example = _example_for(model, examples)
    rendered = (
        f"```json\n{json.dumps(example, indent=2, ensure_ascii=False)}\n```"
        if example is not None
        else "_No example._"
    )
    return (
        f"### {_md_heading(message, catalogue)}\n\n"
        f"{_md_facts(model)}\n\n"
        f"{_doc(model) or '_The model has no docstring._'}\n\n"
        "**Payload**\n\n"
        f"{_field_table(catalogue.schemas[message.payload_schema])}\n\n"
        f"**Example**\n\n{rendered}"
    )


def _md_type(name: str, schema: Mapping[str, Any]) -> str:
    parts = [f"### {name}"]
    if description := schema.get("description"):
        parts.append(str(description))
    if "enum" in schema:
        values = ", ".join(_code(value) for value in schema["enum"])
        parts.append(f"A {schema.get('type', 'value')}, one of: {values}.")
    elif schema.get("type") == "object":
        parts.append(_field_table(schema))
    else:
        parts.append(f"Type: {_type_text(schema)}")
    return "\n\n".join(parts)


def _md_types(catalogue: _Catalogue) -> str:
    payloads = {message.payload_schema for message in catalogue.messages}
    types = [_md_type(name, schema) for name, schema in catalogue.schemas.items() if name not in payloads]
    intro = "## Types\n\nNamed types used by the payloads above."
    return "\n\n".join([intro, *types]) if types else intro + "\n\n_None._"


def render_markdown(registry: Registry = CATALOGUE, examples: Mapping[str, Payload] = EXAMPLES) -> str:
    """``docs/messages.md``: the envelope, the routing rules and every message, sorted by type."""
    catalogue = _build(registry)
    sections = [
        _md_header(),
        _md_envelope(),
        _md_routing(),
        _md_amqp(),
        _md_index(catalogue),
        *(_md_message(message, catalogue, examples) for message in catalogue.messages),
        _md_types(catalogue),
    ]
    return "\n\n".join(sections) + "\n"


# -- AsyncAPI ----------------------------------------------------------------------------


def _info() -> JsonObject:
    return {
        "title": "Conveyor",
        "version": importlib.metadata.version("conveyor"),
        "description": (
            f"Every event and command Conveyor puts on RabbitMQ. Generated by `{COMMAND}` from "
            "`conveyor.contracts`; do not edit by hand.\n\n"
            f"Events go to the `{EVENTS_EXCHANGE}` topic exchange and commands to `{COMMANDS_EXCHANGE}`, "
            "with the routing key `<domain>.<verb>[.<target>]`. Every message is a JSON envelope "
            "around a typed payload; its `id`, `type`, `correlation_id` and `source` are mirrored in the "
            "AMQP properties `message_id`, `type`, `correlation_id` and `app_id`, and it is published "
            "persistent (delivery mode 2)."
        ),
    }


def _server(env: str, url: str) -> JsonObject:
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    vhost = unquote(parts.path.removeprefix("/")) or "/"
    return {
        "host": f"{parts.hostname}:{port}",
        "protocol": parts.scheme,
        "protocolVersion": "0.9.1",
        "pathname": parts.path or "/",
        "title": env,
        "description": f"RabbitMQ of the `{env}` environment: virtual host `{vhost}`.",
    }


def _servers(envs: Mapping[str, str]) -> JsonObject:
    return {env: _server(env, url) for env, url in envs.items()}


def _channel(message_type: str, messages: Sequence[_Message]) -> JsonObject:
    model = messages[-1].model
    exchange = exchange_for(model.kind)
    channel: JsonObject = {
        "address": _routing_key(model, "{{{}}}"),
        "title": message_type,
        "description": f"`{message_type}` {model.kind.value}s, published on the `{exchange}` topic exchange.",
    }
    if model.target_field is not None:
        channel["parameters"] = {
            model.target_field: {
                "description": f"The payload's `{model.target_field}`: the one recipient of the command.",
                "location": f"$message.payload#/payload/{model.target_field}",
            }
        }
    channel["messages"] = {m.key: {"$ref": f"#/components/messages/{m.key}"} for m in messages}
    channel["bindings"] = {
        "amqp": {
            "is": "routingKey",
            "exchange": {"name": exchange, "type": "topic", "durable": True, "autoDelete": False},
            "bindingVersion": _AMQP_BINDING_VERSION,
        }
    }
    return channel


def _by_type(catalogue: _Catalogue) -> Iterator[tuple[str, list[_Message]]]:
    for message_type, group in itertools.groupby(catalogue.messages, key=lambda m: m.model.message_type):
        yield message_type, list(group)


def _channels(catalogue: _Catalogue) -> JsonObject:
    return {message_type: _channel(message_type, group) for message_type, group in _by_type(catalogue)}


def _operation(message_type: str, messages: Sequence[_Message], action: str) -> JsonObject:
    model = messages[-1].model
    exchange = exchange_for(model.kind)
    if action == "send":
        summary = f"Publish `{message_type}` on `{exchange}`."
        bindings: JsonObject = {"deliveryMode": 2, "mandatory": True}
    else:
        summary = (
            f"Consume `{message_type}` from a durable queue bound to `{exchange}` with its routing key "
            "or a pattern; ack after the handler succeeded."
        )
        bindings = {"ack": True}
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{message_type}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{message_type}/messages/{m.key}"} for m in messages],
        "bindings": {"amqp": {**bindings, "bindingVersion": _AMQP_BINDING_VERSION}},
    }


def _operations(catalogue: _Catalogue) -> JsonObject:
    return {
        f"{message_type}.{action}": _operation(message_type, group, action)
        for message_type, group in _by_type(catalogue)
        for action in ("send", "receive")
    }


def _message(message: _Message, examples: Mapping[str, Payload]) -> JsonObject:
    model = message.model
    result: JsonObject = {"name": model.message_type, "title": model.__name__}
    if summary := _summary(model):
        result["summary"] = summary
    if (doc := _doc(model)) and doc != summary:
        result["description"] = doc
    result |= {
        "contentType": "application/json",
        "correlationId": {
            "description": "The flow this message belongs to; mirrored in the AMQP correlation_id.",
            "location": "$message.payload#/correlation_id",
        },
        "headers": {"$ref": _SCHEMAS_PREFIX + _HEADERS_SCHEMA},
        "payload": message.envelope,
        "bindings": {"amqp": {"messageType": model.message_type, "bindingVersion": _AMQP_BINDING_VERSION}},
    }
    if (example := _example_for(model, examples)) is not None:
        result["examples"] = [{"name": message.key.replace(".", "-"), "payload": example}]
    return result


def _headers_schema() -> JsonObject:
    return {
        "type": "object",
        "description": "AMQP application headers; the bus sets them only on copies sent through a "
        "retry or dead-letter queue.",
        "properties": {name: {**schema, "description": meaning} for name, schema, meaning in _HEADERS},
    }


def _asyncapi(catalogue: _Catalogue, examples: Mapping[str, Payload], envs: Mapping[str, str]) -> JsonObject:
    return {
        "asyncapi": "3.0.0",
        "info": _info(),
        "defaultContentType": "application/json",
        "servers": _servers(envs),
        "channels": _channels(catalogue),
        "operations": _operations(catalogue),
        "components": {
            "schemas": {_HEADERS_SCHEMA: _headers_schema(), **catalogue.schemas},
            "messages": {message.key: _message(message, examples) for message in catalogue.messages},
        },
    }


def render_asyncapi(
    registry: Registry = CATALOGUE,
    examples: Mapping[str, Payload] = EXAMPLES,
    envs: Mapping[str, str] = DEFAULT_ENVS,
) -> str:
    """``docs/asyncapi.yaml``: an AsyncAPI 3.0.0 document, one channel per message type."""
    document = _asyncapi(_build(registry), examples, envs)
    # A JSON round trip copies every shared object, so the YAML has no anchors or aliases.
    plain = json.loads(json.dumps(document))
    header = f"# Generated by `{COMMAND}` from conveyor.contracts; do not edit by hand.\n"
    return header + yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, width=100)


# -- the command ------------------------------------------------------------------------------


def generate(registry: Registry = CATALOGUE, examples: Mapping[str, Payload] = EXAMPLES) -> dict[str, str]:
    """File name → the text it should have."""
    return {
        MARKDOWN_FILE: render_markdown(registry, examples),
        ASYNCAPI_FILE: render_asyncapi(registry, examples),
    }


def _regenerate_command(out: Path) -> str:
    return COMMAND if out == DEFAULT_OUT else f"{COMMAND} --out {out}"


def _check(out: Path, files: Mapping[str, str]) -> int:
    stale = []
    for name, text in files.items():
        path = out / name
        if not path.is_file():
            stale.append(f"{path} is missing")
        elif path.read_text(encoding="utf-8") != text:
            stale.append(f"{path} is stale")
    for line in stale:
        print(line, file=sys.stderr)
    if stale:
        print(f"run `{_regenerate_command(out)}` to regenerate", file=sys.stderr)
        return 1
    print(f"{', '.join(str(out / name) for name in files)} up to date")
    return 0


def _write(out: Path, files: Mapping[str, str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = out / name
        path.write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory to write to (default: docs)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the files differ from what would be generated",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out: Path = args.out
    files = generate()
    return _check(out, files) if args.check else _write(out, files)


if __name__ == "__main__":
    raise SystemExit(main())
