"""``conveyor promote | approve | promotions | retry | rollback | unblock | blocked | nodes``: the
deployer's API, as tables or JSON."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import typer
from pydantic import SecretStr
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from conveyor.cli.output import console, error
from conveyor.settings import CliSettings, load_settings

__all__ = [
    "ApiError",
    "approve",
    "blocked",
    "bootstrap",
    "check",
    "nodes",
    "promote",
    "promotions",
    "reject",
    "request",
    "retry",
    "rollback",
    "show",
    "trust",
    "unblock",
]

_FINAL = {"succeeded", "failed"}
_COLOURS = {
    "succeeded": "green",
    "failed": "red",
    "rolled_back": "yellow",
    "unreachable": "magenta",
    "applying": "cyan",
    "pending": "dim",
    "running": "cyan",
    "awaiting_approval": "yellow",
}


class ApiError(Exception):
    pass


def request(
    service: str,
    base_url: str,
    secret: SecretStr | None,
    method: str,
    path: str,
    *,
    body: Any = None,
    params: dict[str, Any] | None = None,
    timeout: float = 30,
) -> Any:
    """A request to a Conveyor service's API with the caller's bearer token: its JSON answer (or text,
    e.g. rabbitmq.conf), or ``ApiError`` with the service's one-line reason."""
    headers = {"Authorization": f"Bearer {secret.get_secret_value()}"} if secret else {}
    query = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        response = httpx.request(
            method, f"{base_url.rstrip('/')}{path}", json=body, params=query, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach the {service} at {base_url}: {exc}") from None
    if response.is_error:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text[:300]
        if response.status_code == 401:
            variable = f"CONVEYOR_{service.upper().replace('-', '_')}_TOKEN"
            detail = f"{detail}; set {variable} (or CONVEYOR_TOKEN)"
        raise ApiError(
            f"{detail if isinstance(detail, str) else json.dumps(detail)} ({response.status_code})"
        )
    if not response.headers.get("content-type", "").startswith("application/json"):
        return response.text  # e.g. rabbitmq.conf, an exported state
    return response.json()


def _call(
    method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None, timeout: float = 30
) -> Any:
    settings = load_settings(CliSettings)
    secret = settings.deployer_token or settings.token
    return request(
        "deployer", settings.deployer_url, secret, method, path, body=body, params=params, timeout=timeout
    )


def _colour(state: str) -> str:
    return f"[{_COLOURS.get(state, 'white')}]{state}[/]"


def render(promotion: dict[str, Any]) -> Group:
    """A progress bar per wave and a row per node."""
    head = Text.from_markup(
        f"[bold]{promotion['kind']} {promotion['id']}[/]: {promotion['package']} "
        f"{promotion['version'][:12]} → {promotion['to_env']}  {_colour(promotion['state'])}"
        f"  budget {promotion['budget']}, requested by {promotion['requested_by']}"
        + (f", approved by {promotion['approved_by']}" if promotion.get("approved_by") else "")
    )
    waves = Table(box=None, show_header=False)
    for index, wave in enumerate(promotion["waves"]):
        runs = [promotion["nodes"][name] for name in wave]
        done = sum(1 for r in runs if r["state"] not in ("pending", "applying"))
        label = "canary" if index == 0 and promotion.get("canary") else f"wave {index}"
        waves.add_row(label, ProgressBar(total=len(runs), completed=done, width=30), f"{done}/{len(runs)}")
    nodes = Table("node", "wave", "state", "from", "error")
    for name, run in sorted(promotion["nodes"].items(), key=lambda item: (item[1]["wave"], item[0])):
        nodes.add_row(
            name,
            str(run["wave"]),
            _colour(run["state"]),
            (run["from_version"] or "-")[:12],
            run["error"] or "",
        )
    parts: list[Any] = [head, waves, nodes]
    if promotion.get("outcome"):
        parts.append(Text(f"outcome: {promotion['outcome']}"))
    return Group(*parts)


def _watch(promotion: dict[str, Any], interval: float = 0.5) -> int:
    with Live(render(promotion), console=console, refresh_per_second=4) as live:
        while promotion["state"] not in _FINAL:
            time.sleep(interval)
            promotion = _call("GET", f"/promotions/{promotion['id']}")
            live.update(render(promotion))
    return 0 if promotion["state"] == "succeeded" else 1


def _finish(promotion: dict[str, Any], *, watch: bool, as_json: bool) -> int:
    if as_json:
        print(json.dumps(promotion, indent=2))
        return 0
    if watch:
        return _watch(promotion)
    console.print(render(promotion))
    return 0


def _guard(action: Any) -> int:
    try:
        code: int = action()
    except ApiError as exc:
        error(str(exc))
        return 1
    return code


def promote(body: dict[str, Any], *, watch: bool, as_json: bool) -> int:
    return _guard(lambda: _finish(_call("POST", "/promotions", body=body), watch=watch, as_json=as_json))


def approve(promotion_id: str, *, watch: bool) -> int:
    return _guard(
        lambda: _finish(_call("POST", f"/promotions/{promotion_id}/approve"), watch=watch, as_json=False)
    )


def reject(promotion_id: str, reason: str | None) -> int:
    return _guard(
        lambda: _finish(
            _call("POST", f"/promotions/{promotion_id}/reject", body={"reason": reason}),
            watch=False,
            as_json=False,
        )
    )


def retry(promotion_id: str, *, watch: bool) -> int:
    return _guard(
        lambda: _finish(_call("POST", f"/promotions/{promotion_id}/retry"), watch=watch, as_json=False)
    )


def show(promotion_id: str, *, watch: bool, as_json: bool) -> int:
    return _guard(lambda: _finish(_call("GET", f"/promotions/{promotion_id}"), watch=watch, as_json=as_json))


def rollback(body: dict[str, Any], *, watch: bool, as_json: bool) -> int:
    return _guard(lambda: _finish(_call("POST", "/rollbacks", body=body), watch=watch, as_json=as_json))


def promotions(*, as_json: bool, limit: int) -> int:
    def run() -> int:
        items = _call("GET", "/promotions", params={"limit": limit})
        if as_json:
            print(json.dumps(items, indent=2))
            return 0
        table = Table("id", "kind", "package", "version", "to", "state", "by", "requested", "failures")
        for p in items:
            bad = sum(
                1 for r in p["nodes"].values() if r["state"] in ("failed", "rolled_back", "unreachable")
            )
            table.add_row(
                p["id"],
                p["kind"],
                p["package"],
                p["version"][:12],
                p["to_env"],
                _colour(p["state"]),
                p["requested_by"],
                p["requested_at"][:19],
                f"{bad}/{p['budget']}",
            )
        console.print(table)
        return 0

    return _guard(run)


def unblock(package: str, version: str, reason: str | None) -> int:
    def run() -> int:
        _call("POST", f"/blocked/{package}/{version}/unblock", body={"reason": reason})
        console.print(f"{package} {version[:12]} may be promoted again")
        return 0

    return _guard(run)


def blocked(*, as_json: bool) -> int:
    def run() -> int:
        data = _call("GET", "/blocked")
        if as_json:
            print(json.dumps(data, indent=2))
            return 0
        table = Table("package", "version", "by", "at", "reason")
        for package, versions in sorted(data.items()):
            for version, why in versions.items():
                table.add_row(package, version[:12], why["by"], why["at"], why["reason"])
        console.print(table)
        return 0

    return _guard(run)


def nodes(env: str | None, labels: list[str], *, as_json: bool) -> int:
    def run() -> int:
        data = _call("GET", "/nodes", params={"env": env, "label": ",".join(labels) or None})
        if as_json:
            print(json.dumps(data, indent=2))
            return 0
        table = Table("env", "node", "ssh", "agent", "labels", "packages", "alive")
        for n in data:
            table.add_row(
                n["env"],
                n["name"],
                n["ssh"],
                n["agent"],
                ",".join(f"{k}={v}" for k, v in n["labels"].items()),
                ", ".join(f"{p} {(v or '-')[:12]}" for p, v in n["packages"].items()),
                "[green]yes[/]" if n["alive"] else "[red]no[/]",
            )
        console.print(table)
        return 0

    return _guard(run)


def trust(env: str | None, node: str | None, *, yes: bool, replace: bool) -> int:
    """Show each node's host key fingerprint; trust the ones a person confirms."""

    def run() -> int:
        rows = _call("GET", "/nodes/host-keys", params={"env": env, "node": node}, timeout=120)
        table = Table("env", "node", "address", "presents", "trusted", "state")
        for r in rows:
            table.add_row(
                r["env"],
                r["node"],
                r["address"],
                r["presented"] or "-",
                r["trusted"] or "-",
                _colour(r["state"]),
            )
        console.print(table)
        failed = 0
        for r in rows:
            if r["state"] == "trusted":
                continue
            if r["state"] == "unreachable":
                error(f"{r['node']}: {r.get('error', 'unreachable')}")
                failed += 1
                continue
            if r["state"] == "changed" and not replace:
                error(
                    f"{r['node']}: its host key CHANGED (trusted {r['trusted']}, presents {r['presented']}); "
                    "if the node was reinstalled, check the new fingerprint on its console and run again "
                    "with --replace"
                )
                failed += 1
                continue
            question = f"Trust {r['node']} ({r['address']}) with key {r['presented']}?"
            if not yes and not typer.confirm(question, default=False):
                console.print(f"{r['node']}: not trusted")
                failed += 1
                continue
            done = _call(
                "POST",
                f"/nodes/{r['node']}/trust",
                body={"fingerprint": r["presented"], "replace": r["state"] == "changed"},
            )
            console.print(f"{r['node']}: trusted {done['fingerprint']}")
        return 1 if failed else 0

    return _guard(run)


def bootstrap(env: str, node: str | None, *, as_json: bool) -> int:
    """Install or update the node agents; one row per node."""

    def run() -> int:
        rows = _call("POST", "/nodes/bootstrap", body={"env": env, "node": node}, timeout=1800)
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            table = Table("env", "node", "ctl user", "result", "changed", "started", "error")
            for r in rows:
                result = (
                    "[red]failed[/]"
                    if r["error"]
                    else ("unchanged" if r["unchanged"] else "[green]updated[/]")
                )
                ctl = r.get("ctl_user")
                table.add_row(
                    r["env"],
                    r["node"],
                    "-"
                    if not ctl
                    else (", ".join(ctl["changed"]) or "unchanged")
                    + (" [red](self-test failed)[/]" if ctl["self_test_passed"] is False else ""),
                    result,
                    ", ".join(r["changed"]),
                    ", ".join(r["started"]),
                    r["error"] or "",
                )
            console.print(table)
        return 1 if any(r["error"] for r in rows) else 0

    return _guard(run)


def _ctl_cell(ctl: dict[str, Any] | None) -> str:
    if not ctl:
        return "-"
    if ctl.get("error"):
        return f"[red]{ctl['error'][:60]}[/]"
    if ctl["present"] is False:
        return f"{ctl['account']} absent"
    if ctl["self_test"] == "passed":
        return f"{ctl['account']} [green]self-test passed[/]"
    return f"{ctl['account']} [red]self-test failed ({len(ctl['failures'])})[/]"


def check(env: str | None, *, as_json: bool) -> int:
    def run() -> int:
        rows = _call(
            "GET", "/nodes/check", params={"env": env}, timeout=300
        )  # unreachable nodes take a while
        if as_json:
            print(json.dumps(rows, indent=2))
            return 0
        table = Table(
            "env", "node", "reachable", "latency", "os", "kernel", "free disk", "agents", "ctl user"
        )
        for r in rows:
            if not r["reachable"]:
                table.add_row(r["env"], r["node"], "[red]no[/]", "-", "-", "-", "-", r["error"] or "", "-")
                continue
            free = r["disk_free_bytes"]
            disk = f"{free / 2**30:.1f} GiB ({r['disk_free_percent']:.0f}%)" if free is not None else "-"
            agents = ", ".join(
                f"{name.removeprefix('conveyor-')} {a['version'] or 'not installed'}"
                + (" [green]running[/]" if a["running"] else " [red]stopped[/]")
                for name, a in r["agents"].items()
            )
            table.add_row(
                r["env"],
                r["node"],
                "[green]yes[/]",
                f"{r['latency_ms']:.0f} ms",
                r["os"] or "-",
                r["kernel"] or "-",
                disk,
                agents,
                _ctl_cell(r.get("ctl_user")),
            )
        console.print(table)
        failing = [r for r in rows if (r.get("ctl_user") or {}).get("self_test") == "failed"]
        for r in failing:
            console.print(f"{r['node']}: system-control user self-test failed:")
            for failure in r["ctl_user"]["failures"]:
                console.print(f"  - {failure}")
        return 0 if all(r["reachable"] for r in rows) and not failing else 1

    return _guard(run)
