"""``conveyor``: the command line of platform and on-call engineers.

Only typer is imported at start-up; each command imports what it needs when
it runs, so ``conveyor --version`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["app", "run"]

app = typer.Typer(
    name="conveyor",
    help="Move changes through Dev → QA → Prod and keep those environments under control.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
env_app = typer.Typer(help="The environments and their brokers.", no_args_is_help=True)
bus_app = typer.Typer(help="The RabbitMQ bus.", no_args_is_help=True)
events_app = typer.Typer(help="Conveyor's events.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
contracts_app = typer.Typer(help="Message contracts.", no_args_is_help=True)
app.add_typer(env_app, name="env")
app.add_typer(bus_app, name="bus")
app.add_typer(events_app, name="events")
app.add_typer(config_app, name="config")
app.add_typer(contracts_app, name="contracts")


def _version(value: bool) -> None:
    if value:
        from conveyor import __version__  # noqa: PLC0415

        typer.echo(f"conveyor {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    _: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Conveyor."""


@env_app.command("list")
def env_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per environment.")] = False,
) -> None:
    """List the environments in promotion order with their brokers."""
    from conveyor.cli import brokers  # noqa: PLC0415

    brokers.env_list(as_json=as_json)


@bus_app.command("ping")
def bus_ping(
    env: Annotated[list[str] | None, typer.Option("--env", help="Only these environments.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Connect to each environment's broker: reachable? latency? topology declared?"""
    from conveyor.cli import brokers  # noqa: PLC0415

    raise typer.Exit(brokers.ping(env or [], as_json=as_json))


@events_app.command("tail")
def events_tail(
    env: Annotated[str, typer.Option("--env", help="The environment to listen to.")],
    type_glob: Annotated[
        str, typer.Option("--type", help="Only types matching this glob, e.g. 'changeset.*'.")
    ] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON envelope per line.")] = False,
    commands: Annotated[bool, typer.Option("--commands", help="Show commands too.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Stop after this many.")] = None,
) -> None:
    """Stream events live as they are published (Ctrl-C to stop)."""
    from conveyor.cli import tail  # noqa: PLC0415

    raise typer.Exit(tail.run(env, type_glob=type_glob, as_json=as_json, commands=commands, limit=limit))


@config_app.command("show")
def config_show(
    service: Annotated[
        str | None, typer.Option("--service", help="A service, e.g. deployer; default: this CLI.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print the effective configuration, secrets redacted."""
    from conveyor.cli import config  # noqa: PLC0415

    raise typer.Exit(config.show(service, as_json=as_json))


@config_app.command("docs")
def config_docs(
    check: Annotated[bool, typer.Option("--check", help="Fail if a README is stale.")] = False,
    root: Annotated[str, typer.Option("--root", help="The repository root.")] = ".",
) -> None:
    """Regenerate the settings table in every service README from the settings classes."""
    from conveyor import config_docs  # noqa: PLC0415

    raise typer.Exit(config_docs.main(["--root", root, *(["--check"] if check else [])]))


@contracts_app.command("docs")
def contracts_docs(
    out: Annotated[str, typer.Option("--out", help="Directory of the generated files.")] = "docs",
    check: Annotated[bool, typer.Option("--check", help="Fail if the files are stale.")] = False,
) -> None:
    """Generate docs/messages.md and docs/asyncapi.yaml from the message models."""
    from conveyor.contracts import docs  # noqa: PLC0415

    raise typer.Exit(docs.main(["--out", out, *(["--check"] if check else [])]))


def run() -> None:
    app()
