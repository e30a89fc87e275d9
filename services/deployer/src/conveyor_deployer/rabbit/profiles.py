"""Tuning profiles: what dev, qa and prod clusters look like, rendered into ``rabbitmq.conf``.

=============================  ===============  ===============  ===============
setting                        dev              qa               prod
=============================  ===============  ===============  ===============
nodes                          1                3                3 or 5
vm_memory_high_watermark       0.6              0.5              0.4
disk_free_limit                1GB              2GB              5GB
consumer_timeout               3 h              1 h              30 min
heartbeat                      60 s             60 s             30 s
cluster_partition_handling     ignore           pause_minority   pause_minority
queue policy: delivery-limit   -                20               20
queue policy: dead-lettering   -                conveyor.dead-letter
queue policy: max-length       100 000          1 000 000        1 000 000
queue policy: message-ttl      7 days           -                -
monitoring: queue depth max    10 000           50 000           100 000
monitoring: unacked max        1 000            5 000            10 000
guest                          kept             removed          removed
=============================  ===============  ===============  ===============

Every value can be overridden under ``tuning:`` in the environment's file. Conveyor's own queues are
quorum queues in every profile (its services declare them so); the file's ``queues`` say their type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor_deployer.rabbit.desired import DesiredState, Policy, ProfileName, Tuning

__all__ = ["PROFILES", "Profile", "check_size", "queue_policy", "render_conf", "resolved"]


@dataclass(frozen=True)
class Profile:
    sizes: tuple[int, ...]
    vm_memory_high_watermark: float
    disk_free_limit: str
    consumer_timeout_ms: int
    heartbeat_s: int
    cluster_partition_handling: str
    delivery_limit: int | None
    dead_lettering: bool
    max_length: int
    message_ttl_ms: int | None
    queue_depth_max: int
    unacked_max: int
    management_bind: str = "127.0.0.1"


PROFILES: dict[str, Profile] = {
    "dev": Profile(
        sizes=(1,),
        vm_memory_high_watermark=0.6,
        disk_free_limit="1GB",
        consumer_timeout_ms=3 * 3_600_000,
        heartbeat_s=60,
        cluster_partition_handling="ignore",
        delivery_limit=None,
        dead_lettering=False,
        max_length=100_000,
        message_ttl_ms=7 * 86_400_000,
        queue_depth_max=10_000,
        unacked_max=1_000,
    ),
    "qa": Profile(
        sizes=(3,),
        vm_memory_high_watermark=0.5,
        disk_free_limit="2GB",
        consumer_timeout_ms=3_600_000,
        heartbeat_s=60,
        cluster_partition_handling="pause_minority",
        delivery_limit=20,
        dead_lettering=True,
        max_length=1_000_000,
        message_ttl_ms=None,
        queue_depth_max=50_000,
        unacked_max=5_000,
    ),
    "prod": Profile(
        sizes=(3, 5),
        vm_memory_high_watermark=0.4,
        disk_free_limit="5GB",
        consumer_timeout_ms=1_800_000,
        heartbeat_s=30,
        cluster_partition_handling="pause_minority",
        delivery_limit=20,
        dead_lettering=True,
        max_length=1_000_000,
        message_ttl_ms=None,
        queue_depth_max=100_000,
        unacked_max=10_000,
    ),
}


def check_size(profile: str, nodes: int) -> None:
    sizes = PROFILES[profile].sizes
    if nodes not in sizes:
        wanted = " or ".join(str(s) for s in sizes)
        raise ValueError(f"cluster.nodes: the {profile} profile runs {wanted} node(s), not {nodes}")


def resolved(profile: ProfileName, tuning: Tuning) -> Profile:
    """The profile with the file's ``tuning`` overrides applied."""
    base = PROFILES[profile]
    overrides = {k: v for k, v in tuning.model_dump().items() if v is not None}
    return Profile(**{**base.__dict__, **overrides})


def queue_policy(profile: ProfileName, tuning: Tuning, vhost: str) -> Policy | None:
    """The profile's policy for every queue of a Conveyor vhost. Where a queue sets the same key itself,
    RabbitMQ takes the lower of the two for ``max-length`` and ``delivery-limit`` of quorum queues and
    the queue's own value for the rest."""
    from conveyor_deployer.rabbit.desired import Policy  # noqa: PLC0415 - avoids an import cycle

    values = resolved(profile, tuning)
    definition: dict[str, Any] = {"max-length": values.max_length, "overflow": "reject-publish"}
    if values.delivery_limit is not None:
        definition["delivery-limit"] = values.delivery_limit
    if values.dead_lettering:
        definition["dead-letter-exchange"] = "conveyor.dead-letter"
    if values.message_ttl_ms is not None:
        definition["message-ttl"] = values.message_ttl_ms
    return Policy(
        vhost=vhost,
        name=f"conveyor-{profile}-queues",
        pattern=".*",
        apply_to="queues",
        priority=0,
        definition=definition,
    )


def render_conf(state: DesiredState) -> str:
    """``rabbitmq.conf`` for every node of the cluster (new-style format)."""
    values = resolved(state.profile, state.tuning)
    lines = [
        f"# rabbitmq.conf for the {state.env} cluster ({state.profile} profile), rendered by",
        f"# `conveyor rabbit config --env {state.env}`. Same file on every node.",
        "",
        "cluster_formation.peer_discovery_backend = classic_config",
    ]
    lines += [
        f"cluster_formation.classic_config.nodes.{i} = {n.name}" for i, n in enumerate(state.cluster.nodes, 1)
    ]
    lines += [
        f"cluster_partition_handling = {values.cluster_partition_handling}",
        f"vm_memory_high_watermark.relative = {values.vm_memory_high_watermark}",
        f"disk_free_limit.absolute = {values.disk_free_limit}",
        f"consumer_timeout = {values.consumer_timeout_ms}",
        f"heartbeat = {values.heartbeat_s}",
        "loopback_users.guest = true",
        f"management.tcp.ip = {values.management_bind}",
        "management.tcp.port = 15672",
        "prometheus.tcp.port = 15692",
        "collect_statistics_interval = 10000",
    ]
    if state.tls is None:
        lines.append("listeners.tcp.default = 5672")
    else:
        tls = state.tls
        lines.append("listeners.tcp.default = 5672" if tls.plain_listener else "listeners.tcp = none")
        lines += [
            f"listeners.ssl.default = {tls.port}",
            f"ssl_options.cacertfile = {tls.cacertfile}",
            f"ssl_options.certfile = {tls.certfile}",
            f"ssl_options.keyfile = {tls.keyfile}",
            f"ssl_options.verify = {'verify_peer' if tls.verify_peer else 'verify_none'}",
            f"ssl_options.fail_if_no_peer_cert = {'true' if tls.fail_if_no_peer_cert else 'false'}",
            "ssl_options.versions.1 = tlsv1.3",
            "ssl_options.versions.2 = tlsv1.2",
        ]
    return "\n".join(line for line in lines if line) + "\n"
