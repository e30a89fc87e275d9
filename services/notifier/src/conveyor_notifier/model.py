"""What the notifier works with: the facts of an event, how serious it is, and a message to send.

:func:`facts_of` turns an envelope into :class:`EventFacts` (type, environment, package, version,
node and its labels, actor, severity, the payload); routing rules match on these, templates render
them, grouping keys are made of them. :class:`OutgoingMessage` is what a receiver sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from conveyor.contracts import Envelope

__all__ = ["EventFacts", "MessageKind", "OutgoingMessage", "Severity", "facts_of", "severity_of"]


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return [Severity.INFO, Severity.WARNING, Severity.CRITICAL].index(self)


# Event type → severity; anything else is info. Alerts (open until acknowledged) are the critical ones.
_SEVERITY: dict[str, Severity] = {
    "changeset.failed": Severity.WARNING,
    "deployment.node.failed": Severity.WARNING,
    "deployment.failed": Severity.CRITICAL,
    "drift.detected": Severity.WARNING,
    "node.host_key_changed": Severity.CRITICAL,
    "firewall.disabled": Severity.WARNING,
    "firewall.rejected": Severity.WARNING,
    "message.dead_lettered": Severity.WARNING,
    "rabbitmq.alarm": Severity.CRITICAL,
}


def severity_of(message_type: str, env: str, payload: Mapping[str, Any]) -> Severity:
    """How serious an event is: a firewall opened in prod is critical, and so on (see ``_SEVERITY``)."""
    severity = _SEVERITY.get(message_type, Severity.INFO)
    if message_type == "firewall.disabled" and env == "prod":
        return Severity.CRITICAL
    if message_type == "firewall.rejected" and payload.get("failed"):
        return Severity.CRITICAL
    return severity


@dataclass(frozen=True)
class EventFacts:
    message_id: str
    type: str
    env: str
    occurred_at: datetime
    source: str
    actor: str | None
    correlation_id: str
    severity: Severity
    package: str | None = None
    version: str | None = None
    node: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)

    def field(self, name: str) -> str | None:
        """A fact by name, for grouping keys and rule matching: type, env, package, version, node,
        actor, source, severity, correlation_id, or ``labels.<key>``."""
        if name.startswith("labels."):
            return self.labels.get(name.removeprefix("labels."))
        value = getattr(self, name, None)
        return None if value is None else str(value)


def facts_of(
    envelope: Envelope[Any], node_labels: Mapping[str, Mapping[str, str]] | None = None
) -> EventFacts:
    """The facts of ``envelope``; ``node_labels``: node name → its inventory labels."""
    payload = envelope.payload.model_dump(mode="json")
    node = payload.get("node") if isinstance(payload.get("node"), str) else None
    package = payload.get("package") if isinstance(payload.get("package"), str) else None
    version = payload.get("version") if isinstance(payload.get("version"), str) else None
    return EventFacts(
        message_id=str(envelope.id),
        type=envelope.type,
        env=envelope.env,
        occurred_at=envelope.occurred_at,
        source=envelope.source,
        actor=envelope.actor,
        correlation_id=str(envelope.correlation_id),
        severity=severity_of(envelope.type, envelope.env, payload),
        package=package,
        version=version,
        node=node,
        labels=dict((node_labels or {}).get(node or "", {})),
        payload=payload,
    )


MessageKind = Literal["new", "follow_up", "escalation", "resolution", "fallback"]


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to one receiver: a short subject, a plain-text body, and where to look."""

    subject: str
    body: str
    kind: MessageKind = "new"
    link: str | None = None
    severity: Severity = Severity.INFO
