"""Facts about messages that both renderings state: summaries, routing keys, examples, headers."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from conveyor.bus.consumer import (
    ATTEMPTS_HEADER,
    DEAD_LETTER_ERROR_HEADER,
    DEAD_LETTER_REASON_HEADER,
    LAST_ERROR_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
)
from conveyor.contracts.catalogue import DeadLetterReason
from conveyor.contracts.docs._schemas import JsonObject
from conveyor.contracts.envelope import Envelope, Payload

COMMAND = "conveyor contracts docs"

# The example envelope around every example payload: fixed, so the output is deterministic.
_EXAMPLE_ID = UUID("6f1c8a2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b")
_EXAMPLE_CORRELATION = UUID("0e7d5c4b-3a29-4817-9605-f4e3d2c1b0a9")
_EXAMPLE_AT = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
_EXAMPLE_ENV = "qa"
_EXAMPLE_SOURCE = "deployer"
_EXAMPLE_ACTOR = "ada"


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
