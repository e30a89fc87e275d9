"""``conveyor alerts list | show | ack`` and ``conveyor silence add | list | expire``: the notifier's API
with the caller's token (``CONVEYOR_NOTIFIER_TOKEN``, else ``CONVEYOR_TOKEN``), as tables or JSON.
rich and httpx are imported when a command runs, not at start-up."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from conveyor.cli.firewall import parse_duration

__all__ = ["alerts_app", "parse_matchers", "silence_app"]

alerts_app = typer.Typer(
    help="Alerts: open until acknowledged or resolved; unacknowledged ones escalate.", no_args_is_help=True
)
silence_app = typer.Typer(
    help="Silences: notifications of matching events are recorded, not sent.", no_args_is_help=True
)

AsJson = Annotated[bool, typer.Option("--json", help="The notifier's answer as JSON.")]
_COLOURS = {
    "open": "red",
    "acknowledged": "yellow",
    "resolved": "green",
    "active": "yellow",
    "pending": "cyan",
}


def _call(method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    from conveyor.cli.deploy import request  # noqa: PLC0415
    from conveyor.settings import CliSettings, load_settings  # noqa: PLC0415

    settings = load_settings(CliSettings)
    secret = settings.notifier_token or settings.token
    return request("notifier", settings.notifier_url, secret, method, path, body=body, params=params)


def _run(method: str, path: str, render: Any, *, as_json: bool, body: Any = None, **params: Any) -> int:
    from conveyor.cli.deploy import ApiError  # noqa: PLC0415
    from conveyor.cli.output import error  # noqa: PLC0415

    try:
        data = _call(method, path, body=body, params=params)
    except ApiError as exc:
        error(str(exc))
        return 1
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render(data)
    return 0


def _state(state: str) -> str:
    colour = _COLOURS.get(state)
    return f"[{colour}]{state}[/]" if colour else state


def _alert_rows(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table  # noqa: PLC0415

    from conveyor.cli.output import console  # noqa: PLC0415

    if not rows:
        console.print("no alerts")
        return
    table = Table("id", "state", "env", "severity", "what", "opened", "count", "acknowledged / escalated")
    for row in rows:
        who = row["acknowledged_by"] and f"by {row['acknowledged_by']}"
        if row["escalated_at"]:
            who = f"{who + '; ' if who else ''}escalated to {', '.join(row['escalate_to'])}"
        table.add_row(
            str(row["id"]),
            _state(row["state"]),
            row["env"],
            row["severity"],
            row["summary"],
            row["opened_at"][:19].replace("T", " "),
            str(row["count"]),
            who or "",
        )
    console.print(table)


def _alert(row: dict[str, Any]) -> None:
    from conveyor.cli.output import console  # noqa: PLC0415

    _alert_rows([row])
    if row.get("ack_comment"):
        console.print(f"comment: {row['ack_comment']}")
    if row.get("resolved_at"):
        console.print(f"resolved at {row['resolved_at']} by event {row['resolved_by']}")
    for note in row.get("notifications", []):
        console.print(f"{note['kind']} to {note['receiver']}: {note['state']} {note['finished_at'] or ''}")


@alerts_app.command("list")
def list_alerts(
    state: Annotated[
        str, typer.Option("--state", help="active (open or acknowledged), open, acknowledged, resolved, all")
    ] = "active",
    env: Annotated[str | None, typer.Option("--env", help="Only this environment.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    as_json: AsJson = False,
) -> None:
    """Alerts, newest first."""
    raise typer.Exit(_run("GET", "/alerts", _alert_rows, as_json=as_json, state=state, env=env, limit=limit))


@alerts_app.command("show")
def show_alert(alert_id: Annotated[int, typer.Argument(help="The alert.")], as_json: AsJson = False) -> None:
    """One alert, with its escalation and resolution messages."""
    raise typer.Exit(_run("GET", f"/alerts/{alert_id}", _alert, as_json=as_json))


@alerts_app.command("ack")
def ack_alert(
    alert_id: Annotated[int, typer.Argument(help="The alert.")],
    comment: Annotated[str | None, typer.Option("--comment", help="e.g. who is on it, what next.")] = None,
    as_json: AsJson = False,
) -> None:
    """Acknowledge an alert: you are on it; it will not escalate."""
    raise typer.Exit(
        _run("POST", f"/alerts/{alert_id}/ack", _alert, as_json=as_json, body={"comment": comment})
    )


def parse_matchers(matches: list[str], env: str | None) -> dict[str, str]:
    """``["type=drift.*", "node=web-*"]`` and ``--env dev`` → ``{"type": "drift.*", "node": "web-*",
    "env": "dev"}``; ``typer.BadParameter`` for one without ``=``."""
    matchers: dict[str, str] = {}
    for match in matches:
        name, sep, glob = match.partition("=")
        if not sep or not name.strip() or not glob.strip():
            raise typer.BadParameter(f"--match {match!r}: use FACT=GLOB, e.g. type=drift.detected")
        matchers[name.strip()] = glob.strip()
    if env is not None:
        matchers["env"] = env
    if not matchers:
        raise typer.BadParameter("give at least one --match FACT=GLOB (or --env)")
    return matchers


def _silence_rows(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table  # noqa: PLC0415

    from conveyor.cli.output import console  # noqa: PLC0415

    if not rows:
        console.print("no silences")
        return
    table = Table("id", "state", "matches", "until", "by", "reason")
    for row in rows:
        table.add_row(
            str(row["id"]),
            _state(row["state"]),
            " ".join(f"{k}={v}" for k, v in row["matchers"].items()),
            row["ends_at"][:19].replace("T", " "),
            row["created_by"] + (f" (ended by {row['expired_by']})" if row["expired_by"] else ""),
            row["reason"],
        )
    console.print(table)


@silence_app.command("add")
def add_silence(
    *,
    match: Annotated[
        list[str],
        typer.Option(
            "--match", help="FACT=GLOB (type, env, package, node, severity, labels.KEY...); repeatable."
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    env: Annotated[str | None, typer.Option("--env", help="Only this environment (env=ENV).")] = None,
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 2h, 30m.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why: shown with every notification it holds back.")
    ],
    as_json: AsJson = False,
) -> None:
    """Hold back the notifications of matching events for a while (they are recorded)."""
    body = {"matchers": parse_matchers(match, env), "duration_s": parse_duration(duration), "reason": reason}
    raise typer.Exit(_run("POST", "/silences", lambda row: _silence_rows([row]), as_json=as_json, body=body))


@silence_app.command("list")
def list_silences(
    include_expired: Annotated[bool, typer.Option("--all", help="Ended silences too.")] = False,
    as_json: AsJson = False,
) -> None:
    """Active and pending silences (with --all, ended ones too)."""
    raise typer.Exit(
        _run("GET", "/silences", _silence_rows, as_json=as_json, include_expired=include_expired or None)
    )


@silence_app.command("expire")
def expire_silence(
    silence_id: Annotated[int, typer.Argument(help="The silence.")], as_json: AsJson = False
) -> None:
    """End a silence now."""
    raise typer.Exit(
        _run("DELETE", f"/silences/{silence_id}", lambda row: _silence_rows([row]), as_json=as_json)
    )
