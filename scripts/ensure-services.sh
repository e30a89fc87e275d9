#!/usr/bin/env bash
# Make sure the services Conveyor's demo and tests use are installed and running:
# RabbitMQ with its management plugin, MariaDB, the sshd binary, sudo, Node.js and the firewall tools.
# Idempotent; used by `make demo`, `make test` and .ci/run.
set -euo pipefail

log() { printf '\n==> %s\n' "$*"; }

apt_install() {
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@"
}

wait_for_port() { # host port seconds what
    local deadline=$((SECONDS + $3))
    until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "error: $4 is not listening on $1:$2 after $3s" >&2
            return 1
        fi
        sleep 1
    done
}

# -- RabbitMQ with the management plugin -----------------------------------------
command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    log "starting RabbitMQ"
    rabbitmq-server -detached
fi
rabbitmqctl -q await_startup --timeout 120
if ! rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
    log "enabling the RabbitMQ management plugin"
    rabbitmq-plugins -q enable rabbitmq_management
fi
wait_for_port 127.0.0.1 5672 120 "RabbitMQ"
wait_for_port 127.0.0.1 15672 120 "the RabbitMQ management API"

# -- MariaDB ----------------------------------------------------------------------
command -v mariadbd >/dev/null 2>&1 || apt_install mariadb-server
if ! (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; then
    log "starting MariaDB"
    install -d -o mysql -g mysql /run/mysqld
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
wait_for_port 127.0.0.1 3306 120 "MariaDB"


# -- OpenSSH's server (the tests start their own sshd per node; nothing runs on :22) --
if [ ! -x /usr/sbin/sshd ]; then
    apt_install openssh-server
    # Debian's package may start a system sshd where a service manager exists; the tests
    # need only the binary.
    pkill -x sshd 2>/dev/null || true
fi
install -d -m 0755 /run/sshd

# -- sudo and visudo (the system-control user's rules are tested with the real ones) -----------
command -v visudo >/dev/null 2>&1 || apt_install sudo
# Node.js runs the generated polkit rule in its test (no polkitd without systemd here).
command -v node >/dev/null 2>&1 || apt_install nodejs

# -- firewall tools (the firewall agent's backends are tested inside network namespaces) -------------
# nft, iptables-nft and iptables-legacy (the iptables package has both), ufw, and firewalld with a
# dbus-daemon; the tests run each against a namespace's own firewall, never this machine's. firewalld's
# package enables and starts its service under systemd, which would put this machine behind its default
# zone: the unit is masked first (no start, no D-Bus activation, not at boot), and policy-rc.d refuses
# service starts during the install where there is no systemd.
command -v nft >/dev/null 2>&1 || apt_install nftables
if ! command -v iptables-nft >/dev/null 2>&1 || ! command -v iptables-legacy >/dev/null 2>&1; then
    apt_install iptables
fi
command -v ufw >/dev/null 2>&1 || apt_install ufw
if ! command -v firewalld >/dev/null 2>&1 || ! command -v dbus-daemon >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then systemctl mask firewalld.service; fi
    if [ -e /usr/sbin/policy-rc.d ]; then
        apt_install firewalld dbus-daemon
    else
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        apt_install firewalld dbus-daemon
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi

# -- docker-compose (tests/test_compose.py renders docker-compose.yml with `docker-compose config`) -----
# Only the client: rendering needs no engine, so Debian's recommended docker.io is left out.
command -v docker-compose >/dev/null 2>&1 || apt_install --no-install-recommends docker-compose
