"""``conveyor notify test``: which receivers a rules file would send an event to, and how grouped.

Reads the notifier's rules file and an event (an envelope as JSON), prints the event's facts and
each route; sends nothing. The rules live in the ``conveyor-notifier`` package, imported when the
command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from conveyor.cli.output import console, error, print_json_line

if TYPE_CHECKING:
    from conveyor_notifier.model import EventFacts
    from conveyor_notifier.rules import Route

__all__ = ["parse_labels", "run_test"]


def _fail(message: str) -> int:
    for line in message.splitlines():  # a rules file's problems: one line each
        error(escape(line))
    return 2


def parse_labels(values: list[str]) -> dict[str, dict[str, str]]:
    """``["prod-web-1=role=web,tier=front"]`` → ``{"prod-web-1": {"role": "web", "tier": "front"}}``;
    ``ValueError`` saying which value is malformed."""
    nodes: dict[str, dict[str, str]] = {}
    for value in values:
        node, _, pairs = value.partition("=")
        labels = [pair.partition("=") for pair in pairs.split(",") if pair]
        if not node or not labels or any(not key or not eq for key, eq, _ in labels):
            raise ValueError(
                f"--labels {value!r}: expected NODE=KEY=VALUE[,KEY=VALUE...], e.g. web-1=role=web"
            )
        nodes.setdefault(node, {}).update({key: label for key, _, label in labels})
    return nodes


def _read_event(event: str) -> bytes:
    return sys.stdin.buffer.read() if event == "-" else Path(event).read_bytes()


def run_test(rules_file: str, event: str, *, labels: list[str], as_json: bool) -> int:
    """Route ``event`` (a file, or ``-`` for stdin) through ``rules_file``; 0, or 2 for bad input."""
    try:
        from conveyor_notifier.model import facts_of  # noqa: PLC0415 - an optional package
        from conveyor_notifier.rules import RulesError, group_key, load_rules, route  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.partition(".")[0] == "conveyor_notifier":
            return _fail("conveyor notify test needs the conveyor-notifier package installed")
        raise
    from conveyor.contracts import CATALOGUE, ContractError  # noqa: PLC0415

    try:
        node_labels = parse_labels(labels)
        config = load_rules(Path(rules_file))
    except (RulesError, ValueError) as exc:
        return _fail(str(exc))
    try:
        envelope = CATALOGUE.decode(_read_event(event))
    except OSError as exc:
        return _fail(f"{event}: cannot read the event: {exc.strerror or exc}")
    except ContractError as exc:
        return _fail(f"{event}: not a Conveyor event: {exc.detail}")
    facts = facts_of(envelope, node_labels)
    routes = [(r, group_key(r, facts)) for r in route(config, facts)]
    if as_json:
        print_json_line({"facts": _facts(facts), "routes": [_route(r, key) for r, key in routes]})
    else:
        _print(facts, routes)
    return 0


def _facts(facts: EventFacts) -> dict[str, Any]:
    return {
        "type": facts.type,
        "env": facts.env,
        "package": facts.package,
        "version": facts.version,
        "node": facts.node,
        "labels": dict(facts.labels),
        "severity": str(facts.severity),
        "correlation_id": facts.correlation_id,
    }


def _route(route: Route, key: str) -> dict[str, Any]:
    return {
        "rule": route.rule,
        "receivers": list(route.receivers),
        "group_key": key,
        "group_by": list(route.group_by),
        "group_wait_s": route.group_wait_s,
        "group_interval_s": route.group_interval_s,
        "escalate_after_s": route.escalate_after_s,
        "escalate_to": list(route.escalate_to),
    }


def _print(facts: EventFacts, routes: list[tuple[Route, str]]) -> None:
    labels = ", ".join(f"{k}={v}" for k, v in facts.labels.items())
    lines = [
        f"event        {facts.type} in {facts.env}, severity {facts.severity}",
        f"package      {facts.package or '-'}{f' {facts.version}' if facts.version else ''}",
        f"node         {facts.node or '-'}{f' ({labels})' if labels else ''}",
        f"correlation  {facts.correlation_id}",
    ]
    for number, (r, key) in enumerate(routes, start=1):
        rule = f"rule {r.rule}" if r.rule else "no rule matched: default receiver"
        lines += [
            "",
            f"route {number}      {rule} → {', '.join(r.receivers)}",
            f"  group key  {key}",
            f"  grouping   by {', '.join(r.group_by) or 'nothing'}: first after {r.group_wait_s:g}s, "
            f"then at most every {r.group_interval_s:g}s",
        ]
        if r.escalate_after_s is not None:
            lines.append(
                f"  escalates  after {r.escalate_after_s:g}s unacknowledged, to {', '.join(r.escalate_to)}"
            )
    lines += ["", "(a test: nothing was sent)"]
    for line in lines:  # plain text, never wrapped: keys stay whole for copying
        console.print(line, soft_wrap=True, markup=False, highlight=False)
