"""The desired-state files: validation that names the field, Conveyor's own topology and its
least-privilege patterns, the profiles' rabbitmq.conf, and RabbitMQ's password hashes."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest

from conveyor_deployer.rabbit.desired import DesiredError, load_desired
from conveyor_deployer.rabbit.plan import password_matches
from conveyor_deployer.rabbit.profiles import render_conf

QA = """
env: qa
profile: qa
cluster:
  nodes:
    - {name: rabbit@qa-mq-1, host: qa-mq-1, management_url: "http://qa-mq-1:15672"}
    - {name: rabbit@qa-mq-2, host: qa-mq-2, management_url: "http://qa-mq-2:15672"}
    - {name: rabbit@qa-mq-3, host: qa-mq-3, management_url: "http://qa-mq-3:15672"}
management: {user: conveyor-admin, password_file: /etc/conveyor/secrets/rabbit-qa-admin}
vhosts:
  - {name: qa, conveyor: true, limits: {max-connections: 500}}
queues:
  - {vhost: qa, name: app.jobs}
"""


def write(tmp_path: Path, text: str, name: str = "qa.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_vhost_with_conveyor_gets_its_exchanges_policy_and_service_users(tmp_path: Path) -> None:
    state = load_desired(write(tmp_path, QA))

    assert {e.name for e in state.exchanges} == {
        "conveyor.events",
        "conveyor.commands",
        "conveyor.retry",
        "conveyor.dead-letter",
    }
    [policy] = state.policies
    assert policy.name == "conveyor-qa-queues"
    assert policy.definition["delivery-limit"] == 20
    assert policy.definition["dead-letter-exchange"] == "conveyor.dead-letter"
    users = {u.name: u for u in state.users}
    assert users["conveyor-version-db"].password_env == "CONVEYOR_RABBIT_QA_VERSION_DB_PASSWORD"
    assert "guest" not in users
    assert state.guest_removed()


@pytest.mark.parametrize(
    ("user", "allowed", "refused"),
    [
        (
            "conveyor-deployer",
            ["deployer.events", "deployer.events.dead", "deployer.events.delay.1000", "conveyor.events"],
            ["deployer.eventsx", "notifier.events", "listener.qa-web-1.commands", "amq.gen-1", "rogue"],
        ),
        (
            "conveyor-agent",
            [
                "listener.qa-web-1.commands",
                "listener.qa-web-1.commands.dead",
                "firewall-agent.qa-web-1.commands",
            ],
            ["listener", "firewall-agent", "deployer.events", "notifier.events.dead"],
        ),
    ],
)
def test_service_users_reach_only_their_own_queues(
    tmp_path: Path, user: str, allowed: list[str], refused: list[str]
) -> None:
    state = load_desired(write(tmp_path, QA))
    [permission] = [p for p in state.permissions if p.user == user]
    for name in allowed:
        assert re.search(permission.configure, name), name
    for name in refused:
        assert not re.search(permission.configure, name), name
    assert permission.configure == permission.write == permission.read


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("profile: qa", "profile: prod"), "cluster.nodes: the prod profile runs 3 or 5 node(s), not 2"),
        (
            ("{vhost: qa, name: app.jobs}", "{vhost: qb, name: app.jobs}"),
            "queues: vhost 'qb' is not in vhosts",
        ),
        (
            ("password_file: /etc/conveyor/secrets/rabbit-qa-admin", "password_env: X, password_file: /x"),
            "management: give password_env or password_file (one of them)",
        ),
        (("max-connections: 500", "max-connections: -1"), "vhosts[qa].limits.max-connections"),
        (("name: app.jobs}", "name: app.jobs, type: lazy}"), "queues[app.jobs].type"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = QA.replace(*change)
    if "prod" in change[1]:
        text = text.replace(
            '    - {name: rabbit@qa-mq-3, host: qa-mq-3, management_url: "http://qa-mq-3:15672"}\n', ""
        )
    with pytest.raises(DesiredError) as caught:
        load_desired(write(tmp_path, text))
    assert str(caught.value).startswith(f"{tmp_path / 'qa.yaml'}: ")
    assert message in str(caught.value)


def test_the_prod_profile_renders_pause_minority_watermarks_and_tls(tmp_path: Path) -> None:
    text = (
        QA.replace("profile: qa", "profile: prod").replace("env: qa", "env: prod")
        + "tls: {cacertfile: /etc/rabbitmq/ca.pem, certfile: /etc/rabbitmq/cert.pem,"
        + " keyfile: /etc/rabbitmq/key.pem}\n"
        + "tuning: {management_bind: 10.0.0.5}\n"
    )
    conf = render_conf(load_desired(write(tmp_path, text, "prod.yaml")))
    assert "cluster_partition_handling = pause_minority" in conf
    assert "vm_memory_high_watermark.relative = 0.4" in conf
    assert "cluster_formation.classic_config.nodes.3 = rabbit@qa-mq-3" in conf
    assert "listeners.tcp = none" in conf
    assert "listeners.ssl.default = 5671" in conf
    assert "ssl_options.fail_if_no_peer_cert = true" in conf
    assert "management.tcp.ip = 10.0.0.5" in conf


def test_rabbitmq_password_hashes_are_checked_with_their_salt() -> None:
    salt = b"\x90\x8a\x1e\x07"
    stored = base64.b64encode(salt + hashlib.sha256(salt + b"s3cret").digest()).decode()
    assert password_matches(stored, "rabbit_password_hashing_sha256", "s3cret")
    assert not password_matches(stored, "rabbit_password_hashing_sha256", "other")
    assert not password_matches(stored, "rabbit_password_hashing_unknown", "s3cret")
    assert not password_matches("not base64!", "rabbit_password_hashing_sha256", "s3cret")
