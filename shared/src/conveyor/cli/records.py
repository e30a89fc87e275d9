"""``conveyor versions | history | diff | audit``: what the version-db API knows, as tables or JSON."""

from __future__ import annotations

import json
from typing import Any

import httpx
from rich.table import Table

from conveyor.cli.output import console, error
from conveyor.settings import CliSettings, load_settings

__all__ = ["audit", "diff", "history", "versions"]


class _ApiError(Exception):
    pass


def _get(path: str, params: dict[str, Any]) -> Any:
    settings = load_settings(CliSettings)
    headers = {"Authorization": f"Bearer {settings.token.get_secret_value()}"} if settings.token else {}
    query = {k: v for k, v in params.items() if v is not None}
    try:
        response = httpx.get(
            f"{settings.version_db_url.rstrip('/')}{path}", params=query, headers=headers, timeout=30
        )
    except httpx.HTTPError as exc:
        raise _ApiError(f"cannot reach the version-db at {settings.version_db_url}: {exc}") from None
    if response.status_code in (401, 403):
        raise _ApiError(
            f"the version-db refused the request ({response.json().get('detail')}); set CONVEYOR_TOKEN"
        )
    if response.status_code == 404:
        raise _ApiError(str(response.json().get("detail", "not found")))
    if response.is_error:
        raise _ApiError(f"the version-db answered {response.status_code}: {response.text[:300]}")
    return response.json()


def _run(path: str, params: dict[str, Any], as_json: bool, render: Any) -> int:
    try:
        data = _get(path, params)
    except _ApiError as exc:
        error(str(exc))
        return 1
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render(data)
    return 0


def versions(env: str | None, package: str | None, *, as_json: bool) -> int:
    def render(data: dict[str, Any]) -> None:
        table = Table("package", *data["envs"], title="Current versions")
        for row in data["packages"]:
            table.add_row(row["package"], *(row["versions"][e] or "[dim]-[/]" for e in data["envs"]))
        console.print(table)

    return _run("/versions", {"env": env, "package": package}, as_json, render)


def history(package: str, limit: int, *, as_json: bool) -> int:
    def render(data: dict[str, Any]) -> None:
        changes = Table(
            "version", "parent", "author", "created", "+/~/-", "message", title=f"{package}: changesets"
        )
        for c in data["changesets"]:
            counts = f"{c['files_added']}/{c['files_modified']}/{c['files_deleted']}"
            changes.add_row(
                c["version"], c["parent_version"] or "-", c["author"], c["created_at"], counts, c["message"]
            )
        deployments = Table(
            "version", "to", "state", "by", "requested", "finished", title=f"{package}: deployments"
        )
        for d in data["deployments"]:
            deployments.add_row(
                d["version"],
                d["to_env"],
                d["state"],
                d["requested_by"] or "-",
                d["requested_at"] or "-",
                d["finished_at"] or "-",
            )
        console.print(changes)
        console.print(deployments)

    return _run(f"/packages/{package}/history", {"limit": limit}, as_json, render)


def diff(from_env: str, to_env: str, *, as_json: bool) -> int:
    def render(data: dict[str, Any]) -> None:
        if not data["packages"]:
            console.print(f"{from_env} and {to_env} run the same versions")
            return
        table = Table("package", from_env, to_env, f"only in {from_env}", title=f"{from_env} → {to_env}")
        for p in data["packages"]:
            table.add_row(
                p["package"],
                p["from_version"] or "-",
                p["to_version"] or "-",
                ", ".join(p["versions_only_in_from"]),
            )
        console.print(table)

    return _run("/diff", {"from": from_env, "to": to_env}, as_json, render)


def audit(filters: dict[str, Any], *, as_json: bool) -> int:
    def render(data: dict[str, Any]) -> None:
        table = Table(
            "at", "actor", "action", "target", "outcome", "env", title=f"Audit ({data['total']} entries)"
        )
        for e in data["items"]:
            table.add_row(
                e["at"], e["actor"] or "-", e["action"], e["target"] or "-", e["outcome"], e["env"] or "-"
            )
        console.print(table)

    return _run("/audit", filters, as_json, render)
