"""Messages from events: Jinja2 templates render one event, or a group of them, into a subject and a body.

Which template
    The first event's type picks it, the most specific name first: for ``deployment.node.failed``
    that is ``deployment.node.failed.j2``, ``deployment.node.j2``, ``deployment.j2``, then
    ``default.j2``. Each name is looked for in the operator's directory before the packaged
    templates, so a file there replaces the packaged one of the same name; an override can build on
    the original with ``{% extends "packaged/deployment.j2" %}``.

What a template renders
    ``Subject: <text>``, a blank line, then the body. The subject runs to that first blank line (its
    lines joined with spaces, like a folded mail header, so ``{% if %}`` may span lines), is cut to
    120 characters, and gets the kind's prefix here, not in the template: ``update:`` (follow_up),
    ``ESCALATED:`` (escalation), ``resolved:`` (resolution). A ``note`` (the reason for a fallback,
    say) goes before the body. The body is plain text: nothing is escaped; trailing spaces and
    repeated blank lines are squeezed out. Blocks are trimmed (``trim_blocks``, ``lstrip_blocks``):
    a line holding only a tag leaves nothing, and ``+%}`` keeps the newline after a tag. The packaged
    templates extend ``_base.j2``, which writes the ``[env]`` tag of the subject and, around the
    blocks ``subject``, ``summary`` and ``details``, the facts, the table of nodes and the link.

Variables (a name not defined is an error: :class:`TemplateRenderError` names the file and line)
    ``event``, ``last``, ``events``: the first and last :class:`~conveyor_notifier.model.EventFacts`,
    and all of them in order; ``type``, ``env``, ``actor``, ``node``, ``package``, ``version``,
    ``payload``: the first event's; ``who``: its actor, else the person its payload names
    (``requested_by``, ``author`` ...), else None; ``severity``: the highest of the group; ``kind``,
    ``note``; ``link`` (below, or None); ``nodes``: a :class:`NodeResult` per node the group tells
    of, failures first; ``counts``: :class:`NodeCounts` of those.

Filters
    ``when`` (``2026-11-26 09:30 UTC``), ``clock(reference)`` (``14:30 UTC``, with the date when it
    is not ``reference``'s day), ``duration`` (``4.2 s``, ``3 min 5 s``), ``first_line(limit=120)``,
    ``names(limit=5)`` (``a, b, c and 4 more``), ``node_table``, ``fields(skip=())`` (a payload as
    ``name: value`` lines, secrets left out), ``of_type(*types)`` (the events of those types),
    ``type_counts`` (``deployment.started, deployment.node.succeeded (20)``).

Links (``link_base`` is the deployer's URL; without it there is no link)
    ``{link_base}/promotions/{deployment_id}`` for an event with a ``deployment_id`` (every
    deployment event, and changesets applied by one), ``{link_base}/firewall/requests/{request_id}``
    for a firewall event with a request id (``{link_base}/firewall/audit/{node}`` without one), and
    ``{link_base}/nodes/host-keys`` for ``node.host_key_changed``.
"""

from __future__ import annotations

import re
import traceback
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    PrefixLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
)

from conveyor_notifier.model import EventFacts, MessageKind, OutgoingMessage, Severity

__all__ = ["NodeCounts", "NodeResult", "TemplateRenderError", "Templates", "node_results"]

SUBJECT_MAX = 120
_KIND_PREFIX: dict[MessageKind, str] = {
    "new": "",
    "follow_up": "update: ",
    "escalation": "ESCALATED: ",
    "resolution": "resolved: ",
    "fallback": "",
}
_PEOPLE = ("requested_by", "approved_by", "author", "blocked_by", "unblocked_by")


class TemplateRenderError(Exception):
    """A template could not make a message: a syntax error, an undefined name, no ``Subject:`` line."""


@dataclass(frozen=True)
class NodeResult:
    """How one node fared (``succeeded``, ``failed``, ``rolled_back``, ``unreachable``, or ``pending``:
    in a started deployment's waves, nothing heard of it yet), and a detail."""

    node: str
    outcome: str
    detail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.outcome == "succeeded"

    @property
    def pending(self) -> bool:
        return self.outcome == "pending"


@dataclass(frozen=True)
class NodeCounts:
    total: int
    succeeded: int
    failed: int  # failed, rolled back or unreachable: every outcome but succeeded and pending
    pending: int
    by_outcome: Mapping[str, int]

    @classmethod
    def of(cls, results: Sequence[NodeResult]) -> NodeCounts:
        by_outcome = Counter(r.outcome for r in results)
        succeeded, pending = by_outcome["succeeded"], by_outcome["pending"]
        return cls(len(results), succeeded, len(results) - succeeded - pending, pending, dict(by_outcome))

    @property
    def breakdown(self) -> str:
        """The nodes that did not succeed, by outcome: ``2 failed, 1 rolled back, 3 pending``."""
        order = [o for o in _BAD_OUTCOMES if o in self.by_outcome]
        order += [*sorted(set(self.by_outcome) - {*_BAD_OUTCOMES, "succeeded", "pending"}), "pending"]
        return ", ".join(
            f"{self.by_outcome[o]} {o.replace('_', ' ')}" for o in order if self.by_outcome.get(o)
        )


_BAD_OUTCOMES = ("failed", "rolled_back", "unreachable")


class Templates:
    """The packaged templates, behind the operator's own in ``directory`` (same file names)."""

    def __init__(self, directory: Path | None = None, *, link_base: str | None = None) -> None:
        packaged = PackageLoader("conveyor_notifier", "templates")
        loaders: list[BaseLoader] = [packaged, PrefixLoader({"packaged": packaged})]
        if directory is not None:
            if not directory.is_dir():
                raise ValueError(
                    f"templates directory {directory} is not a directory; create it, or unset "
                    "templates_dir to use the packaged templates"
                )
            loaders.insert(0, FileSystemLoader(directory))
        self.link_base = link_base.rstrip("/") if link_base else None
        self._env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=False,  # noqa: S701 -- plain-text messages, not HTML: nothing to escape
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self._env.filters.update(_FILTERS)

    def render(
        self, events: Sequence[EventFacts], *, kind: MessageKind = "new", note: str | None = None
    ) -> OutgoingMessage:
        """One message about ``events`` (the first picks the template), for a receiver to send."""
        if not events:
            raise ValueError("a message needs at least one event; none were given")
        template = self._template_for(events[0].type)
        context = self._context(events, kind=kind, note=note)
        try:
            text = template.render(context)
        except TemplateError as exc:
            raise _render_error(exc, template, events[0].type) from exc
        subject, body = _split(text, template)
        if note:
            body = f"{note.strip()}\n\n{body}"
        return OutgoingMessage(
            subject=_one_line(_KIND_PREFIX[kind] + subject),
            body=body,
            kind=kind,
            link=context["link"],
            severity=context["severity"],
        )

    def template_names(self, message_type: str) -> list[str]:
        """The names tried for ``message_type``, in order."""
        parts = message_type.split(".")
        return [".".join(parts[:n]) + ".j2" for n in range(len(parts), 0, -1)] + ["default.j2"]

    def link_for(self, event: EventFacts) -> str | None:
        """Where to read more about ``event`` (see the module's docstring), or None."""
        if self.link_base is None:
            return None
        payload = event.payload
        if payload.get("deployment_id"):
            return f"{self.link_base}/promotions/{payload['deployment_id']}"
        if event.type.startswith("firewall."):
            if payload.get("request_id"):
                return f"{self.link_base}/firewall/requests/{payload['request_id']}"
            return f"{self.link_base}/firewall/audit/{event.node}" if event.node else None
        if event.type == "node.host_key_changed":
            return f"{self.link_base}/nodes/host-keys"
        return None

    def _template_for(self, message_type: str) -> Template:
        try:
            return self._env.select_template(self.template_names(message_type))
        except TemplateError as exc:
            raise _render_error(exc, None, message_type) from exc

    def _context(
        self, events: Sequence[EventFacts], *, kind: MessageKind, note: str | None
    ) -> dict[str, Any]:
        first = events[0]
        nodes = node_results(events)
        people = (first.payload.get(key) for key in _PEOPLE)
        return {
            "event": first,
            "last": events[-1],
            "events": list(events),
            "type": first.type,
            "env": first.env,
            "actor": first.actor,
            "node": first.node,
            "package": first.package,
            "version": first.version,
            "payload": first.payload,
            "who": first.actor or next((p for p in people if isinstance(p, str)), None),
            "severity": max((e.severity for e in events), key=lambda s: s.rank, default=Severity.INFO),
            "kind": kind,
            "note": note,
            "link": self.link_for(first),
            "nodes": nodes,
            "counts": NodeCounts.of(nodes),
        }


def node_results(events: Iterable[EventFacts]) -> list[NodeResult]:
    """A row per node the events tell of: failures first, then pending, then successes, each by name
    (``web-2`` before ``web-10``).

    ``deployment.started`` names the nodes (pending); node events (``deployment.node.*``,
    ``changeset.applied``/``failed``) give an outcome and its detail; a deployment's final event
    (``deployment.succeeded``/``failed``) gives every node's final outcome — a node that succeeded
    and was then rolled back shows ``rolled_back``.
    """
    rows: dict[str, NodeResult] = {}
    for event in events:
        payload = event.payload
        if event.type == "deployment.started":
            for wave in payload.get("waves", []):
                rows.update({node: NodeResult(node, "pending") for node in wave if node not in rows})
            continue
        finals = payload.get("nodes") if event.type in {"deployment.succeeded", "deployment.failed"} else None
        if isinstance(finals, Mapping):
            for node, outcome in finals.items():
                earlier = rows.get(node)
                rows[node] = NodeResult(node, str(outcome), earlier.detail if earlier else "")
            continue
        outcome = _node_outcome(event)
        if event.node is not None and outcome is not None:
            rows[event.node] = NodeResult(event.node, *outcome)
    return sorted(rows.values(), key=lambda r: (r.succeeded, r.pending, _natural(r.node)))


def _node_outcome(event: EventFacts) -> tuple[str, str] | None:
    payload = event.payload
    if event.type in {"deployment.node.succeeded", "changeset.applied"}:
        return "succeeded", _duration(payload.get("duration_s"))
    if event.type == "deployment.node.failed":
        return str(payload.get("outcome", "failed")), _first_line(payload.get("error"))
    if event.type == "changeset.failed":
        detail = f"{payload.get('stage')}: {_first_line(payload.get('error'))}"
        if payload.get("switched_back"):
            detail += f" (switched back to {payload.get('running_version')})"
        return "failed", detail
    return None


# -- rendering helpers -----------------------------------------------------------


def _split(text: str, template: Template) -> tuple[str, str]:
    """The subject (``Subject:`` to the first blank line) and the body (after it), squeezed."""
    head, *rest = re.split(r"\n[ \t]*\n", text.lstrip("\n"), maxsplit=1)
    body = rest[0] if rest else ""
    if not head.startswith("Subject:"):
        raise TemplateRenderError(
            f"template {template.filename or template.name} must begin with a 'Subject: ...' line, "
            f"then a blank line and the body; it began with {head[:60]!r}"
        )
    subject = _one_line(head.removeprefix("Subject:"))
    if not subject:
        raise TemplateRenderError(f"template {template.filename or template.name} rendered an empty subject")
    lines = [line.rstrip() for line in body.splitlines()]
    return subject, re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= SUBJECT_MAX else line[: SUBJECT_MAX - 1].rstrip() + "…"


def _render_error(exc: TemplateError, template: Template | None, message_type: str) -> TemplateRenderError:
    where = template.filename or template.name if template is not None else None
    if isinstance(exc, TemplateSyntaxError):
        where = f"{exc.filename or exc.name}, line {exc.lineno}"
    else:  # Jinja puts the template's own file and line into the traceback
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
        if frames:
            where = f"{frames[-1].filename}, line {frames[-1].lineno}"
    return TemplateRenderError(
        f"template {where or '(none found)'} failed for {message_type}: {exc}; fix the template "
        "(the names it may use are listed in conveyor_notifier.templates)"
    )


# -- filters ---------------------------------------------------------------------


def _datetime(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC)


def _when(value: datetime | str) -> str:
    return _datetime(value).strftime("%Y-%m-%d %H:%M UTC")


def _clock(value: datetime | str, reference: datetime | str | None = None) -> str:
    moment = _datetime(value)
    if reference is not None and _datetime(reference).date() != moment.date():
        return _when(moment)
    return moment.strftime("%H:%M UTC")


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _first_line(text: object, limit: int = 120) -> str:
    line = str(text or "").strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _names(items: Iterable[object], limit: int = 5) -> str:
    names = [str(item) for item in items]
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def _node_table(rows: Sequence[NodeResult]) -> str:
    if not rows:
        return ""
    node_width = max(len(r.node) for r in rows)
    outcome_width = max(len(r.outcome) for r in rows)
    return "\n".join(
        f"  {r.node:<{node_width}}  {r.outcome:<{outcome_width}}  {r.detail}".rstrip() for r in rows
    )


_SECRET_FIELDS = re.compile(r"authorization|signature|password|secret|token|private_key", re.IGNORECASE)


def _fields(payload: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    skipped = set(skip)
    lines = []
    for name, value in payload.items():
        if name in skipped or _SECRET_FIELDS.search(name) or value is None or value in ([], {}, ""):
            continue
        if isinstance(value, Mapping):
            shown = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list | tuple):
            shown = _names(value, 10)
        else:
            shown = str(value)
        lines.append(f"{name}: {_first_line(shown, 200)}")
    return "\n".join(lines)


def _of_type(events: Iterable[EventFacts], *types: str) -> list[EventFacts]:
    return [event for event in events if event.type in types]


def _type_counts(events: Iterable[EventFacts]) -> str:
    counts = Counter(event.type for event in events)  # keeps the order of first appearance
    return ", ".join(name if n == 1 else f"{name} ({n})" for name, n in counts.items())


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


_FILTERS: dict[str, Any] = {
    "when": _when,
    "clock": _clock,
    "duration": _duration,
    "first_line": _first_line,
    "names": _names,
    "node_table": _node_table,
    "fields": _fields,
    "of_type": _of_type,
    "type_counts": _type_counts,
}
