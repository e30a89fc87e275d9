"""Which payload model each ``(type, schema_version)`` on the wire maps to."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from conveyor.contracts.envelope import (
    Envelope,
    MalformedMessage,
    Payload,
    UnknownMessageType,
    UnsupportedSchemaVersion,
    check_envelope,
    load_object,
    validate_envelope,
)

__all__ = ["Registry"]


class Registry:
    """Maps message types and schema versions to payload models."""

    def __init__(self, models: Iterable[type[Payload]] = ()) -> None:
        self._models: dict[str, dict[int, type[Payload]]] = {}
        for model in models:
            self.register(model)

    def register(self, model: type[Payload]) -> None:
        versions = self._models.setdefault(model.message_type, {})
        if model.schema_version in versions:
            raise ValueError(
                f"{model.message_type} v{model.schema_version} is already registered "
                f"as {versions[model.schema_version].__name__}"
            )
        versions[model.schema_version] = model

    def model_for(self, message_type: str, schema_version: int) -> type[Payload]:
        versions = self._models.get(message_type)
        if versions is None:
            raise UnknownMessageType(
                f"unknown message type {message_type!r}; known types: {', '.join(sorted(self._models))}"
            )
        model = versions.get(schema_version)
        if model is None:
            known = ", ".join(f"v{v}" for v in sorted(versions))
            raise UnsupportedSchemaVersion(
                f"{message_type} schema v{schema_version} is not supported; this build reads {known}"
            )
        return model

    def decode(self, body: bytes) -> Envelope[Payload]:
        """Bytes from the wire → a typed envelope, or a ``ContractError`` saying why not."""
        data = load_object(body)
        message_type, version = data.get("type"), data.get("schema_version")
        if not isinstance(message_type, str) or type(version) is not int:
            check_envelope(data)  # names missing or ill-typed fields
            raise MalformedMessage(
                "envelope invalid: type must be a string and schema_version an integer, "
                f"not {message_type!r} and {version!r}",
                message_id=str(data["id"]),
            )
        try:
            model = self.model_for(message_type, version)
        except (UnknownMessageType, UnsupportedSchemaVersion) as exc:
            check_envelope(data)  # a broken envelope is reported as such first
            exc.message_id = str(data["id"])
            raise
        return validate_envelope(data, model)

    def __iter__(self) -> Iterator[type[Payload]]:
        for message_type in sorted(self._models):
            versions = self._models[message_type]
            for version in sorted(versions):
                yield versions[version]

    def __contains__(self, message_type: object) -> bool:
        return message_type in self._models
