"""``conveyor nodes provision-ctl-user | remove-ctl-user``: the system-control user on the nodes, through
the deployer's API (admin role); a row per node, and the self-test's table per node."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from conveyor.cli.deploy import _call, _guard
from conveyor.cli.output import console

__all__ = ["provision", "remove", "self_test_table"]


def _result(row: dict[str, Any], done: str) -> str:
    if row["error"]:
        return "[red]failed[/]"
    if row.get("self_test_passed") is False:
        return "[red]self-test failed[/]"
    return "unchanged" if row["unchanged"] else f"[green]{done}[/]"


def self_test_table(node: str, rows: list[dict[str, Any]], *, failures_only: bool = False) -> Table:
    passed = sum(1 for r in rows if r["ok"])
    table = Table(
        "check", "as", "expected", "result", "", title=f"{node}: self-test, {passed}/{len(rows)} passed"
    )
    for r in rows:
        if failures_only and r["ok"]:
            continue
        mark = "[green]ok[/]" if r["ok"] else "[red]FAIL[/]"
        result = r["result"] if r["ok"] else f"{r['result']}: {r['detail'][:120]}"
        table.add_row(r["check"], r["who"], r["expected"], result, mark)
    return table


def provision(env: str, node: str | None, *, as_json: bool, failures_only: bool) -> int:
    def run() -> int:
        rows = _call("POST", "/nodes/ctl-user", body={"env": env, "node": node}, timeout=600)
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                if r["self_test"]:
                    console.print(self_test_table(r["node"], r["self_test"], failures_only=failures_only))
            summary = Table("env", "node", "result", "changed", "skipped", "error")
            for r in rows:
                summary.add_row(
                    r["env"],
                    r["node"],
                    _result(r, "provisioned"),
                    ", ".join(r["changed"]) or "nothing (already as planned)",
                    "; ".join(r["skipped"]),
                    r["error"] or "",
                )
            console.print(summary)
        return 1 if any(r["error"] or r["self_test_passed"] is False for r in rows) else 0

    return _guard(run)


def remove(env: str, node: str | None, *, as_json: bool) -> int:
    def run() -> int:
        rows = _call("DELETE", "/nodes/ctl-user", params={"env": env, "node": node}, timeout=600)
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            table = Table("env", "node", "result", "removed", "error")
            for r in rows:
                table.add_row(
                    r["env"],
                    r["node"],
                    _result(r, "removed"),
                    ", ".join(r["changed"]) or "nothing (not there)",
                    r["error"] or "",
                )
            console.print(table)
        return 1 if any(r["error"] for r in rows) else 0

    return _guard(run)
