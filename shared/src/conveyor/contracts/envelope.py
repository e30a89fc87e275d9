"""The message envelope every Conveyor message travels in, and its codec."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar, cast
from uuid import UUID, uuid4

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

__all__ = [
    "ContractError",
    "EnvName",
    "Envelope",
    "InvalidPayload",
    "MalformedMessage",
    "MessageKind",
    "NodeName",
    "Payload",
    "UnknownMessageType",
    "UnsupportedSchemaVersion",
]

# Names that end up inside routing keys: no dots, no wildcards, no spaces.
NodeName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
MessageType = Annotated[str, StringConstraints(pattern=r"^[a-z_]+(\.[a-z_]+)+$")]


class MessageKind(StrEnum):
    """Events state facts that happened; commands ask one recipient to act."""

    EVENT = "event"
    COMMAND = "command"


class Payload(BaseModel):
    """Base of every message body.

    Subclasses declare their wire identity as class keywords::

        class ChangesetCreated(Payload, message_type="changeset.created"):
            ...

    ``target_field`` names the payload field whose value is appended to the
    routing key (``firewall.disable.qa-web-1``), so a command reaches one node.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_type: ClassVar[str]
    schema_version: ClassVar[int]
    kind: ClassVar[MessageKind]
    target_field: ClassVar[str | None]

    def __init_subclass__(
        cls,
        *,
        message_type: str | None = None,
        kind: MessageKind = MessageKind.EVENT,
        schema_version: int = 1,
        target_field: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if message_type is not None:
            cls.message_type = message_type
            cls.kind = kind
            cls.schema_version = schema_version
            cls.target_field = target_field

    def routing_key(self) -> str:
        """``<domain>.<verb>[.<target>]``: the type, plus the target for commands."""
        if self.target_field is None:
            return self.message_type
        return f"{self.message_type}.{getattr(self, self.target_field)}"


P = TypeVar("P", bound=Payload)
Q = TypeVar("Q", bound=Payload)


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[P]):
    """Metadata shared by every message, around a typed payload.

    The AMQP properties mirror ``id`` (message_id), ``type`` and
    ``correlation_id`` so brokers and tools can route and trace without
    parsing the body.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: UUID = Field(
        default_factory=uuid4,
        description="Unique id of this message; consumers de-duplicate on it. AMQP `message_id`.",
    )
    type: MessageType = Field(
        description="`<domain>.<verb>`; with `schema_version` it selects the payload model. AMQP `type`."
    )
    schema_version: int = Field(ge=1, description="Version of the payload schema for this type.")
    occurred_at: AwareDatetime = Field(
        default_factory=_now,
        description="When the fact happened or the command was issued (timezone-aware ISO 8601).",
    )
    env: EnvName = Field(description="The environment the message belongs to; it is published only there.")
    source: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="The service or agent that published the message. AMQP `app_id`."
    )
    correlation_id: UUID = Field(
        description="Id of the first message of the flow this one belongs to (a new flow uses its own "
        "`id`). AMQP `correlation_id`."
    )
    causation_id: UUID | None = Field(default=None, description="Id of the message that caused this one.")
    actor: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None,
        description="Who the flow runs for (a person or a system); agents check it on signed commands.",
    )
    payload: P = Field(description="The body; its fields depend on `type` and `schema_version`.")

    @model_validator(mode="after")
    def _type_matches_payload(self) -> Self:
        payload = self.payload
        if isinstance(payload, Payload) and (
            self.type != payload.message_type or self.schema_version != payload.schema_version
        ):
            raise ValueError(
                f"envelope says {self.type} v{self.schema_version} but carries a "
                f"{payload.message_type} v{payload.schema_version} payload"
            )
        return self

    @classmethod
    def wrap(
        cls,
        payload: P,
        *,
        env: str,
        source: str,
        actor: str | None = None,
        correlation_id: UUID | None = None,
        causation_id: UUID | None = None,
    ) -> Envelope[P]:
        """Put ``payload`` in a new envelope; a new message starts its own correlation."""
        message_id = uuid4()
        envelope: Envelope[P] = envelope_class(type(payload))(
            id=message_id,
            type=payload.message_type,
            schema_version=payload.schema_version,
            env=env,
            source=source,
            actor=actor,
            correlation_id=correlation_id or message_id,
            causation_id=causation_id,
            payload=payload,
        )
        return envelope

    def follow_up(self, payload: Q, *, source: str) -> Envelope[Q]:
        """A message caused by this one: same env, actor and correlation."""
        return Envelope.wrap(
            payload,
            env=self.env,
            source=source,
            actor=self.actor,
            correlation_id=self.correlation_id,
            causation_id=self.id,
        )

    @property
    def routing_key(self) -> str:
        return self.payload.routing_key()

    @property
    def kind(self) -> MessageKind:
        return self.payload.kind

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class _RawEnvelope(BaseModel):
    """The envelope before its payload is known to be of the right type."""

    model_config = ConfigDict(extra="forbid")

    id: UUID
    type: MessageType
    schema_version: int = Field(ge=1)
    occurred_at: AwareDatetime
    env: EnvName
    source: str
    correlation_id: UUID
    causation_id: UUID | None = None
    actor: str | None = None
    payload: dict[str, Any]


class ContractError(ValueError):
    """A message that cannot be turned into a typed envelope; never worth a retry."""

    reason: ClassVar[str] = "invalid"

    def __init__(self, detail: str, *, message_id: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.message_id = message_id


class MalformedMessage(ContractError):
    reason = "malformed"


class UnknownMessageType(ContractError):
    reason = "unknown_type"


class UnsupportedSchemaVersion(ContractError):
    reason = "unsupported_schema_version"


class InvalidPayload(ContractError):
    reason = "invalid_payload"


def _errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "<root>"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def load_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``MalformedMessage`` saying what it is instead."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"body is a JSON {type(data).__name__}, expected an object")
    return data


def check_envelope(data: dict[str, Any]) -> None:
    """Raise ``MalformedMessage`` listing what is wrong with the envelope itself, if anything."""
    try:
        _RawEnvelope.model_validate(data)
    except ValidationError as exc:
        message_id = data.get("id") if isinstance(data.get("id"), str) else None
        raise MalformedMessage(f"envelope invalid: {_errors(exc)}", message_id=message_id) from None


@functools.cache
def envelope_class(model: type[P]) -> type[Envelope[P]]:
    """``Envelope[model]``, looked up once per model rather than once per message."""
    typed: Any = Envelope[model]  # type: ignore[valid-type]
    return cast("type[Envelope[P]]", typed)


def validate_envelope(data: dict[str, Any], model: type[P]) -> Envelope[P]:
    """Validate the whole message in one pass; errors name the envelope or the payload."""
    try:
        return envelope_class(model).model_validate(data)
    except ValidationError as exc:
        message_id = str(data.get("id"))
        if all(error["loc"][:1] == ("payload",) for error in exc.errors()):
            raise InvalidPayload(
                f"payload of {data.get('type')} v{data.get('schema_version')} invalid: {_errors(exc)}",
                message_id=message_id,
            ) from None
        raise MalformedMessage(f"envelope invalid: {_errors(exc)}", message_id=message_id) from None
