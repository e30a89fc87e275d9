"""``conveyor firewall disable | enable | approve | status`` and ``conveyor audit verify``, through the
deployer's API with the caller's token: a row per server, and an exit status that says whether every
target reached the requested state. rich and httpx are imported when a command runs, not at start-up."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["audit_verify", "firewall_app", "parse_duration", "read_servers"]

firewall_app = typer.Typer(
    help="Disable and restore node firewalls, under the deployer's policy and a lease.", no_args_is_help=True
)

_DURATION = re.compile(r"(\d+)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DONE = {
    "disable": ("disabled", "already disabled, lease extended"),
    "enable": ("enabled", "already enabled"),
}


def parse_duration(text: str) -> int:
    """``30m``, ``1h30m``, ``90s``, ``2h`` or plain seconds → seconds."""
    cleaned = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise typer.BadParameter(f"{text!r} is not a duration like 30m, 1h or 90s")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise typer.BadParameter("the duration must be positive")
    return seconds


def read_servers(servers: str | None, servers_file: Path | None) -> list[str] | None:
    """Names from ``--servers a,b`` and ``--servers-file`` (one per line, ``#`` comments, blank lines
    skipped), in order; duplicates are left for the deployer to drop (it reports unknown names)."""
    names: list[str] = []
    if servers:
        names += [s.strip() for s in servers.split(",") if s.strip()]
    if servers_file is not None:
        try:
            text = servers_file.read_text()
        except OSError as exc:
            raise typer.BadParameter(f"{servers_file}: {exc.strerror}") from None
        for line in text.splitlines():
            name = line.split("#", 1)[0].strip()
            if name:
                names.append(name)
    return names or None


def _labels(labels: list[str]) -> dict[str, str]:
    result = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--label {label!r}: use key=value")
        result[key] = value
    return result


def _show(response: dict[str, Any], action: str) -> int:
    from rich.table import Table  # noqa: PLC0415

    from conveyor.cli.output import console  # noqa: PLC0415

    title = f"firewall {action} — {response['decision']}"
    if response.get("approved_by"):
        title += f"; approved by {response['approved_by']}"
    table = Table("env", "server", "result", "backend", "lease until", "detail", title=title)
    for row in response["results"]:
        result = row["result"]
        ok = result.startswith((*_DONE[action], "would")) or result == "awaiting approval"
        table.add_row(
            row["env"],
            row["node"],
            f"[green]{result}[/]" if ok else f"[red]{result}[/]",
            row.get("backend") or "",
            row.get("lease_expires_at") or "",
            row.get("detail") or "",
        )
    for name in response["unknown"]:
        table.add_row("-", name, "[red]unknown[/]", "", "", "not in the inventory (or not in that env)")
    console.print(table)
    if response["state"] == "awaiting_approval":
        console.print(
            f"request {response['id']} awaits approval by another person: "
            f"conveyor firewall approve {response['id']}"
        )
    return _exit_code(response, action)


def _exit_code(response: dict[str, Any], action: str) -> int:
    """0 when every target reached the requested state (a dry run: would be allowed; awaiting approval:
    asked correctly), else 1."""
    if response["state"] == "dry_run":
        return 0 if response["allowed"] and not response["unknown"] else 1
    if response["state"] == "awaiting_approval":
        return 0
    reached = all(r["result"].startswith(_DONE[action]) for r in response["results"])
    return 0 if reached and not response["unknown"] else 1


def _request(action: str, body: dict[str, Any], *, as_json: bool) -> int:
    from conveyor.cli.deploy import _call, _guard  # noqa: PLC0415

    def run() -> int:
        response = _call("POST", "/firewall/requests", body={"action": action, **body}, timeout=300)
        if as_json:
            print(json.dumps(response, indent=2))
            return _exit_code(response, action)
        return _show(response, action)

    return _guard(run)


Servers = Annotated[str | None, typer.Option("--servers", help="Comma-separated inventory names.")]
ServersFile = Annotated[
    Path | None, typer.Option("--servers-file", help="A file of names, one per line (# comments).")
]
Env = Annotated[str | None, typer.Option("--env", help="Every node of this environment (with --label).")]
Labels = Annotated[list[str], typer.Option("--label", help="key=value; with --env, only matching nodes.")]
Reason = Annotated[str, typer.Option("--reason", help="Why: recorded in the audit logs.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show the targets and the decision; change nothing.")]
AsJson = Annotated[bool, typer.Option("--json", help="The deployer's answer as JSON.")]


def _body(
    servers: str | None,
    servers_file: Path | None,
    env: str | None,
    labels: list[str],
    *,
    reason: str,
    dry_run: bool,
) -> dict[str, Any]:
    names = read_servers(servers, servers_file)
    if names is None and env is None:
        raise typer.BadParameter("name the servers (--servers, --servers-file) or an environment (--env)")
    return {"servers": names, "env": env, "labels": _labels(labels), "reason": reason, "dry_run": dry_run}


@firewall_app.command("disable")
def disable(
    *,
    lease: Annotated[str, typer.Option("--for", help="How long, e.g. 30m; restored when it ends.")],
    reason: Reason,
    servers: Servers = None,
    servers_file: ServersFile = None,
    env: Env = None,
    label: Labels = [],  # noqa: B006 - typer reads the default, never mutates it
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Open the servers' firewalls for a lease; each node restores its own when the lease ends."""
    body = _body(servers, servers_file, env, label, reason=reason, dry_run=dry_run)
    body["lease_s"] = parse_duration(lease)
    raise typer.Exit(_request("disable", body, as_json=as_json))


@firewall_app.command("enable")
def enable(
    *,
    reason: Reason,
    servers: Servers = None,
    servers_file: ServersFile = None,
    env: Env = None,
    label: Labels = [],  # noqa: B006 - typer reads the default, never mutates it
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Restore the servers' firewalls now, exactly as they were before they were disabled."""
    raise typer.Exit(
        _request(
            "enable",
            _body(servers, servers_file, env, label, reason=reason, dry_run=dry_run),
            as_json=as_json,
        )
    )


@firewall_app.command("approve")
def approve(
    request_id: Annotated[str, typer.Argument(help="The request awaiting approval.")], as_json: AsJson = False
) -> None:
    """Approve someone else's firewall request (prod); it is carried out now."""
    from conveyor.cli.deploy import _call, _guard  # noqa: PLC0415

    def run() -> int:
        response = _call("POST", f"/firewall/requests/{request_id}/approve", timeout=300)
        if as_json:
            print(json.dumps(response, indent=2))
            return _exit_code(response, response["action"])
        return _show(response, response["action"])

    raise typer.Exit(_guard(run))


@firewall_app.command("status")
def status(env: Env = None, as_json: AsJson = False) -> None:
    """Each node's firewall as its agent last reported: state, backend, lease expiry, who and why."""
    from rich.table import Table  # noqa: PLC0415

    from conveyor.cli.deploy import _call, _guard  # noqa: PLC0415
    from conveyor.cli.output import console  # noqa: PLC0415

    def run() -> int:
        rows = _call("GET", "/firewall/status", params={"env": env})
        if as_json:
            print(json.dumps(rows, indent=2))
            return 0
        table = Table("env", "server", "state", "backend", "lease until", "by", "why", "reported")
        for r in rows:
            state = r["state"]
            shown = f"[red]{state}[/]" if state.startswith("disabled") else state
            table.add_row(
                r["env"],
                r["node"],
                shown,
                r.get("backend") or "",
                r.get("lease_expires_at") or "",
                r.get("actor") or "",
                r.get("reason") or "",
                r.get("updated_at") or "",
            )
        console.print(table)
        return 0

    raise typer.Exit(_guard(run))


def audit_verify(node: str, *, as_json: bool) -> int:
    from conveyor.cli.deploy import _call, _guard  # noqa: PLC0415
    from conveyor.cli.output import console, error  # noqa: PLC0415

    def run() -> int:
        report = _call("GET", f"/firewall/audit/{node}", timeout=120)
        if as_json:
            print(json.dumps(report, indent=2))
        elif report["intact"]:
            console.print(
                f"{node}: audit log intact — {report['records']} records, the last {report['last_seq']}, "
                f"{report['anchors']} of them matched against version-db"
            )
        else:
            error(f"{node}: audit log NOT intact ({report['file']}):")
            for problem in report["problems"]:
                console.print(f"  - {problem}")
        return 0 if report["intact"] else 1

    return _guard(run)
