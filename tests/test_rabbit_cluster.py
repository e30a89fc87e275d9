"""A real three-node RabbitMQ cluster, started by the tests. First the fixture itself (nodes, ports, the
CLI's cookie, a quorum queue across the nodes, a node stopped and started); then the qa desired state
applied and checked through the management API, security (no guest, least-privilege service users),
the deployer's watch when a node stops and comes back, a rolling restart over SSH with messages
flowing, and a password rotation under a connected consumer. The tests share the cluster and run in
order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import aio_pika
import httpx
import pytest
import yaml
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import AMQPConnectionError, ChannelAccessRefused
from pydantic import SecretStr

from conveyor.contracts import RabbitCheck, RabbitmqAlarm, RabbitmqRecovered
from conveyor.testing.rabbit_cluster import RabbitCluster, RabbitClusterError
from conveyor.testing.sshd import SshNode, client_key
from conveyor_deployer.app import create_app
from conveyor_deployer.config import Role, Settings, User
from conveyor_deployer.rabbit.cluster import cluster_status, rolling_restart, rotate_user
from conveyor_deployer.rabbit.desired import ClusterNode, DesiredState, load_desired
from conveyor_deployer.rabbit.export import export
from conveyor_deployer.rabbit.monitor import RabbitWatch
from conveyor_deployer.rabbit.plan import Management, Refused, apply, make_plan
from conveyor_deployer.ssh import KnownHosts, SshPool, SshTarget

# -- the fixture itself --------------------------------------------------------------------------------


def nodes_running(cluster: RabbitCluster, *, via: int = 0) -> dict[str, bool]:
    """Each node's ``running`` flag in the management API of the ``via``-th node."""
    with cluster.admin(via) as admin:
        response = admin.get("/api/nodes")
        response.raise_for_status()
        return {node["name"]: node["running"] for node in response.json()}


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait until ``check()`` holds (what the cluster reports can lag its events by a moment)."""
    try:
        async with asyncio.timeout(timeout):
            while not check():  # noqa: ASYNC110 - the state is polled over HTTP: there is no event to await
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"{what} still not true after {timeout:g}s")


@pytest.fixture
def queue(rabbit_cluster: RabbitCluster) -> Iterator[str]:
    """A fresh queue name, the queue deleted afterwards (the cluster outlives this file's tests)."""
    name = f"smoke-{uuid.uuid4().hex[:12]}"
    yield name
    with rabbit_cluster.admin() as admin:
        response = admin.delete(f"/api/queues/%2F/{name}")
        assert response.status_code in {204, 404}


async def declare_quorum_queue(url: str, name: str) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})


async def publish(url: str, queue: str, body: bytes) -> None:
    """Publish to ``queue`` through the default exchange, returning once the broker confirmed it."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)


async def receive(url: str, queue: str, timeout: float = 30.0) -> bytes:
    """The next message on ``queue``, consumed (and acknowledged) through ``url``."""
    async with asyncio.timeout(timeout), await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        declared = await channel.get_queue(queue)
        async with declared.iterator() as messages:
            async for message in messages:
                async with message.process():
                    return message.body
    raise AssertionError(f"the consumer of {queue} stopped without a message")


def queue_members(cluster: RabbitCluster, queue: str) -> list[str]:
    with cluster.admin() as admin:
        response = admin.get(f"/api/queues/%2F/{queue}")
        response.raise_for_status()
        return list(response.json()["members"])


def test_three_nodes_run_in_one_cluster(rabbit_cluster: RabbitCluster) -> None:
    names = [node.name for node in rabbit_cluster.nodes]
    assert len(set(names)) == 3
    for via in range(3):
        assert nodes_running(rabbit_cluster, via=via) == dict.fromkeys(names, True)
    assert sorted(rabbit_cluster.running_nodes()) == sorted(names)


def test_each_node_serves_management_and_prometheus_on_its_own_ports(rabbit_cluster: RabbitCluster) -> None:
    ports = [
        port
        for node in rabbit_cluster.nodes
        for port in (node.amqp_port, node.dist_port, node.management_port, node.prometheus_port)
    ]
    assert len(set(ports)) == len(ports)
    for index, node in enumerate(rabbit_cluster.nodes):
        with rabbit_cluster.admin(index) as admin:
            whoami = admin.get("/api/whoami").raise_for_status().json()
            assert whoami["name"] == rabbit_cluster.admin_user
            assert "administrator" in str(whoami["tags"])
            assert admin.get("/api/overview").raise_for_status().json()["node"] == node.name
        metrics = httpx.get(f"http://127.0.0.1:{node.prometheus_port}/metrics", timeout=30.0)
        assert metrics.status_code == 200
        assert "rabbitmq_build_info" in metrics.text


def test_the_cli_reaches_every_node_with_the_clusters_cookie(rabbit_cluster: RabbitCluster) -> None:
    for node in rabbit_cluster.nodes:
        status = rabbit_cluster.ctl(node, "status", "--formatter", "json")
        assert node.name in status.stdout
    users = rabbit_cluster.ctl(rabbit_cluster.nodes[2], "list_users", "--formatter", "json").stdout
    assert rabbit_cluster.admin_user in users
    with pytest.raises(RabbitClusterError, match=r"list_users no-such-argument` failed with exit code \d+"):
        rabbit_cluster.ctl(rabbit_cluster.nodes[0], "list_users", "no-such-argument")


async def test_a_quorum_queue_spans_the_nodes_and_delivers_across_them(
    rabbit_cluster: RabbitCluster, queue: str
) -> None:
    await declare_quorum_queue(rabbit_cluster.amqp_url(node=0), queue)
    assert sorted(queue_members(rabbit_cluster, queue)) == sorted(n.name for n in rabbit_cluster.nodes)

    await publish(rabbit_cluster.amqp_url(node=0), queue, b"from node 1")
    assert await receive(rabbit_cluster.amqp_url(node=2), queue) == b"from node 1"


async def test_a_stopped_node_leaves_the_queue_working_and_comes_back(
    rabbit_cluster: RabbitCluster, queue: str
) -> None:
    await declare_quorum_queue(rabbit_cluster.amqp_url(node=0), queue)
    stopped = rabbit_cluster.nodes[1]
    rabbit_cluster.stop_node(stopped)
    try:
        assert not rabbit_cluster.is_running(stopped)
        await eventually(
            lambda: nodes_running(rabbit_cluster)[stopped.name] is False, f"{stopped.name} shown as stopped"
        )
        assert stopped.name not in rabbit_cluster.running_nodes()

        await publish(rabbit_cluster.amqp_url(node=0), queue, b"two of three")
        assert await receive(rabbit_cluster.amqp_url(node=2), queue) == b"two of three"
    finally:
        rabbit_cluster.start_node(stopped)

    names = [node.name for node in rabbit_cluster.nodes]
    assert sorted(rabbit_cluster.running_nodes()) == sorted(names)
    await eventually(
        lambda: nodes_running(rabbit_cluster) == dict.fromkeys(names, True), "all three nodes shown running"
    )
    await publish(rabbit_cluster.amqp_url(node=1), queue, b"back again")
    assert await receive(rabbit_cluster.amqp_url(node=0), queue) == b"back again"


# -- desired state, security, watch, restarts, rotation --------------------------------------------------

SERVICES = ("deployer", "version-db", "notifier", "agent")


def service_env(env: str) -> dict[str, str]:
    return {
        f"CONVEYOR_RABBIT_{env}_{s}_PASSWORD".upper().replace("-", "_"): f"pw-{s}-{env}" for s in SERVICES
    }


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rabbit-secrets")
    (directory / "worker").write_text("worker-first-password\n")
    return directory


def qa_file(
    cluster: RabbitCluster, secrets: Path, *, extra_queue_args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The qa desired state for the test cluster (its admin is the fixture's)."""
    (secrets / "admin").write_text(cluster.admin_password + "\n")
    return {
        "env": "qa",
        "profile": "qa",
        "cluster": {
            "nodes": [
                {"name": n.name, "host": f"mq-{i}", "management_url": n.management_url}
                for i, n in enumerate(cluster.nodes, 1)
            ],
            "cli_prefix": [
                "env",
                f"HOME={cluster.home}",
                "LC_ALL=C.UTF-8",
                "PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ],
            "cli_dir": "/usr/lib/rabbitmq/bin",
            "restart_command": [
                "sh",
                "-c",
                "rabbitmqctl -n NODE stop_app && rabbitmqctl -n NODE start_app",
            ],
        },
        "management": {"user": cluster.admin_user, "password_file": str(secrets / "admin")},
        "vhosts": [
            {"name": "qa", "conveyor": True, "limits": {"max-connections": 200, "max-queues": 500}},
            {"name": "/"},  # the fixture's own tests use it
        ],
        "users": [{"name": "worker", "password_file": str(secrets / "worker")}],
        "permissions": [
            {"user": cluster.admin_user, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": "worker", "vhost": "qa", "configure": "^$", "write": "^app\\.", "read": "^app\\."},
        ],
        "queues": [{"vhost": "qa", "name": "app.jobs", "arguments": extra_queue_args or {}}],
        "exchanges": [{"vhost": "qa", "name": "app.in", "type": "direct"}],
        "bindings": [{"vhost": "qa", "source": "app.in", "destination": "app.jobs", "routing_key": "job"}],
        "poll_s": 1,
    }


def load(tmp: Path, document: dict[str, Any]) -> DesiredState:
    path = tmp / "qa.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_desired(path)


@contextlib.asynccontextmanager
async def management(state: DesiredState) -> AsyncIterator[Management]:
    password = state.management.read()
    assert password is not None
    api = Management(state.management_urls(), state.management.user, password)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture(scope="module")
def applied(rabbit_cluster: RabbitCluster, secrets_dir: Path) -> Iterator[DesiredState]:
    """The qa state, applied once for the module (the first test checks how)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in service_env("qa").items():
            patch.setenv(name, value)
        yield load(secrets_dir, qa_file(rabbit_cluster, secrets_dir))


async def test_apply_makes_the_cluster_the_file_and_a_second_plan_is_empty(
    rabbit_cluster: RabbitCluster, applied: DesiredState
) -> None:
    async with management(applied) as api:
        first = await make_plan(applied, api)
        assert first.problems == []
        kinds = {(c.action, c.kind) for c in first.changes}
        assert ("create", "vhost") in kinds
        assert ("delete", "user") in kinds  # guest, which the qa profile removes
        assert not first.destructive
        await apply(first, api)
        again = await make_plan(applied, api)
        assert again.changes == [], [c.as_dict() for c in again.changes]

        users = {u["name"]: u for u in await api.get("/users")}
        assert "guest" not in users
        assert {f"conveyor-{s}" for s in SERVICES} | {"worker", rabbit_cluster.admin_user} == set(users)
        deployer = await api.get("/permissions/qa/conveyor-deployer")
        assert deployer["configure"].startswith("^(conveyor\\.events|")
        exchanges = {
            e["name"]: e["type"]
            for e in await api.get("/exchanges/qa")
            if e["name"] and "amq." not in e["name"]
        }
        assert exchanges == {
            "conveyor.events": "topic",
            "conveyor.commands": "topic",
            "conveyor.retry": "direct",
            "conveyor.dead-letter": "direct",
            "app.in": "direct",
        }
        queue = await api.get("/queues/qa/app.jobs")
        assert queue["type"] == "quorum"
        assert len(queue["members"]) == 3
        [policy] = await api.get("/policies/qa")
        assert policy["definition"]["delivery-limit"] == 20
        assert (await api.get("/vhost-limits/qa"))[0]["value"] == {"max-connections": 200, "max-queues": 500}


async def test_a_destructive_change_is_refused_without_the_flag(
    rabbit_cluster: RabbitCluster, applied: DesiredState, secrets_dir: Path, tmp_path: Path
) -> None:
    changed = load(tmp_path, qa_file(rabbit_cluster, secrets_dir, extra_queue_args={"x-max-length": 1000}))
    async with management(changed) as api:
        plan = await make_plan(changed, api)
        [change] = plan.changes
        assert (change.kind, change.key, change.destructive) == ("queue", "qa/app.jobs", True)
        with pytest.raises(
            Refused, match=r"destructive changes need --allow-destructive: update queue qa/app\.jobs"
        ):
            await apply(plan, api)
        assert (await api.get("/queues/qa/app.jobs"))["arguments"] == {"x-queue-type": "quorum"}
        await apply(plan, api, allow_destructive=True)
        assert (await api.get("/queues/qa/app.jobs"))["arguments"]["x-max-length"] == 1000
        await apply(await make_plan(applied, api), api, allow_destructive=True)  # back as it was
        assert (await make_plan(applied, api)).changes == []


async def test_an_exported_state_plans_to_nothing(applied: DesiredState, tmp_path: Path) -> None:
    async with management(applied) as api:
        document = await export(api, "qa", current=applied)
        users = {u["name"]: u["password_env"] for u in document["users"]}
        assert users["conveyor-notifier"] == "CONVEYOR_RABBIT_QA_NOTIFIER_PASSWORD"
        path = tmp_path / "exported.yaml"
        path.write_text(yaml.safe_dump(document))
        exported = load_desired(path)
        environ = dict(os.environ) | {"CONVEYOR_RABBIT_QA_WORKER_PASSWORD": "worker-first-password"}
        plan = await make_plan(exported, api, environ=environ)
        assert plan.changes == [], [c.as_dict() for c in plan.changes]


async def test_guest_is_gone_and_service_users_stay_in_their_lane(
    rabbit_cluster: RabbitCluster, applied: DesiredState
) -> None:
    with pytest.raises(AMQPConnectionError):
        await aio_pika.connect(rabbit_cluster.amqp_url("qa", user="guest", password="guest"), timeout=10)
    url = rabbit_cluster.amqp_url("qa", user="conveyor-agent", password="pw-agent-qa")
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        await channel.declare_queue(
            "listener.qa-web-9.commands", durable=True, arguments={"x-queue-type": "quorum"}
        )
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_exchange("rogue", aio_pika.ExchangeType.TOPIC, durable=True)
        channel = await connection.channel()
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_queue("deployer.events.sneaky", durable=True)
        channel = await connection.channel()
        await channel.queue_delete("listener.qa-web-9.commands")
    finally:
        await connection.close()


async def put(url: str, count: int, *, queue: str = "app.jobs") -> None:
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for i in range(count):
            await channel.default_exchange.publish(
                aio_pika.Message(str(i).encode(), delivery_mode=2), routing_key=queue
            )
    finally:
        await connection.close()


async def drain(url: str, queue: str = "app.jobs") -> int:
    """Take every message of the queue; how many there were."""
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        source = await channel.get_queue(queue)
        count = 0
        while (message := await source.get(fail=False, timeout=10)) is not None:
            await message.ack()
            count += 1
        return count
    finally:
        await connection.close()


async def test_a_stopped_node_raises_an_alarm_and_its_return_a_recovery(
    rabbit_cluster: RabbitCluster, applied: DesiredState
) -> None:
    announced: list[tuple[str, Any]] = []
    async with management(applied) as api:
        watch = RabbitWatch(applied, api, lambda env, payload: announced.append((env, payload)))
        await watch.poll()
        assert announced == []
        await put(rabbit_cluster.amqp_url("qa"), 5)
        stopped = rabbit_cluster.nodes[1]
        rabbit_cluster.stop_node(stopped)
        try:
            await watch.poll()
            [(env, alarm)] = announced
            assert env == "qa"
            assert isinstance(alarm, RabbitmqAlarm)
            assert (alarm.check, alarm.node) == (RabbitCheck.NODE_DOWN, stopped.name)
            await put(rabbit_cluster.amqp_url("qa", node=0), 5)  # two of three: the quorum queue takes more
            assert await drain(rabbit_cluster.amqp_url("qa", node=2)) == 10  # and kept what it had
        finally:
            rabbit_cluster.start_node(stopped)
        await watch.poll()
        recovered = announced[-1][1]
        assert isinstance(recovered, RabbitmqRecovered)
        assert (recovered.check, recovered.node) == (RabbitCheck.NODE_DOWN, stopped.name)
        status = await cluster_status(applied, api)
        assert all(n["running"] for n in status["nodes"])


async def test_a_conveyor_queue_nobody_consumes_for_a_minute_is_an_alarm(
    rabbit_cluster: RabbitCluster, applied: DesiredState
) -> None:
    now = [0.0]
    announced: list[Any] = []
    connection = await aio_pika.connect(rabbit_cluster.amqp_url("qa"), timeout=10)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            "notifier.events", durable=True, arguments={"x-queue-type": "quorum"}
        )
        async with management(applied) as api:
            watch = RabbitWatch(applied, api, lambda _, p: announced.append(p), clock=lambda: now[0])
            await watch.poll()
            now[0] = 30.0
            await watch.poll()
            assert announced == []  # a service starting late is not an alarm
            now[0] = 61.0
            [alarm] = await watch.poll()
            assert isinstance(alarm, RabbitmqAlarm)
            assert (alarm.check, alarm.subject) == (RabbitCheck.NO_CONSUMERS, "qa/notifier.events")

            async def ack(message: AbstractIncomingMessage) -> None:
                await message.ack()

            tag = await queue.consume(ack)
            for _ in range(50):  # the management API's figures lag a little
                now[0] += 1
                if await watch.poll():
                    break
                await asyncio.sleep(0.2)
            recovered = announced[-1]
            assert isinstance(recovered, RabbitmqRecovered)
            assert recovered.subject == "qa/notifier.events"
            await queue.cancel(tag)
            await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def broker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshNode, Path]]:
    """The brokers' host as the deployer reaches it: an sshd on loopback, root's shell (the cluster's
    processes belong to root)."""
    directory = tmp_path_factory.mktemp("broker-host")
    key, public = client_key(directory)
    node = SshNode(directory / "host", "mq-host")
    node.authorize(public)
    node.start()
    try:
        yield node, key
    finally:
        node.stop()


@contextlib.asynccontextmanager
async def ssh_runner(host: SshNode, key: Path, tmp: Path) -> AsyncIterator[Any]:
    known = KnownHosts(tmp / "known_hosts")
    known.trust(host.address, host.port, host.host_key_line)
    pool = SshPool(known, key, command_timeout_s=600)
    target = SshTarget(host.name, host.address, host.port, host.user)

    async def run(node: ClusterNode, command: list[str]) -> str:
        del node  # every broker of the test cluster is on this one host
        return (await pool.run(target, command, timeout=600)).stdout

    try:
        yield run
    finally:
        await pool.close()


async def test_a_rolling_restart_over_ssh_loses_no_message(
    rabbit_cluster: RabbitCluster, applied: DesiredState, broker_host: tuple[SshNode, Path], tmp_path: Path
) -> None:
    urls = [rabbit_cluster.amqp_url("qa", node=i) for i in range(len(rabbit_cluster.nodes))]
    confirmed: set[str] = set()
    consumed: set[str] = set()
    done = asyncio.Event()

    async def publisher() -> None:
        turn = 0
        while not done.is_set():
            try:
                connection = await aio_pika.connect(urls[turn % len(urls)], timeout=5)
            except Exception:  # noqa: BLE001 - whatever the restart does to it: reconnect elsewhere
                turn += 1
                await asyncio.sleep(0.2)
                continue
            try:
                channel = await connection.channel(publisher_confirms=True)
                while not done.is_set():
                    body = uuid4().hex
                    await channel.default_exchange.publish(
                        aio_pika.Message(body.encode(), delivery_mode=2), routing_key="app.jobs", timeout=10
                    )
                    confirmed.add(body)
                    await asyncio.sleep(0.01)
            except Exception:  # noqa: BLE001 - whatever the restart does to it: reconnect elsewhere
                turn += 1
            finally:
                with contextlib.suppress(Exception):
                    await connection.close()

    async def consumer(stop: asyncio.Event) -> None:
        turn = 2
        while not stop.is_set():
            try:
                connection = await aio_pika.connect(urls[turn % len(urls)], timeout=5)
            except Exception:  # noqa: BLE001 - whatever the restart does to it: reconnect elsewhere
                turn += 1
                await asyncio.sleep(0.2)
                continue
            try:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=50)
                queue = await channel.get_queue("app.jobs")
                lost = asyncio.Event()
                connection.close_callbacks.add(lambda *_, lost=lost: lost.set())

                async def take(message: AbstractIncomingMessage) -> None:
                    consumed.add(message.body.decode())
                    await message.ack()

                await queue.consume(take)
                waiter = asyncio.ensure_future(stop.wait())
                await asyncio.wait(
                    [waiter, asyncio.ensure_future(lost.wait())], return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
            except Exception:  # noqa: BLE001 - whatever the restart does to it: reconnect elsewhere
                pass
            finally:
                turn += 1
                with contextlib.suppress(Exception):
                    await connection.close()

    host, key = broker_host
    stop_consuming = asyncio.Event()
    tasks = [asyncio.create_task(publisher()), asyncio.create_task(consumer(stop_consuming))]
    try:
        async with management(applied) as api, ssh_runner(host, key, tmp_path) as run:
            steps: list[str] = []
            restarted = await rolling_restart(applied, api, run, progress=steps.append, settle_timeout_s=120)
            assert [r["node"] for r in restarted] == [n.name for n in rabbit_cluster.nodes]
            assert any(s.endswith(": drain") for s in steps)
            assert steps[-1] == "rebalancing quorum queue leaders"
            done.set()
            await asyncio.wait_for(tasks[0], 30)
            for _ in range(600):  # until every confirmed message is consumed
                if confirmed <= consumed:
                    break
                await asyncio.sleep(0.1)
    finally:
        done.set()
        stop_consuming.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(confirmed) > 100
    assert confirmed - consumed == set()


async def test_a_rotated_password_leaves_the_connected_consumer_working(
    rabbit_cluster: RabbitCluster, applied: DesiredState, secrets_dir: Path
) -> None:
    old = "worker-first-password"
    connection = await aio_pika.connect(
        rabbit_cluster.amqp_url("qa", user="worker", password=old), timeout=10
    )
    received: list[str] = []
    try:
        channel = await connection.channel()
        queue = await channel.get_queue("app.jobs")

        async def take(message: AbstractIncomingMessage) -> None:
            received.append(message.body.decode())
            await message.ack()

        await queue.consume(take)
        async with management(applied) as api:
            answer = await rotate_user(applied, api, "worker")
        new = (secrets_dir / "worker").read_text().strip()
        assert answer["rotated"]
        assert new != old
        assert oct((secrets_dir / "worker").stat().st_mode & 0o777) == "0o600"
        await put(rabbit_cluster.amqp_url("qa"), 3)
        for _ in range(100):
            if len(received) >= 3:
                break
            await asyncio.sleep(0.1)
        assert len(received) == 3
        with pytest.raises(AMQPConnectionError):
            await aio_pika.connect(rabbit_cluster.amqp_url("qa", user="worker", password=old), timeout=10)
        fresh = await aio_pika.connect(rabbit_cluster.amqp_url("qa", user="worker", password=new), timeout=10)
        await fresh.close()
        async with management(applied) as api:
            assert (await make_plan(applied, api)).changes == []  # the file holds the new password
        with pytest.raises(Refused, match="CONVEYOR_RABBIT_QA_NOTIFIER_PASSWORD"):
            async with management(applied) as api:
                await rotate_user(applied, api, "conveyor-notifier")
    finally:
        await connection.close()


async def test_the_deployer_api_plans_for_readers_and_applies_for_admins(
    rabbit_cluster: RabbitCluster, applied: DesiredState, secrets_dir: Path, tmp_path: Path
) -> None:
    """The routes `conveyor rabbit` calls, on the deployer's app (without its broker connections)."""
    rabbit_dir = tmp_path / "rabbitmq"
    rabbit_dir.mkdir()
    (rabbit_dir / "qa.yaml").write_text(yaml.safe_dump(qa_file(rabbit_cluster, secrets_dir)))
    settings = Settings(
        rabbit_dir=rabbit_dir,
        rabbit_watch=False,
        state_dir=tmp_path / "state",
        inventory_file=tmp_path / "no-inventory.yaml",
        users={
            "rita": User(token=SecretStr("t-rita"), role=Role.READER),
            "ada": User(token=SecretStr("t-ada"), role=Role.ADMIN),
        },
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://deployer") as client:
        reader, admin = {"Authorization": "Bearer t-rita"}, {"Authorization": "Bearer t-ada"}
        assert (await client.get("/rabbit/envs", headers=reader)).json() == ["qa"]
        plan = (await client.get("/rabbit/qa/plan", headers=reader)).json()
        assert plan == {"env": "qa", "changes": [], "problems": [], "destructive": 0}
        refused = await client.post("/rabbit/qa/apply", headers=reader, json={})
        assert refused.status_code == 403
        assert (await client.post("/rabbit/qa/apply", headers=admin, json={})).json()["applied"] == 0
        status = (await client.get("/rabbit/qa/status", headers=reader)).json()
        assert [n["running"] for n in status["nodes"]] == [True, True, True]
        assert status["quorum_queues_below_quorum"] == []
        conf = (await client.get("/rabbit/qa/config", headers=reader)).text
        assert "cluster_partition_handling = pause_minority" in conf
        missing = await client.get("/rabbit/prod/plan", headers=reader)
        assert missing.status_code == 404
        assert "no desired state for prod" in missing.json()["detail"]
