"""The firewall backends against the real tools, each test inside network namespaces of its own.

A "node" namespace gets a realistic firewall (nftables, iptables-nft, iptables-legacy, ufw or firewalld);
a TCP listener on a port the rules do not allow is reached from a "client" namespace over a veth pair,
before, while and after the backend opens and restores the firewall. Every firewall command runs inside
the node namespace; ufw and firewalld get their own copies of ``/etc/ufw``, ``/etc/default`` and
``/etc/firewalld`` through ``/etc/netns/<node>``, and the host's copies are checked unchanged. firewalld
runs with a D-Bus daemon of its own, whose socket ``DBUS_SYSTEM_BUS_ADDRESS`` names for every test (one
that does not exist when no firewalld is started), so a firewalld of the host never answers.

Needs root and nftables, iptables, ufw, firewalld and dbus (``scripts/ensure-services.sh`` installs them):
a missing one fails the test, saying which Debian package to install.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.testing.firewalls import (
    ALLOWED,
    BLOCKED,
    BLOCKED_WAIT_S,
    FIREWALLS,
    Firewall,
    FirewallSetupError,
    firewalld_bus,
    iptables_setup,
    require,
    setup_nftables,
)
from conveyor.testing.netns import NodeNamespaces
from conveyor_firewall_agent.backends import (
    BACKENDS,
    FirewallError,
    Nftables,
    Runner,
    detect,
)


def _require(*tools: str) -> None:
    try:
        require(*tools)
    except FirewallSetupError as exc:
        pytest.fail(str(exc))


@pytest.fixture(autouse=True)
def _private_system_bus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """firewall-cmd asks the system bus: the test's own firewalld's (none for most), never the host's."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", firewalld_bus(tmp_path))


@pytest.fixture
def nodes() -> Iterator[NodeNamespaces]:
    _require()
    with NodeNamespaces() as namespaces:
        yield namespaces


def _digest(*paths: Path) -> dict[str, str]:
    """Every file under ``paths`` with its SHA-256: to show the host's copies unchanged."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


# -- the node's firewalls ----------------------------------------------------------------------------------


@pytest.fixture(params=FIREWALLS, ids=lambda firewall: firewall.backend)
def firewall(request: pytest.FixtureRequest) -> Iterator[Firewall]:
    chosen: Firewall = request.param
    _require(*chosen.tools)
    before = _digest(*map(Path, chosen.protected))
    yield chosen
    assert _digest(*map(Path, chosen.protected)) == before, "the host's own configuration changed"


# -- open and restore --------------------------------------------------------------------------------------


async def test_open_then_restore_puts_back_exactly_the_saved_firewall(
    firewall: Firewall, nodes: NodeNamespaces, tmp_path: Path
) -> None:
    with nodes.listen_tcp(BLOCKED), nodes.listen_tcp(ALLOWED):
        firewall.setup(nodes, tmp_path)
        backend = await detect(Runner(netns=nodes.node))
        assert backend.name == firewall.backend
        listed = await backend.listing()
        nat = nodes.run_in_node(*firewall.nat).stdout
        assert firewall.nat_rule in nat
        assert nodes.reachable(ALLOWED)
        assert not nodes.reachable(BLOCKED, timeout_s=BLOCKED_WAIT_S)

        snapshot = await backend.snapshot()
        await backend.open()
        assert nodes.reachable(BLOCKED)
        assert nodes.run_in_node(*firewall.nat).stdout == nat, "open() changed the NAT rules"

        await backend.restore(snapshot)
        assert not nodes.reachable(BLOCKED, timeout_s=BLOCKED_WAIT_S)
        assert nodes.reachable(ALLOWED)
        assert await backend.listing() == listed


async def test_restore_undoes_what_was_changed_while_open(
    firewall: Firewall, nodes: NodeNamespaces, tmp_path: Path
) -> None:
    firewall.setup(nodes, tmp_path)
    backend = BACKENDS[firewall.backend](Runner(netns=nodes.node))
    listed = await backend.listing()
    snapshot = await backend.snapshot()
    await backend.open()
    nodes.run_in_node(*firewall.change)
    assert await backend.listing() != listed

    await backend.restore(snapshot)
    assert await backend.listing() == listed
    with nodes.listen_tcp(9999):
        assert not nodes.reachable(9999, timeout_s=BLOCKED_WAIT_S)


async def test_nftables_restore_puts_back_counter_values(nodes: NodeNamespaces, tmp_path: Path) -> None:
    _require("nft")
    setup_nftables(nodes, tmp_path)
    with nodes.listen_tcp(ALLOWED):
        assert nodes.reachable(ALLOWED)
    backend = Nftables(Runner(netns=nodes.node))
    snapshot = await backend.snapshot()
    ssh_counter = next(line.strip() for line in snapshot.decode().splitlines() if "tcp dport 22" in line)
    assert "packets 0 " not in ssh_counter
    await backend.open()
    await backend.restore(snapshot)
    assert ssh_counter in nodes.run_in_node("nft", "list", "ruleset").stdout


async def test_nftables_open_accepts_on_every_filter_hook_and_keeps_other_chains(
    nodes: NodeNamespaces,
) -> None:
    _require("nft")
    nodes.run_in_node(
        "nft",
        "-f",
        "-",
        input="""\
table netdev edge {
    chain ingress { type filter hook ingress device "eth0" priority 0; policy drop;
        counter
    }
}
table bridge br {
    chain forward { type filter hook forward priority 0; policy drop;
    }
}
table ip6 v6 {
    chain in { type filter hook input priority 10; policy drop;
        tcp dport 22 accept
    }
    chain helper {
        counter
    }
}
table ip marks {
    chain out { type route hook output priority -150; policy accept;
        meta mark set 1
    }
}
""",
    )
    backend = Nftables(Runner(netns=nodes.node))
    await backend.open()
    listed = await backend.listing()
    assert "policy drop" not in listed
    assert "tcp dport 22 accept" not in listed
    assert "meta mark set 0x00000001" in listed, "the route chain must stay"
    assert "chain helper" in listed, "chains without a hook stay"


async def test_iptables_restore_empties_tables_added_while_open(
    nodes: NodeNamespaces, tmp_path: Path
) -> None:
    _require("iptables-nft-restore")
    iptables_setup("nft")(nodes, tmp_path)
    backend = BACKENDS["iptables-nft"](Runner(netns=nodes.node))
    snapshot = await backend.snapshot()
    await backend.open()
    nodes.run_in_node("iptables-nft", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "-j", "NOTRACK")
    await backend.restore(snapshot)
    assert "NOTRACK" not in nodes.run_in_node("iptables-nft-save").stdout


# -- detection and failures --------------------------------------------------------------------------------


async def test_detect_picks_nftables_on_a_node_without_rules(nodes: NodeNamespaces) -> None:
    _require("nft")
    assert (await detect(Runner(netns=nodes.node))).name == "nftables"


async def test_detect_leaves_a_mixed_ruleset_to_nftables(nodes: NodeNamespaces, tmp_path: Path) -> None:
    _require("nft", "iptables-nft-restore")
    iptables_setup("nft")(nodes, tmp_path)
    assert (await detect(Runner(netns=nodes.node))).name == "iptables-nft"
    nodes.run_in_node("nft", "add", "table", "inet", "extra")  # not iptables-nft's: only nft sees it all
    assert (await detect(Runner(netns=nodes.node))).name == "nftables"


async def test_a_failing_command_names_the_backend_the_command_and_its_error(nodes: NodeNamespaces) -> None:
    _require("nft")
    with pytest.raises(FirewallError) as caught:
        await Nftables(Runner(netns=nodes.node)).restore(b"table inet broken {\n    chain input {\n")
    message = str(caught.value)
    assert message.startswith("nftables: `nft -f -`")
    assert f"in network namespace {nodes.node}" in message
    assert "syntax error" in message


async def test_an_override_whose_tool_is_missing_is_refused(
    nodes: NodeNamespaces, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner = Runner(netns=nodes.node)
    with pytest.raises(FirewallError, match="firewalld is not running"):
        await detect(runner, "firewalld")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing is installed
    with pytest.raises(FirewallError, match=r"nft is not installed \(apt-get install nftables\)"):
        await detect(runner, "nftables")
    with pytest.raises(FirewallError, match=r"no firewall backend found"):
        await detect(runner)
    with pytest.raises(FirewallError, match=r"iptables-nft-save is not installed, so `iptables-nft-save -c`"):
        await BACKENDS["iptables-nft"](runner).snapshot()


async def test_a_command_running_too_long_is_killed(nodes: NodeNamespaces) -> None:
    started = time.monotonic()
    with pytest.raises(
        FirewallError, match=r"`sleep 30` in network namespace .* did not finish within 0.2 s"
    ):
        await Runner(netns=nodes.node, timeout_s=0.2).run("sleep", "30")
    assert time.monotonic() - started < 5
