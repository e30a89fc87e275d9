"""Pytest plugin: a private RabbitMQ vhost and MySQL database per test.

Tests that use ``amqp_url``/``rabbit`` are marked ``rabbitmq`` and those that
use ``mysql_url`` are marked ``mysql`` automatically. When a service is
missing they fail with the reason under CI (``CI`` set) and skip otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conveyor.testing.rabbit_cluster import RABBITMQ_SERVER, RabbitCluster, start_cluster
from conveyor.testing.services import RabbitEndpoint, ServiceMissing, find_mysql, find_rabbitmq

_RABBIT_FIXTURES = {"rabbit", "amqp_url", "vhost"}
_MYSQL_FIXTURES = {"mysql_server_url", "mysql_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _RABBIT_FIXTURES:
            item.add_marker(pytest.mark.rabbitmq)
        if names & _MYSQL_FIXTURES:
            item.add_marker(pytest.mark.mysql)


def _missing(exc: ServiceMissing) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{exc} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def _containers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for container in started:
        container.stop()


@pytest.fixture(scope="session")
def rabbit(_containers: list[Any]) -> RabbitEndpoint:
    """The broker under test, with its management API answering."""
    try:
        endpoint = find_rabbitmq(_containers)
    except ServiceMissing as exc:
        _missing(exc)
        raise
    with endpoint.admin() as admin:
        try:
            admin.get("/api/overview").raise_for_status()
        except Exception as exc:  # noqa: BLE001
            _missing(
                ServiceMissing(
                    f"RabbitMQ's management API does not answer at {endpoint.management_url} ({exc}); "
                    "run `rabbitmq-plugins enable rabbitmq_management`"
                )
            )
    return endpoint


@pytest.fixture
def vhost(rabbit: RabbitEndpoint) -> Iterator[str]:
    """A fresh vhost for this test alone, deleted afterwards with all it holds."""
    with rabbit.private_vhost() as name:
        yield name


@pytest.fixture
def amqp_url(rabbit: RabbitEndpoint, vhost: str) -> str:
    return rabbit.url_for(vhost)


@pytest.fixture(scope="session")
def mysql_server_url(_containers: list[Any]) -> str:
    try:
        return find_mysql(_containers)
    except ServiceMissing as exc:
        _missing(exc)
        raise


@pytest.fixture
async def mysql_url(mysql_server_url: str) -> AsyncIterator[str]:
    """A fresh database for this test alone (SQLAlchemy URL), dropped afterwards."""
    from sqlalchemy import text  # noqa: PLC0415 - only tests with a database need SQLAlchemy
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415

    name = f"test_{uuid.uuid4().hex[:12]}"
    server = create_async_engine(mysql_server_url)
    try:
        async with server.begin() as connection:
            await connection.execute(text(f"CREATE DATABASE `{name}`"))
        yield mysql_server_url.rstrip("/") + "/" + name
        async with server.begin() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    finally:
        await server.dispose()


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Three fresh RabbitMQ nodes on this machine in one cluster, for the whole session.

    See :mod:`conveyor.testing.rabbit_cluster`; the nodes' logs stay in the session's temporary directory.
    """
    if not RABBITMQ_SERVER.is_file():
        _missing(
            ServiceMissing(
                f"{RABBITMQ_SERVER} is missing: the cluster tests start their own RabbitMQ nodes "
                "(apt-get install rabbitmq-server)"
            )
        )
    with start_cluster(tmp_path_factory.mktemp("rabbit-cluster")) as cluster:
        yield cluster
