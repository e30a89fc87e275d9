"""``conveyor rabbit plan | apply | export | config | status | rotate-user | cluster status | cluster
restart``: each environment's RabbitMQ cluster, through the deployer's API (it holds the desired state
and the admin credentials). rich and httpx are imported when a command runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["rabbit_app"]

rabbit_app = typer.Typer(
    help="RabbitMQ clusters per environment: desired state, plan/apply, status, restarts, users.",
    no_args_is_help=True,
)
cluster_app = typer.Typer(help="The brokers of a cluster: status, rolling restart.", no_args_is_help=True)
rabbit_app.add_typer(cluster_app, name="cluster")

Env = Annotated[str, typer.Option("--env", help="The environment (its deploy/rabbitmq/<env>.yaml).")]
AsJson = Annotated[bool, typer.Option("--json", help="The deployer's answer as JSON.")]
_COLOURS = {"create": "green", "update": "yellow", "delete": "red"}


def _run(method: str, path: str, *, body: Any = None, timeout: float = 60) -> Any:
    from conveyor.cli.deploy import _call  # noqa: PLC0415

    return _call(method, path, body=body, timeout=timeout)


def _guarded(action: Any) -> None:
    from conveyor.cli.deploy import _guard  # noqa: PLC0415

    raise typer.Exit(_guard(action))


def _show_plan(plan: dict[str, Any], *, title: str) -> None:
    from rich.markup import escape  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from conveyor.cli.output import console  # noqa: PLC0415

    if not plan["changes"]:
        console.print(f"{plan['env']}: the cluster is as the file says; nothing to do")
    else:
        table = Table("", "kind", "what", "detail", title=title)
        for change in plan["changes"]:
            colour = _COLOURS[change["action"]]
            mark = " [bold red]DESTRUCTIVE[/]" if change["destructive"] else ""
            table.add_row(
                f"[{colour}]{change['action']}[/]{mark}",
                change["kind"],
                escape(change["key"]),
                escape(change["detail"]),
            )
        console.print(table)
        counts = {a: sum(1 for c in plan["changes"] if c["action"] == a) for a in _COLOURS}
        console.print(
            f"{counts['create']} to create, {counts['update']} to change, {counts['delete']} to delete; "
            f"{plan['destructive']} destructive"
        )
    for problem in plan["problems"]:
        console.print(f"[red]problem:[/] {escape(problem)}")


@rabbit_app.command("plan")
def plan(env: Env, as_json: AsJson = False) -> None:
    """What apply would create, change and delete in the cluster; destructive changes marked.
    Exit 2 when there are changes, 0 when none, 1 on an error."""

    def run() -> int:
        answer = _run("GET", f"/rabbit/{env}/plan")
        if as_json:
            print(json.dumps(answer, indent=2))
        else:
            _show_plan(answer, title=f"rabbit plan — {env}")
        return 2 if answer["changes"] or answer["problems"] else 0

    _guarded(run)


@rabbit_app.command("apply")
def apply(
    env: Env,
    allow_destructive: Annotated[
        bool, typer.Option("--allow-destructive", help="Also delete and re-declare what loses data.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Make the cluster what the file says (idempotent: a second plan shows nothing)."""

    def run() -> int:
        answer = _run(
            "POST", f"/rabbit/{env}/apply", body={"allow_destructive": allow_destructive}, timeout=300
        )
        if as_json:
            print(json.dumps(answer, indent=2))
        else:
            _show_plan(answer, title=f"rabbit apply — {env}: {answer['applied']} change(s) made")
        return 0

    _guarded(run)


@rabbit_app.command("export")
def export(
    env: Env,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """The cluster's live state in the desired-state format (no passwords)."""

    def run() -> int:
        text = _run("GET", f"/rabbit/{env}/export")
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text)
        return 0

    _guarded(run)


@rabbit_app.command("config")
def config(env: Env) -> None:
    """rabbitmq.conf for the cluster's nodes, rendered from its tuning profile."""
    _guarded(lambda: sys.stdout.write(_run("GET", f"/rabbit/{env}/config")) and 0)


@rabbit_app.command("rotate-user")
def rotate_user(
    name: Annotated[str, typer.Argument(help="The broker user.")], env: Env, as_json: AsJson = False
) -> None:
    """A new random password: written to the user's password file, set in the cluster. Open connections
    stay up; give the services using the user the new password (their AMQP URLs) before they next
    reconnect."""

    def run() -> int:
        answer = _run("POST", f"/rabbit/{env}/users/{name}/rotate")
        if as_json:
            print(json.dumps(answer, indent=2))
        else:
            print(f"{env}: {name} has a new password, in {answer['password_file']}")
        return 0

    _guarded(run)


def _show_status(status: dict[str, Any]) -> int:
    from rich.table import Table  # noqa: PLC0415

    from conveyor.cli.output import console  # noqa: PLC0415

    version = status.get("rabbitmq_version")
    table = Table(
        "node",
        "running",
        "version",
        "memory",
        "disk free",
        "alarms",
        "partitions",
        title=f"{status['env']}: {status.get('cluster_name') or ''} (RabbitMQ {version})",
    )
    healthy = True
    for node in status["nodes"]:
        healthy = healthy and node["running"] and not node["alarms"] and not node["partitions"]
        memory = (
            f"{(node['mem_used'] or 0) / 2**20:.0f}/{(node['mem_limit'] or 0) / 2**20:.0f} MiB"
            if node["running"]
            else ""
        )
        disk = f"{(node['disk_free'] or 0) / 2**30:.1f} GiB" if node["running"] else ""
        table.add_row(
            node["name"],
            "[green]yes[/]" if node["running"] else "[red]no[/]",
            node["version"] or "",
            memory,
            disk,
            f"[red]{', '.join(node['alarms'])}[/]" if node["alarms"] else "",
            f"[red]{', '.join(node['partitions'])}[/]" if node["partitions"] else "",
        )
    console.print(table)
    vhosts = Table("vhost", "queues", "ready", "unacked", "consumers", "queues nobody consumes")
    for vhost in status["vhosts"]:
        idle = vhost["idle_queues"]
        vhosts.add_row(
            vhost["name"],
            str(vhost["queues"]),
            str(vhost["ready"]),
            str(vhost["unacked"]),
            str(vhost["consumers"]),
            ", ".join(idle[:4]) + (f" (+{len(idle) - 4})" if len(idle) > 4 else ""),
        )
    console.print(vhosts)
    below = status["quorum_queues_below_quorum"]
    lagging = status["quorum_queues_under_replicated"]
    console.print(
        f"quorum queues: {status['quorum_queues']}; not fully replicated: {len(lagging)}; "
        f"[{'red' if below else 'green'}]below quorum: {len(below)}[/]"
        + (f" ({', '.join(below[:5])})" if below else "")
    )
    return 0 if healthy and not below else 1


def _status(env: str | None, as_json: bool) -> int:
    envs = [env] if env else _run("GET", "/rabbit/envs")
    answers = [_run("GET", f"/rabbit/{name}/status") for name in envs]
    if as_json:
        print(json.dumps(answers, indent=2))
        return 0
    codes = [_show_status(answer) for answer in answers]
    return max(codes, default=0)


@rabbit_app.command("status")
def status(
    env: Annotated[str | None, typer.Option("--env", help="One environment (default: every one).")] = None,
    as_json: AsJson = False,
) -> None:
    """Every environment's cluster: nodes, alarms, partitions, its vhosts' queues. Exit 1 when
    something is wrong."""
    _guarded(lambda: _status(env, as_json))


@cluster_app.command("status")
def cluster_status(env: Env, as_json: AsJson = False) -> None:
    """One cluster's nodes, versions, alarms, partitions and quorum queue members."""
    _guarded(lambda: _status(env, as_json))


@cluster_app.command("restart")
def cluster_restart(
    env: Env,
    rolling: Annotated[
        bool, typer.Option("--rolling", help="One node at a time (the only way offered).")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Restart the cluster's nodes one by one: each only when the others keep every quorum queue's
    quorum, drained first, revived after, and waited for; quorum leaders rebalanced at the end."""
    if not rolling:
        raise typer.BadParameter("only rolling restarts are offered: add --rolling")

    def run() -> int:
        answer = _run("POST", f"/rabbit/{env}/restart", timeout=3600)
        if as_json:
            print(json.dumps(answer, indent=2))
        else:
            for step in answer["steps"]:
                print(step)
            for node in answer["nodes"]:
                print(f"{node['node']}: restarted in {node['took_s']} s")
        return 0

    _guarded(run)
