"""``docs/messages.md``: the envelope, the routing rules and every message as Markdown."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from conveyor.bus.topology import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    RETRY_EXCHANGE,
    exchange_for,
)
from conveyor.contracts.catalogue import CATALOGUE
from conveyor.contracts.docs._facts import _HEADERS, COMMAND, _doc, _example_for, _routing_key, _summary
from conveyor.contracts.docs._schemas import (
    JsonObject,
    _build,
    _Catalogue,
    _Message,
    _ref_name,
    _wire_envelope,
)
from conveyor.contracts.envelope import Envelope, Payload
from conveyor.contracts.examples import EXAMPLES
from conveyor.contracts.registry import Registry

__all__ = ["render_markdown"]


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


def _field_table(schema: Mapping[str, Any]) -> str:
    properties: Mapping[str, JsonObject] = schema.get("properties", {})
    if not properties:
        return "_No fields._"
    required = set(schema.get("required", []))
    rows = ["| Field | Type | Required | Description |", "| --- | --- | --- | --- |"]
    for name, prop in properties.items():
        meaning = prop.get("description", "").rstrip(".")
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
    # The generic payload is shown as an object; the messages below say what it holds.
    payload = {"type": "object", "description": schema["properties"]["payload"].get("description", "")}
    schema["properties"] = {**schema["properties"], "payload": payload}
    return (
        "## The envelope\n\n"
        f"{_doc(Envelope)}\n\n"
        "Every message is one JSON object, the envelope, with the message's fields in `payload`. "
        "Unknown fields are rejected at every level.\n\n" + _field_table(schema)
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
    parts = [
        f"### {_md_heading(message, catalogue)}",
        _md_facts(model),
        _doc(model),
        "**Payload**",
        _field_table(catalogue.schemas[message.payload_schema]),
        "**Example**",
        rendered,
    ]
    return "\n\n".join(part for part in parts if part)


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
