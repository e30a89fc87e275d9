"""``conveyor``: the command line of platform and on-call engineers.

Only typer is imported at start-up; each command imports what it needs when
it runs, so ``conveyor --version`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from conveyor.cli.alerts import alerts_app, silence_app
from conveyor.cli.firewall import firewall_app
from conveyor.cli.rabbit import rabbit_app

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
vcs_app = typer.Typer(
    help="Package version control: status like git, versions in INI files.", no_args_is_help=True
)
app.add_typer(env_app, name="env")
app.add_typer(bus_app, name="bus")
app.add_typer(events_app, name="events")
app.add_typer(config_app, name="config")
app.add_typer(contracts_app, name="contracts")
app.add_typer(vcs_app, name="vcs")
changeset_app = typer.Typer(
    help="Changesets: a version's changes as a zip with CHANGELOG.ini; apply them atomically.",
    no_args_is_help=True,
)
app.add_typer(changeset_app, name="changeset")
promotions_app = typer.Typer(
    help="Promotions: list them, show one (live with --watch).", no_args_is_help=True
)
app.add_typer(promotions_app, name="promotions")
app.add_typer(firewall_app, name="firewall")
nodes_app = typer.Typer(help="The inventory's nodes.", no_args_is_help=True)
app.add_typer(nodes_app, name="nodes")
keys_app = typer.Typer(
    help="The deployment server's Ed25519 key signing privileged commands; nodes' trusted keys.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
notify_app = typer.Typer(help="The notifier's routing rules.", no_args_is_help=True)
app.add_typer(notify_app, name="notify")
app.add_typer(alerts_app, name="alerts")
app.add_typer(silence_app, name="silence")
app.add_typer(rabbit_app, name="rabbit")

PackagePath = Annotated[str | None, typer.Option("--path", "-C", help="The package (default: here).")]


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


@vcs_app.command("init")
def vcs_init(
    name: Annotated[str, typer.Option("--name", help="The package's name.")],
    path: Annotated[str | None, typer.Argument(help="The package directory (default: here).")] = None,
) -> None:
    """Start tracking a package directory."""
    from conveyor.cli import vcs  # noqa: PLC0415

    raise typer.Exit(vcs.run_init(path, name))


@vcs_app.command("status")
def vcs_status(
    path: Annotated[str | None, typer.Argument(help="The package (default: here).")] = None,
    porcelain: Annotated[bool, typer.Option("--porcelain", help="'A|M|D <path>' lines, stable.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit 1 when there are changes.")] = False,
) -> None:
    """Added, modified and deleted files against the current version."""
    from conveyor.cli import vcs  # noqa: PLC0415

    raise typer.Exit(vcs.run_status(path, porcelain=porcelain, as_json=as_json, exit_code=exit_code))


@vcs_app.command("commit")
def vcs_commit(
    message: Annotated[str, typer.Option("--message", "-m", help="What changed and why.")],
    author: Annotated[
        str | None, typer.Option("--author", help="Default: $CONVEYOR_AUTHOR or the user.")
    ] = None,
    path: PackagePath = None,
) -> None:
    """Record the working tree as a new version."""
    from conveyor.cli import vcs  # noqa: PLC0415

    raise typer.Exit(vcs.run_commit(path, message, author))


@vcs_app.command("log")
def vcs_log(path: PackagePath = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The versions from the current one back to the first."""
    from conveyor.cli import vcs  # noqa: PLC0415

    raise typer.Exit(vcs.run_log(path, as_json=as_json))


@vcs_app.command("show")
def vcs_show(
    version: Annotated[str, typer.Argument(help="Id, unique prefix, tag or HEAD.")] = "HEAD",
    path: PackagePath = None,
) -> None:
    """A version and its changelog."""
    from conveyor.cli import vcs  # noqa: PLC0415

    raise typer.Exit(vcs.run_show(path, version))


@vcs_app.command("diff")
def vcs_diff(
    version: Annotated[str, typer.Argument(help="Compare the working tree with this version.")] = "HEAD",
    paths: Annotated[list[str] | None, typer.Argument(help="Only these paths (after --).")] = None,
    path: PackagePath = None,
) -> None:
    """Unified diff from a version to the working tree."""
    from conveyor.cli import vcs  # noqa: PLC0415

    selected = paths or []
    if _after_double_dash(version):  # `diff -- PATH…`: no version given, the first word is a path
        version, selected = "HEAD", [version, *selected]
    raise typer.Exit(vcs.run_diff(path, version, selected))


def _after_double_dash(word: str) -> bool:
    """Whether ``word`` came after ``--`` on the command line (click does not say)."""
    argv = sys.argv
    return "--" in argv and word in argv[argv.index("--") + 1 :] and word not in argv[: argv.index("--")]


@vcs_app.command("checkout")
def vcs_checkout(
    version: Annotated[str, typer.Argument(help="Id, unique prefix, tag or HEAD.")],
    force: Annotated[bool, typer.Option("--force", help="Discard uncommitted changes.")] = False,
    path: PackagePath = None,
) -> None:
    """Restore the working tree to a version."""
    from conveyor.cli import vcs  # noqa: PLC0415

    raise typer.Exit(vcs.run_checkout(path, version, force=force))


@vcs_app.command("tag")
def vcs_tag(
    name: Annotated[str | None, typer.Argument(help="The tag; without it, list tags.")] = None,
    version: Annotated[str, typer.Argument(help="Default: HEAD.")] = "HEAD",
    path: PackagePath = None,
) -> None:
    """Name a version."""
    from conveyor.cli import vcs  # noqa: PLC0415

    raise typer.Exit(vcs.run_tag(path, name, version))


@vcs_app.command("fsck")
def vcs_fsck(path: PackagePath = None) -> None:
    """Verify every manifest, changelog, reference and stored object."""
    from conveyor.cli import vcs  # noqa: PLC0415

    raise typer.Exit(vcs.run_fsck(path))


RootOption = Annotated[str, typer.Option("--root", help="The release root (holds current/ and releases/).")]
KeepOption = Annotated[int, typer.Option("--keep", min=2, help="Releases kept on disk.")]


@changeset_app.command("create")
def changeset_create(
    package: Annotated[str, typer.Argument(help="The package directory.")] = ".",
    *,
    parent: Annotated[
        str | None, typer.Option("--from", help="Parent version (default: the new version's parent; 'none').")
    ] = None,
    version: Annotated[str, typer.Option("--to", help="New version: id, prefix, tag or HEAD.")] = "HEAD",
    out: Annotated[
        str | None, typer.Option("--out", help="Directory (default: <package>/.conveyor/changesets).")
    ] = None,
    upload: Annotated[bool, typer.Option("--upload", help="Also store it in the artifact store.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Zip the changes from one version to another, with CHANGELOG.ini, as <id>.zip."""
    from conveyor.cli import changeset  # noqa: PLC0415

    raise typer.Exit(
        changeset.run_create(package, parent=parent, version=version, out=out, upload=upload, as_json=as_json)
    )


@changeset_app.command("show")
def changeset_show(
    reference: Annotated[str, typer.Argument(help="An archive file, or a changeset id (or prefix).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The changelog of a changeset as a table."""
    from conveyor.cli import changeset  # noqa: PLC0415

    raise typer.Exit(changeset.run_show(reference, as_json=as_json))


@changeset_app.command("verify")
def changeset_verify(file: Annotated[str, typer.Argument(help="The archive.")]) -> None:
    """Check an archive: structure, safety, and every file against CHANGELOG.ini."""
    from conveyor.cli import changeset  # noqa: PLC0415

    raise typer.Exit(changeset.run_verify(file))


@changeset_app.command("apply")
def changeset_apply(
    file: Annotated[str, typer.Argument(help="The archive.")],
    root: RootOption,
    force: Annotated[
        bool, typer.Option("--force", help="Apply even if the node does not run the parent version.")
    ] = False,
    keep: KeepOption = 5,
) -> None:
    """Verify, build the new release beside the current one, switch `current` atomically."""
    from conveyor.cli import changeset  # noqa: PLC0415

    raise typer.Exit(changeset.run_apply(file, root=root, force=force, keep=keep))


@changeset_app.command("rollback")
def changeset_rollback(root: RootOption, keep: KeepOption = 5) -> None:
    """Switch back to the previous good release."""
    from conveyor.cli import changeset  # noqa: PLC0415

    raise typer.Exit(changeset.run_rollback(root=root, keep=keep))


@changeset_app.command("releases")
def changeset_releases(root: RootOption, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The releases of a release root: history, states, drift of the current one."""
    from conveyor.cli import changeset  # noqa: PLC0415

    raise typer.Exit(changeset.run_releases(root=root, as_json=as_json))


Watch = Annotated[bool, typer.Option("--watch", help="Follow it live until it ends.")]
AsJson = Annotated[bool, typer.Option("--json")]


@app.command("promote")
def promote_command(
    package: Annotated[str, typer.Argument(help="The package.")],
    to_env: Annotated[str, typer.Option("--to", help="The environment to promote into.")],
    *,
    version: Annotated[
        str | None, typer.Option("--version", help="Default: what the previous environment runs.")
    ] = None,
    canary: Annotated[int, typer.Option("--canary", min=0, help="Nodes in the first wave.")] = 1,
    wave_size: Annotated[str, typer.Option("--wave-size", help="Nodes per wave: 5 or 25%.")] = "25%",
    max_failures: Annotated[
        str, typer.Option("--max-failures", help="Failed nodes tolerated: 1 or 10%.")
    ] = "0",
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    watch: Watch = False,
    as_json: AsJson = False,
) -> None:
    """Promote a version into an environment: gates, then waves within a failure budget."""
    from conveyor.cli import deploy  # noqa: PLC0415

    body = {
        "package": package,
        "to_env": to_env,
        "version": version,
        "canary": canary,
        "wave_size": wave_size,
        "max_failures": max_failures,
        "reason": reason,
    }
    raise typer.Exit(deploy.promote(body, watch=watch, as_json=as_json))


@app.command("approve")
def approve_command(
    promotion: Annotated[str, typer.Argument(help="The promotion's id.")], watch: Watch = False
) -> None:
    """Approve someone else's promotion (into an environment that needs approval)."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.approve(promotion, watch=watch))


@app.command("reject")
def reject_command(
    promotion: Annotated[str, typer.Argument(help="The promotion's id.")],
    reason: Annotated[str | None, typer.Option("--reason")] = None,
) -> None:
    """Turn down a promotion awaiting approval (or withdraw your own)."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.reject(promotion, reason))


@app.command("retry")
def retry_command(
    promotion: Annotated[str, typer.Argument(help="The promotion's id.")], watch: Watch = False
) -> None:
    """Run a finished promotion's failed and unreachable nodes again."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.retry(promotion, watch=watch))


@app.command("rollback")
def rollback_command(
    package: Annotated[str, typer.Argument(help="The package.")],
    env: Annotated[str, typer.Option("--env", help="The environment to roll back.")],
    *,
    to_version: Annotated[str | None, typer.Option("--to", help="Default: the last good version.")] = None,
    reason: Annotated[str | None, typer.Option("--reason")] = None,
    watch: Watch = False,
    as_json: AsJson = False,
) -> None:
    """Return an environment to its last good version and block the bad one."""
    from conveyor.cli import deploy  # noqa: PLC0415

    body = {"package": package, "env": env, "to_version": to_version, "reason": reason}
    raise typer.Exit(deploy.rollback(body, watch=watch, as_json=as_json))


@app.command("unblock")
def unblock_command(
    package: Annotated[str, typer.Argument(help="The package.")],
    version: Annotated[str, typer.Argument(help="The blocked version.")],
    reason: Annotated[str | None, typer.Option("--reason")] = None,
) -> None:
    """Let a blocked version be promoted again."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.unblock(package, version, reason))


@app.command("blocked")
def blocked_command(as_json: AsJson = False) -> None:
    """Versions no promotion may apply, and why."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.blocked(as_json=as_json))


@promotions_app.command("list")
def promotions_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 20, as_json: AsJson = False
) -> None:
    """The newest promotions and rollbacks."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.promotions(as_json=as_json, limit=limit))


@promotions_app.command("show")
def promotions_show(
    promotion: Annotated[str, typer.Argument(help="The promotion's id.")],
    watch: Watch = False,
    as_json: AsJson = False,
) -> None:
    """One promotion: a progress bar per wave, a row per node."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.show(promotion, watch=watch, as_json=as_json))


@nodes_app.command("list")
def nodes_list(
    env: Annotated[str | None, typer.Option("--env")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="k=v; repeat to narrow.")] = None,
    as_json: AsJson = False,
) -> None:
    """The inventory's nodes and what they run."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.nodes(env, label or [], as_json=as_json))


@nodes_app.command("trust")
def nodes_trust(
    env: Annotated[str | None, typer.Option("--env")] = None,
    node: Annotated[str | None, typer.Option("--node")] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Trust without asking (after reading the table).")
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Accept a CHANGED key (a reinstalled node; verify it first).")
    ] = False,
) -> None:
    """Show the nodes' SSH host key fingerprints and record the ones you confirm."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.trust(env, node, yes=yes, replace=replace))


@nodes_app.command("bootstrap")
def nodes_bootstrap(
    env: Annotated[str, typer.Option("--env")],
    node: Annotated[str | None, typer.Option("--node")] = None,
    as_json: AsJson = False,
) -> None:
    """Install the node agents over SSH, configure and start them; a second run changes nothing."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.bootstrap(env, node, as_json=as_json))


@nodes_app.command("provision-ctl-user")
def nodes_provision_ctl_user(
    env: Annotated[str, typer.Option("--env", help="The environment whose nodes get the account.")],
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    failures_only: Annotated[
        bool, typer.Option("--failures-only", help="Show only the self-test's failed checks.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Create or update the system-control user (sudo rules for the node's units only), then self-test
    it on each node; a second run changes nothing and says so."""
    from conveyor.cli import ctl  # noqa: PLC0415

    raise typer.Exit(ctl.provision(env, node, as_json=as_json, failures_only=failures_only))


@nodes_app.command("remove-ctl-user")
def nodes_remove_ctl_user(
    env: Annotated[str, typer.Option("--env", help="The environment whose nodes lose the account.")],
    node: Annotated[str | None, typer.Option("--node", help="Only this node.")] = None,
    as_json: AsJson = False,
) -> None:
    """Remove the system-control user, its sudo rules, keys, forced command and polkit rule."""
    from conveyor.cli import ctl  # noqa: PLC0415

    raise typer.Exit(ctl.remove(env, node, as_json=as_json))


@nodes_app.command("check")
def nodes_check(env: Annotated[str | None, typer.Option("--env")] = None, as_json: AsJson = False) -> None:
    """One row per node over SSH: reachable, latency, OS, kernel, free disk, agents, and whether the
    system-control user is there and passes its self-test."""
    from conveyor.cli import deploy  # noqa: PLC0415

    raise typer.Exit(deploy.check(env, as_json=as_json))


KeyPath = Annotated[str, typer.Argument(help="The signing key file.")]
_DEFAULT_KEY = "/etc/conveyor/signing.key"


@keys_app.command("init")
def keys_init(
    path: KeyPath = _DEFAULT_KEY,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create the signing key (0600) and print the public key line nodes must trust."""
    from conveyor.cli import keys  # noqa: PLC0415

    raise typer.Exit(keys.run_init(path, force=force))


@keys_app.command("rotate")
def keys_rotate(
    path: KeyPath = _DEFAULT_KEY,
    promote: Annotated[
        bool, typer.Option("--promote", help="Step 2: make the prepared key the signing key.")
    ] = False,
) -> None:
    """Rotate without breaking nodes: prepare a key, trust it everywhere, promote it, untrust the old."""
    from conveyor.cli import keys  # noqa: PLC0415

    raise typer.Exit(keys.run_rotate(path, promote=promote))


@keys_app.command("show")
def keys_show(path: KeyPath = _DEFAULT_KEY) -> None:
    """The signing key's id and public key line."""
    from conveyor.cli import keys  # noqa: PLC0415

    raise typer.Exit(keys.run_show(path))


@keys_app.command("trust")
def keys_trust(
    trusted_file: Annotated[str, typer.Argument(help="A node's trusted-keys file.")],
    key_line: Annotated[str, typer.Argument(help="The public key line `keys show` prints.")],
) -> None:
    """Add a public key to a node's trusted keys (restart the node's agents after)."""
    from conveyor.cli import keys  # noqa: PLC0415

    raise typer.Exit(keys.run_trust(trusted_file, key_line))


@keys_app.command("untrust")
def keys_untrust(
    trusted_file: Annotated[str, typer.Argument(help="A node's trusted-keys file.")],
    key_id: Annotated[str, typer.Argument(help="ed25519:<16 hex>")],
) -> None:
    """Remove a public key from a node's trusted keys."""
    from conveyor.cli import keys  # noqa: PLC0415

    raise typer.Exit(keys.run_untrust(trusted_file, key_id))


@app.command("versions")
def versions_command(
    env: Annotated[str | None, typer.Option("--env", help="Only this environment.")] = None,
    package: Annotated[str | None, typer.Option("--package", help="Only this package.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Which version of every package each environment runs (from the version-db)."""
    from conveyor.cli import records  # noqa: PLC0415

    raise typer.Exit(records.versions(env, package, as_json=as_json))


@app.command("history")
def history_command(
    package: Annotated[str, typer.Argument(help="The package.")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A package's changesets and deployments, newest first."""
    from conveyor.cli import records  # noqa: PLC0415

    raise typer.Exit(records.history(package, limit, as_json=as_json))


@app.command("diff")
def diff_command(
    from_env: Annotated[str, typer.Argument(help="e.g. dev")],
    to_env: Annotated[str, typer.Argument(help="e.g. qa")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Packages whose versions differ between two environments."""
    from conveyor.cli import records  # noqa: PLC0415

    raise typer.Exit(records.diff(from_env, to_env, as_json=as_json))


audit_app = typer.Typer(help="The audit logs.", invoke_without_command=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    node: Annotated[str, typer.Option("--node", help="The node whose firewall audit log to check.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a node's firewall audit log (read over SSH): an unbroken hash chain that holds every record
    version-db has a copy of. Exit 1 when a record was removed or altered."""
    from conveyor.cli import firewall  # noqa: PLC0415

    raise typer.Exit(firewall.audit_verify(node, as_json=as_json))


@audit_app.callback()
def audit_command(
    ctx: typer.Context,
    *,
    actor: Annotated[str | None, typer.Option("--actor")] = None,
    action: Annotated[str | None, typer.Option("--action", help="e.g. deployment.requested")] = None,
    env: Annotated[str | None, typer.Option("--env")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601 time")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601 time")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Who did what, newest first (version-db's audit log); `conveyor audit verify` checks a node's."""
    if ctx.invoked_subcommand is not None:
        return
    from conveyor.cli import records  # noqa: PLC0415

    filters = {"actor": actor, "action": action, "env": env, "since": since, "until": until, "limit": limit}
    raise typer.Exit(records.audit(filters, as_json=as_json))


@notify_app.command("test")
def notify_test(
    rules: Annotated[str, typer.Option("--rules", help="The notifier's rules file (YAML).")],
    event: Annotated[str, typer.Option("--event", help="An event envelope as JSON; '-' reads stdin.")],
    labels: Annotated[
        list[str] | None,
        typer.Option(
            "--labels", help="A node's inventory labels: NODE=KEY=VALUE[,KEY=VALUE...]; repeatable."
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Which rules match an event, its receivers, group key, timing and escalation; sends nothing."""
    from conveyor.cli import notify  # noqa: PLC0415

    raise typer.Exit(notify.run_test(rules, event, labels=labels or [], as_json=as_json))


def run() -> None:
    app()
