"""Realistic firewalls for tests, each set up inside a node network namespace (:mod:`conveyor.testing.netns`).

``FIREWALLS`` holds one configuration per backend the firewall agent supports: nftables (a named inet
table with a default-drop input policy, a set, counters, conntrack, ssh allowed, plus NAT), the same for
iptables-nft and iptables-legacy (v4 and v6), ufw (default deny incoming, ssh allowed, masquerading) and
firewalld (on a D-Bus daemon of its own, see :func:`firewalld_bus`, with its own ``/etc/firewalld``).
Each leaves ``BLOCKED`` closed and ``ALLOWED`` open. ufw and firewalld get their own copies of
``/etc/ufw``, ``/etc/default`` and ``/etc/firewalld`` through ``/etc/netns/<node>``, so the host's are
never written. Used by the backends' tests and by the end-to-end firewall tests.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conveyor.contracts.catalogue import FirewallBackend
from conveyor.testing.netns import NodeNamespaces

__all__ = [
    "ALLOWED",
    "BLOCKED",
    "BLOCKED_WAIT_S",
    "FIREWALLS",
    "Firewall",
    "FirewallSetupError",
    "firewalld_bus",
    "iptables_setup",
    "require",
    "setup_firewalld",
    "setup_nftables",
    "setup_ufw",
]

BLOCKED = 8080
"""A port the rules do not allow; the listener on it is reachable only while the firewall is open."""
ALLOWED = 22
"""A port every configuration allows (ssh): proves the rules block selectively, not the link."""
BLOCKED_WAIT_S = 0.5
"""How long a connection to a blocked port waits: over a veth pair an allowed one answers in milliseconds."""

_PACKAGES = {
    "ip": "iproute2",
    "nft": "nftables",
    "iptables-nft-restore": "iptables",
    "iptables-legacy-restore": "iptables",
    "ufw": "ufw",
    "firewalld": "firewalld",
    "firewall-cmd": "firewalld",
    "dbus-daemon": "dbus-daemon",
}


class FirewallSetupError(RuntimeError):
    """A tool is missing, not run as root, or a firewall daemon did not start."""


def require(*tools: str) -> None:
    """Root and ``tools`` (and ``ip``); :class:`FirewallSetupError` naming the Debian packages otherwise."""
    if os.geteuid() != 0:
        raise FirewallSetupError(
            "these tests create network namespaces and firewalls in them: run them as root"
        )
    missing = [tool for tool in ("ip", *tools) if shutil.which(tool) is None]
    if missing:
        packages = " ".join(sorted({_PACKAGES[tool] for tool in missing}))
        raise FirewallSetupError(f"{', '.join(missing)} not installed: apt-get install {packages}")


NFT_RULESET = """\
table inet filter {
    set allowed {
        type ipv4_addr
        elements = { 192.0.2.10, 198.51.100.7 }
    }

    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related counter accept
        ct state invalid drop
        iif "lo" accept
        ip saddr @allowed counter accept
        meta l4proto { icmp, ipv6-icmp } accept
        tcp dport 22 counter accept
    }

    chain forward {
        type filter hook forward priority filter; policy drop;
    }

    chain output {
        type filter hook output priority filter; policy accept;
    }
}
table ip nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport 8443 dnat to 10.99.0.5:443
    }

    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth0" masquerade
    }
}
"""

IPTABLES_V4 = """\
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:services - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p icmp -j ACCEPT
-A INPUT -j services
-A services -p tcp -m tcp --dport 22 -j ACCEPT
-A services -s 192.0.2.10/32 -p tcp -m tcp --dport 443 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 8443 -j DNAT --to-destination 10.99.0.5:443
-A POSTROUTING -o eth0 -j MASQUERADE
COMMIT
"""

IPTABLES_V6 = """\
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p ipv6-icmp -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"""

UFW_NAT = "*nat\n:POSTROUTING ACCEPT [0:0]\n-F POSTROUTING\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n\n"
"""Masquerading as ufw's documentation has it (before.rules); ``-F`` keeps a re-enable from doubling it."""

FIREWALLD_WAIT_S = 30.0


def setup_nftables(nodes: NodeNamespaces, tmp_path: Path) -> None:
    nodes.run_in_node("nft", "-f", "-", input=NFT_RULESET)


def iptables_setup(variant: str) -> Callable[[NodeNamespaces, Path], None]:
    def setup(nodes: NodeNamespaces, tmp_path: Path) -> None:
        nodes.run_in_node(f"iptables-{variant}-restore", input=IPTABLES_V4)
        nodes.run_in_node(f"ip6tables-{variant}-restore", input=IPTABLES_V6)

    return setup


def setup_ufw(nodes: NodeNamespaces, tmp_path: Path) -> None:
    before = nodes.copy_etc("ufw") / "before.rules"
    nodes.copy_etc("default")  # ufw writes its default policies into /etc/default/ufw
    before.write_text(UFW_NAT + before.read_text())
    nodes.run_in_node("ufw", "default", "deny", "incoming")
    nodes.run_in_node("ufw", "allow", "22/tcp")
    nodes.run_in_node("ufw", "--force", "enable")


def firewalld_bus(tmp_path: Path) -> str:
    """The D-Bus address of the firewalld that :func:`setup_firewalld` starts for ``tmp_path``."""
    return f"unix:path={tmp_path / 'system_bus_socket'}"


def setup_firewalld(nodes: NodeNamespaces, tmp_path: Path) -> None:
    """firewalld in the node namespace, on a D-Bus daemon of its own (at :func:`firewalld_bus`), with its
    own /etc/firewalld: the public zone (the default) allows ssh, masquerades and forwards port 8443."""
    nodes.copy_etc("firewalld")
    address = firewalld_bus(tmp_path)
    socket = Path(address.removeprefix("unix:path="))
    if len(str(socket)) > 100:
        raise FirewallSetupError(
            f"{socket}: too long for a unix socket; give the firewalld node a shorter directory"
        )
    config = tmp_path / "dbus.conf"
    config.write_text(
        "<!DOCTYPE busconfig PUBLIC '-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN'\n"
        " 'http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd'>\n"
        f"<busconfig><type>system</type><listen>{address}</listen><auth>EXTERNAL</auth>"
        '<policy context="default"><allow user="root"/><allow own="*"/>'
        '<allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/></policy></busconfig>\n'
    )
    with (tmp_path / "dbus.log").open("wb") as log:
        bus = nodes.spawn_in_node("dbus-daemon", "--nofork", f"--config-file={config}", output=log)
    _wait_for(socket.exists, "dbus-daemon's socket", lambda: bus.poll() is not None, tmp_path)
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address}
    with (tmp_path / "firewalld.log").open("wb") as log:
        daemon = nodes.spawn_in_node(
            "firewalld", "--nofork", "--nopid", "--log-target", "console", env=env, output=log
        )

    def firewall_cmd(*argv: str, check: bool = True) -> str:
        return nodes.run_in_node(
            "env", f"DBUS_SYSTEM_BUS_ADDRESS={address}", "firewall-cmd", *argv, check=check
        ).stdout

    _wait_for(
        lambda: firewall_cmd("--state", check=False).strip() == "running",
        "firewalld",
        lambda: daemon.poll() is not None,
        tmp_path,
    )
    firewall_cmd("--permanent", "--zone=public", "--add-masquerade")
    firewall_cmd("--permanent", "--zone=public", "--add-forward-port=port=8443:proto=tcp:toaddr=10.99.0.5")
    firewall_cmd("--reload")


def _wait_for(ready: Callable[[], bool], what: str, died: Callable[[], bool], logs: Path) -> None:
    deadline = time.monotonic() + FIREWALLD_WAIT_S
    while not ready():
        if died() or time.monotonic() > deadline:
            texts = {p.name: p.read_text(errors="replace")[-3000:] for p in logs.glob("*.log")}
            raise FirewallSetupError(f"{what} did not start within {FIREWALLD_WAIT_S} s: {texts}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Firewall:
    backend: FirewallBackend
    tools: tuple[str, ...]
    setup: Callable[[NodeNamespaces, Path], None]
    nat: tuple[str, ...]
    """A command (in the node) listing the NAT rules open() must keep."""
    nat_rule: str
    """Text in that listing that shows the NAT rule."""
    change: tuple[str, ...]
    """A command (in the node) someone runs while the firewall is open, which restore must undo."""
    protected: tuple[str, ...] = ()
    """The host's files the backend's tool must never change."""


IPTABLES_VARIANTS: tuple[tuple[FirewallBackend, str], ...] = (
    ("iptables-nft", "nft"),
    ("iptables-legacy", "legacy"),
)

FIREWALLS = [
    Firewall(
        "nftables",
        ("nft",),
        setup_nftables,
        nat=("nft", "list", "table", "ip", "nat"),
        nat_rule="dnat to 10.99.0.5:443",
        change=("nft", "add", "rule", "inet", "filter", "input", "tcp", "dport", "9999", "accept"),
    ),
    *(
        Firewall(
            backend,
            (f"iptables-{variant}-restore", "nft"),
            iptables_setup(variant),
            nat=(f"iptables-{variant}", "-t", "nat", "-S"),
            nat_rule="-A POSTROUTING -o eth0 -j MASQUERADE",
            change=(f"iptables-{variant}", "-I", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"),
        )
        for backend, variant in IPTABLES_VARIANTS
    ),
    Firewall(
        "ufw",
        ("ufw",),
        setup_ufw,
        nat=("iptables-nft", "-t", "nat", "-S"),
        nat_rule="-A POSTROUTING -o eth0 -j MASQUERADE",
        change=("ufw", "allow", "9999/tcp"),
        protected=("/etc/ufw", "/etc/default/ufw"),
    ),
    Firewall(
        "firewalld",
        ("firewalld", "firewall-cmd", "dbus-daemon"),
        setup_firewalld,
        nat=("firewall-cmd", "--zone=public", "--list-forward-ports"),
        nat_rule="port=8443:proto=tcp:toport=:toaddr=10.99.0.5",
        change=("firewall-cmd", "--zone=public", "--add-port=9999/tcp"),
        protected=("/etc/firewalld",),
    ),
]
