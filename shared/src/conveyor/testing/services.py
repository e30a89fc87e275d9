"""Finding the real services tests run against (local, container, or a clear failure)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

__all__ = [
    "RabbitEndpoint",
    "ServiceMissing",
    "find_mysql",
    "find_rabbitmq",
    "free_port",
    "reachable",
]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_MYSQL_URL = "mysql+asyncmy://root@127.0.0.1:3306/"


class ServiceMissing(RuntimeError):
    """A service the tests need is not running and no container could be started."""


@dataclass(frozen=True)
class RabbitEndpoint:
    amqp_url: str  # without a vhost
    management_url: str
    user: str
    password: str

    def url_for(self, vhost: str) -> str:
        parts = urlsplit(self.amqp_url)
        return urlunsplit(parts._replace(path="/" + vhost))

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.management_url, auth=(self.user, self.password), timeout=30.0)

    def create_vhost(self, name: str) -> None:
        """Create ``name`` (if missing) and give this endpoint's user every permission on it."""
        path = quote(name, safe="")
        with self.admin() as admin:
            admin.put(f"/api/vhosts/{path}").raise_for_status()
            admin.put(
                f"/api/permissions/{path}/{quote(self.user, safe='')}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
            ).raise_for_status()

    def delete_vhost(self, name: str) -> None:
        with self.admin() as admin:
            response = admin.delete(f"/api/vhosts/{quote(name, safe='')}")
            if response.status_code != 404:
                response.raise_for_status()

    @contextmanager
    def private_vhost(self, prefix: str = "test") -> Iterator[str]:
        """A fresh vhost, deleted afterwards with all it holds, whatever happens."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.create_vhost(name)
        try:
            yield name
        finally:
            self.delete_vhost(name)

    @classmethod
    def from_url(cls, amqp_url: str, management_url: str | None = None) -> RabbitEndpoint:
        parts = urlsplit(amqp_url)
        management = management_url or f"http://{parts.hostname or '127.0.0.1'}:15672"
        return cls(
            urlunsplit(parts._replace(path="/")),
            management,
            parts.username or "guest",
            parts.password or "guest",
        )


def reachable(url: str, *, default_port: int, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    try:
        import docker  # noqa: PLC0415 - only when a container is needed

        docker.from_env(timeout=2).ping()
    except Exception:  # noqa: BLE001 - any failure means no usable engine
        return False
    return True


def find_rabbitmq(started: list[Any]) -> RabbitEndpoint:
    """The broker from ``CONVEYOR_TEST_AMQP_URL`` (default: local), else a container."""
    url = os.environ.get("CONVEYOR_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    parts = urlsplit(url)
    management = os.environ.get(
        "CONVEYOR_TEST_RABBITMQ_MANAGEMENT_URL", f"http://{parts.hostname or '127.0.0.1'}:15672"
    )
    if reachable(url, default_port=5672):
        return RabbitEndpoint.from_url(url, management)
    if _docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer  # noqa: PLC0415

        container = RabbitMqContainer("rabbitmq:3.13-management").start()
        started.append(container)
        host = container.get_container_host_ip()
        amqp = f"amqp://guest:guest@{host}:{container.get_exposed_port(5672)}/"
        return RabbitEndpoint(amqp, f"http://{host}:{container.get_exposed_port(15672)}", "guest", "guest")
    raise ServiceMissing(
        f"RabbitMQ is not reachable at {parts.hostname}:{parts.port or 5672} and no Docker engine "
        "answers. Start it (`rabbitmq-server -detached`, then "
        "`rabbitmq-plugins enable rabbitmq_management`) or set CONVEYOR_TEST_AMQP_URL."
    )


def find_mysql(started: list[Any]) -> str:
    """The server from ``CONVEYOR_TEST_MYSQL_URL`` (default: local MariaDB), else a container."""
    url = os.environ.get("CONVEYOR_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)
    if reachable(url, default_port=3306):
        return url
    if _docker_answers():
        from testcontainers.mysql import MySqlContainer  # noqa: PLC0415

        container = MySqlContainer("mariadb:11", username="root", password="test").start()  # noqa: S106 - a throwaway container
        started.append(container)
        host = container.get_container_host_ip()
        return f"mysql+asyncmy://root:test@{host}:{container.get_exposed_port(3306)}/"
    parts = urlsplit(url)
    raise ServiceMissing(
        f"MySQL/MariaDB is not reachable at {parts.hostname}:{parts.port or 3306} and no Docker "
        "engine answers. Start it (`start-stop-daemon --start --oknodo --background --exec "
        "/usr/sbin/mariadbd`) or set CONVEYOR_TEST_MYSQL_URL."
    )


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = handle.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port free now, chosen outside the kernel's ephemeral range.

    A port from ``bind(0)`` comes from the range the kernel also hands to outgoing
    connections: one of those (a broker client, an HTTP call) can take it before the
    service that was given it binds it. Ports below the range are never handed out
    that way, so only another test could take one — and they are drawn at random.
    """
    import random  # noqa: PLC0415

    low, _ = _ephemeral_range()
    candidates = range(10_000, max(low, 10_001))
    for _ in range(200):
        port = random.choice(candidates)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port found below the ephemeral range")
