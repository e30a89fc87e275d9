"""The deployer's hold on every environment's RabbitMQ cluster: the desired-state files in
``RABBIT_DIR`` (``<env>.yaml``), the management API with the admin user's secret, SSH to the brokers'
hosts through the deployer's own (host keys checked), and a watch per cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import yaml

from conveyor.contracts import Payload
from conveyor.observability import get_logger
from conveyor_deployer.config import Settings
from conveyor_deployer.inventory import Inventory
from conveyor_deployer.nodes import NodeAccess
from conveyor_deployer.rabbit import cluster
from conveyor_deployer.rabbit.desired import ClusterNode, DesiredError, DesiredState, load_desired
from conveyor_deployer.rabbit.export import export
from conveyor_deployer.rabbit.monitor import RabbitWatch
from conveyor_deployer.rabbit.plan import Change, Management, Plan, apply, make_plan
from conveyor_deployer.rabbit.profiles import render_conf

__all__ = ["RabbitControl", "RabbitNotConfigured"]

log = get_logger(__name__)


class RabbitNotConfigured(LookupError):
    """No desired-state file for that environment, or its admin secret is missing."""


class RabbitControl:
    def __init__(
        self,
        settings: Settings,
        inventory: Inventory,
        nodes: NodeAccess,
        announce: Callable[[str, Payload], None],
    ) -> None:
        self.settings, self.inventory, self.nodes, self.announce = settings, inventory, nodes, announce
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def envs(self) -> list[str]:
        """The environments with a file, in promotion order (then any others)."""
        directory = self.settings.rabbit_dir
        found = {p.stem for p in directory.glob("*.yaml")} if directory.is_dir() else set()
        ordered = [env for env in self.settings.envs if env in found]
        return ordered + sorted(found - set(ordered))

    def state(self, env: str) -> DesiredState:
        """The environment's file, read now (``DesiredError`` when it is wrong)."""
        path = self.settings.rabbit_dir / f"{env}.yaml"
        if not path.is_file():
            raise RabbitNotConfigured(f"no desired state for {env}: {path} does not exist")
        state = load_desired(path)
        if state.env != env:
            raise DesiredError(f"{path}: env is {state.env!r}, the file name says {env!r}")
        return state

    @asynccontextmanager
    async def api(self, state: DesiredState) -> AsyncIterator[Management]:
        password = state.management.read()
        if password is None:
            raise RabbitNotConfigured(
                f"{state.env}: the management password ({state.management.describe()}) is not set"
            )
        api = Management(state.management_urls(), state.management.user, password)
        try:
            yield api
        finally:
            await api.close()

    async def run_on(self, node: ClusterNode, command: list[str]) -> str:
        """A command on the inventory host of a cluster node, over the deployer's SSH."""
        if node.host is None:
            raise RabbitNotConfigured(f"cluster node {node.name} names no host to reach it on")
        _, host = self.inventory.node(node.host)
        return await self.nodes.run(host, command, timeout=900)

    async def plan(self, env: str) -> Plan:
        state = self.state(env)
        async with self.api(state) as api:
            return await make_plan(state, api)

    async def apply(self, env: str, *, allow_destructive: bool) -> tuple[Plan, list[Change]]:
        state = self.state(env)
        async with self.api(state) as api:
            plan = await make_plan(state, api)
            done = await apply(plan, api, allow_destructive=allow_destructive)
        log.info("rabbit_applied", env=env, changes=len(done))
        return plan, done

    async def export(self, env: str) -> str:
        state = self.state(env)
        async with self.api(state) as api:
            document = await export(api, env, current=state)
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)

    async def status(self, env: str) -> dict[str, Any]:
        state = self.state(env)
        async with self.api(state) as api:
            return await cluster.cluster_status(state, api)

    async def restart(self, env: str) -> dict[str, Any]:
        state = self.state(env)
        steps: list[str] = []
        async with self.api(state) as api:
            nodes = await cluster.rolling_restart(state, api, self.run_on, progress=steps.append)
        return {"env": env, "nodes": nodes, "steps": steps}

    async def rotate(self, env: str, user: str) -> dict[str, Any]:
        state = self.state(env)
        async with self.api(state) as api:
            return await cluster.rotate_user(state, api, user)

    def config(self, env: str) -> str:
        return render_conf(self.state(env))

    async def start(self) -> None:
        """A watch per environment with a file (each reads its file once; a restart reads it again)."""
        if not self.settings.rabbit_watch:
            return
        for env in self.envs():
            try:
                state = self.state(env)
                password = state.management.read()
            except (DesiredError, RabbitNotConfigured) as exc:
                log.error("rabbit_watch_not_started", env=env, error=str(exc))
                continue
            if password is None:
                log.error("rabbit_watch_not_started", env=env, error="the management password is not set")
                continue
            api = Management(state.management_urls(), state.management.user, password)
            watch = RabbitWatch(state, api, self.announce)
            self._tasks.append(asyncio.create_task(self._watch(watch, api), name=f"rabbit-watch:{env}"))
            log.info("rabbit_watch_started", env=env, poll_s=state.poll_s)

    async def _watch(self, watch: RabbitWatch, api: Management) -> None:
        try:
            await watch.run(self._stop)
        finally:
            await api.close()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
