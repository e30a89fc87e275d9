"""A real RabbitMQ cluster for tests: fresh nodes on this machine, started and torn down by the test.

Clustering, quorum queues, failover and rolling restarts can be tested against real brokers without
containers::

    with start_cluster(tmp_path / "cluster") as cluster:  # three nodes
        url = cluster.amqp_url("/", node=0)  # as the admin user, on the first node
        cluster.stop_node(cluster.nodes[1])  # that node's Erlang VM is gone
        cluster.start_node(cluster.nodes[1])  # back, with its data, and in the cluster again

Each node is ``/usr/lib/rabbitmq/bin/rabbitmq-server`` in the foreground, a child of the test in its own
process group, named ``conveyor-c<i>-<token>@localhost`` (the token keeps concurrent sessions apart), with
its own ports on 127.0.0.1 (AMQP, distribution, management, Prometheus) and everything it writes under
``<base_dir>/<short name>/``: ``rabbitmq.conf``, ``enabled_plugins`` (management and Prometheus),
``data/`` (the mnesia base: mnesia, quorum and feature flag files), ``log/`` and ``stdout.log`` (what the
server printed before its log opened). ``<base_dir>/home`` holds the shared Erlang cookie; servers and CLI
tools run with it as ``HOME`` and with ``<base_dir>/rabbitmq-env.conf`` in place of
``/etc/rabbitmq/rabbitmq-env.conf``, so the system broker's name, cookie, settings and files are neither
read nor touched. The nodes register with the system's epmd; where none runs, the first node starts one
and :meth:`RabbitCluster.close` stops it again once no node uses it.

The nodes boot in parallel; then every node but the first joins it (``stop_app``, ``join_cluster``,
``start_app``) while the first gets the ``cluster-admin`` user (tag ``administrator``, every permission
on ``/``, a random password). ``guest`` keeps its loopback-only default. The scripts in
:data:`RABBITMQ_BIN` run as root without switching users, and RabbitMQ accepts that. On two cores a
three-node cluster is up in about 15 s (25 s while other tests load the machine) and gone in about 2 s;
:meth:`RabbitCluster.start_node` takes about 9 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import quote

import httpx

from conveyor.testing.services import free_port

__all__ = [
    "ADMIN_USER",
    "PLUGINS",
    "RABBITMQ_BIN",
    "RABBITMQ_SERVER",
    "ClusterNode",
    "RabbitCluster",
    "RabbitClusterError",
    "start_cluster",
]

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
"""Debian's RabbitMQ scripts, which run as the calling user (``/usr/sbin``'s wrappers switch to rabbitmq)."""
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
ADMIN_USER = "cluster-admin"
PLUGINS = ("rabbitmq_management", "rabbitmq_prometheus")

_HOST = "localhost"
_ADDRESS = "127.0.0.1"
_EPMD_PORT = 4369
_BOOT_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 60.0
_POLL_S = 0.1
_LOG_TAIL_LINES = 30
_START_ATTEMPTS = 3

_T = TypeVar("_T")


class RabbitClusterError(RuntimeError):
    """A node did not start, join, stop or answer, or a CLI command failed; the message says which."""


@dataclass
class ClusterNode:
    """One node: its Erlang name, its ports on 127.0.0.1 and its directories."""

    name: str
    amqp_port: int
    dist_port: int
    management_port: int
    prometheus_port: int
    data_dir: Path
    log_dir: Path

    @property
    def management_url(self) -> str:
        return f"http://{_ADDRESS}:{self.management_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{_ADDRESS}:{self.prometheus_port}"

    @property
    def directory(self) -> Path:
        """The node's own directory: configuration, pid file, ``data/``, ``log/``."""
        return self.data_dir.parent

    @property
    def log_file(self) -> Path:
        """The node's main log (the server's output before logging starts is in :attr:`stdout_file`)."""
        return self.log_dir / f"{self.name}.log"

    @property
    def stdout_file(self) -> Path:
        return self.directory / "stdout.log"

    @property
    def config_file(self) -> Path:
        return self.directory / "rabbitmq.conf"

    @property
    def enabled_plugins_file(self) -> Path:
        return self.directory / "enabled_plugins"

    @property
    def pid_file(self) -> Path:
        return self.directory / "rabbitmq.pid"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server's output and of its log, for error messages."""
        parts = []
        for path in (self.stdout_file, self.log_file):
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                continue
            parts.append(f"--- last lines of {path} ---\n" + "\n".join(tail))
        return "\n".join(parts) or f"(no output in {self.directory})"


class RabbitCluster:
    """The running nodes of a cluster made by :func:`start_cluster`, with ways to reach and control them."""

    def __init__(self, base_dir: Path, nodes: list[ClusterNode], *, admin_password: str) -> None:
        self.base_dir = base_dir
        self.nodes = nodes
        self.home = base_dir / "home"
        self.admin_user = ADMIN_USER
        self.admin_password = admin_password
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._epmd_was_running = _epmd_answers()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # -- reaching the nodes ------------------------------------------------------------------------------

    def node(self, node: ClusterNode | str) -> ClusterNode:
        """The node itself, given it or its full or short name (``conveyor-c2-…@localhost``)."""
        if isinstance(node, ClusterNode):
            return node
        for candidate in self.nodes:
            if node in {candidate.name, candidate.name.split("@")[0]}:
                return candidate
        raise ValueError(f"no node {node!r} in this cluster (nodes: {[n.name for n in self.nodes]})")

    def cli_env(self) -> dict[str, str]:
        """The environment under which ``rabbitmqctl -n NODE …`` (and the other CLI tools) reach the nodes.

        ``HOME`` holds the cluster's cookie; ``rabbitmq-env.conf`` is the cluster's (empty) one, so the
        system broker's settings in ``/etc/rabbitmq`` do not apply; without ``-n`` the tools address the
        first node.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            PATH=os.pathsep.join([str(RABBITMQ_BIN), env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")]),
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
            RABBITMQ_CONF_ENV_FILE=str(self.base_dir / "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=self.nodes[0].name,
            ERL_EPMD_ADDRESS=_ADDRESS,
        )
        return env

    def ctl(
        self, node: ClusterNode | str, *args: str, tool: str = "rabbitmqctl", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<tool> -n NODE args`` from :data:`RABBITMQ_BIN`; :class:`RabbitClusterError` if it fails."""
        command = [str(RABBITMQ_BIN / tool), "-n", self.node(node).name, *args]
        try:
            done = subprocess.run(  # noqa: S603 - our own tools and arguments
                command,
                env=self.cli_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise RabbitClusterError(
                self._redacted(f"`{' '.join(command)}` did not finish within {timeout:g}s")
            ) from None
        if done.returncode != 0:
            raise RabbitClusterError(
                self._redacted(
                    f"`{' '.join(command)}` failed with exit code {done.returncode}:\n"
                    f"{done.stdout.strip()}\n{done.stderr.strip()}".rstrip()
                )
            )
        return done

    def amqp_url(
        self, vhost: str = "/", *, node: int = 0, user: str | None = None, password: str | None = None
    ) -> str:
        """``amqp://`` URL of ``vhost`` on the ``node``-th node, as the admin unless ``user`` is given."""
        user = self.admin_user if user is None else user
        password = self.admin_password if password is None else password
        return (
            f"amqp://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{_ADDRESS}:{self.nodes[node].amqp_port}/{quote(vhost, safe='')}"
        )

    def admin(self, node: int = 0) -> httpx.Client:
        """A management API client for the ``node``-th node, authenticated as the admin."""
        return httpx.Client(
            base_url=self.nodes[node].management_url,
            auth=(self.admin_user, self.admin_password),
            timeout=30.0,
        )

    def is_running(self, node: ClusterNode | str) -> bool:
        """Whether the node's server process (not necessarily the RabbitMQ application) is alive."""
        process = self._processes.get(self.node(node).name)
        return process is not None and process.poll() is None

    def running_nodes(self) -> list[str]:
        """The running nodes as the cluster sees them, asked of the first node that answers."""
        failures = []
        for node in self.nodes:
            if not self.is_running(node):
                continue
            try:
                status = self.ctl(node, "cluster_status", "--formatter", "json", timeout=30)
            except RabbitClusterError as exc:
                failures.append(str(exc))
                continue
            return list(json.loads(status.stdout)["running_nodes"])
        raise RabbitClusterError("no node of the cluster answers:\n" + "\n".join(failures))

    # -- stopping and starting ---------------------------------------------------------------------------

    def stop_node(self, node: ClusterNode | str) -> None:
        """Stop the node's Erlang VM (gracefully, as SIGTERM does) and return once its processes are gone."""
        node = self.node(node)
        process = self._processes.get(node.name)
        if process is None:
            return
        if process.poll() is None:
            self._drop_stats_handler(node)
            process.terminate()  # rabbitmq-server's trap stops the node as `rabbitmqctl stop` does
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait()
            raise RabbitClusterError(
                f"{node.name} did not stop within {_STOP_TIMEOUT_S:g}s of SIGTERM and was killed\n"
                + node.log_tail()
            ) from None
        finally:
            _kill_group(process)

    def start_node(self, node: ClusterNode | str, timeout: float = 90) -> None:
        """Start a stopped node again with its data; return once it runs and the other nodes see it.

        With every node down, start the last one stopped first: the others wait for it (RabbitMQ's rule).
        """
        node = self.node(node)
        if not self.is_running(node):
            self._spawn(node)
        deadline = time.monotonic() + timeout
        self._await_boot(node, deadline)
        others = [other for other in self.nodes if other is not node and self.is_running(other)]
        if others:
            _until(
                lambda: node.name in self._running_nodes_of(others[0]),
                deadline,
                f"{node.name} runs but {others[0].name} does not list it among the running nodes",
            )

    def close(self) -> None:
        """Stop every node (in parallel, killing any that hangs) and leave no process behind.

        :attr:`base_dir` stays, with the nodes' logs.
        """
        _parallel(self._drop_stats_handler, [node for node in self.nodes if self.is_running(node)])
        processes = list(self._processes.values())
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(process)
                process.wait()
            _kill_group(process)
        self._processes.clear()
        if not self._epmd_was_running:
            _stop_idle_epmd(self.cli_env())

    # -- inside ------------------------------------------------------------------------------------------

    def _write_files(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)
        (self.base_dir / "rabbitmq-env.conf").write_text(
            "# Stands in for /etc/rabbitmq/rabbitmq-env.conf, which belongs to the system broker.\n"
        )
        for node in self.nodes:
            for directory in (node.data_dir, node.log_dir):
                directory.mkdir(parents=True, exist_ok=True)
            node.config_file.write_text(_config(node))
        self._enable_plugins(self.nodes[0])
        for node in self.nodes[1:]:
            node.enabled_plugins_file.write_text("[].\n")  # until it joins: see _join_others

    def _enable_plugins(self, node: ClusterNode) -> None:
        node.enabled_plugins_file.write_text(f"[{','.join(PLUGINS)}].\n")

    def _server_env(self, node: ClusterNode) -> dict[str, str]:
        env = self.cli_env()
        env.update(
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_MNESIA_BASE=str(node.data_dir),
            RABBITMQ_LOG_BASE=str(node.log_dir),
            RABBITMQ_CONFIG_FILE=str(node.config_file),
            # Neither exists: they replace the defaults in /etc/rabbitmq.
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.directory / "advanced.config"),
            RABBITMQ_CONFIG_FILES=str(node.directory / "conf.d"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(node.enabled_plugins_file),
            RABBITMQ_PID_FILE=str(node.pid_file),
            # Several VMs share the cores: schedulers bound to cores would contend.
            RABBITMQ_SCHEDULER_BIND_TYPE="u",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_CRASH_DUMP=str(node.log_dir / "erl_crash.dump"),
        )
        return env

    def _spawn(self, node: ClusterNode) -> None:
        node.pid_file.unlink(missing_ok=True)  # `rabbitmqctl wait` must see the new one
        with node.stdout_file.open("ab") as output:
            self._processes[node.name] = subprocess.Popen(  # noqa: S603 - our own server and arguments
                [str(RABBITMQ_SERVER)],
                env=self._server_env(node),
                cwd=node.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _await_boot(self, node: ClusterNode, deadline: float) -> None:
        """Wait until RabbitMQ and its plugins run on ``node``, failing early if its server exits."""
        process = self._processes[node.name]
        remaining = max(1, int(deadline - time.monotonic()))
        waiter = subprocess.Popen(  # noqa: S603 - our own tool and arguments
            [
                str(RABBITMQ_BIN / "rabbitmqctl"),
                "-n",
                node.name,
                "wait",
                str(node.pid_file),
                "--timeout",
                str(remaining),
            ],
            env=self.cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = ""
        try:
            while True:
                try:
                    output, _ = waiter.communicate(timeout=_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if process.poll() is not None:
                    raise RabbitClusterError(
                        f"{node.name} exited with code {process.returncode} while starting\n"
                        + node.log_tail()
                    )
                if time.monotonic() > deadline + 5:
                    raise RabbitClusterError(
                        f"{node.name} did not start within {remaining}s (a slow or overloaded machine?)\n"
                        + node.log_tail()
                    )
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.communicate()
        if waiter.returncode != 0:
            raise RabbitClusterError(
                f"{node.name} did not start (`rabbitmqctl wait` exited with {waiter.returncode}):\n"
                f"{output.strip()}\n{node.log_tail()}"
            )

    def _form(self, deadline: float) -> None:
        """Boot every node in parallel, then join the others to the first while it gets the admin user."""
        for node in self.nodes:
            self._spawn(node)
        _parallel(lambda node: self._await_boot(node, deadline), self.nodes)
        steps: list[Callable[[], None]] = [self._add_admin, lambda: self._join_others(deadline)]
        _parallel(lambda step: step(), steps)

    def _join_others(self, deadline: float) -> None:
        """Join every node to the first (``stop_app``, ``join_cluster``, ``start_app``).

        The joining nodes boot without plugins and get them when their application starts again in the
        cluster (``start_app`` reads the plugins file): with the management agent running, ``stop_app``
        would take 5 s more (its event handler waits that long for a refresh that never comes).
        """
        seed, *joining = self.nodes
        _parallel(lambda node: self.ctl(node, "stop_app"), joining)
        for node in joining:
            self.ctl(node, "join_cluster", seed.name)
            self._enable_plugins(node)
        _parallel(lambda node: self.ctl(node, "start_app", timeout=_BOOT_TIMEOUT_S), joining)
        names = {node.name for node in self.nodes}
        _until(
            lambda: set(self._running_nodes_of(seed)) == names,
            deadline,
            f"the nodes did not form one cluster of {sorted(names)}",
        )

    def _add_admin(self) -> None:
        seed = self.nodes[0]
        self.ctl(seed, "add_user", self.admin_user, self.admin_password)
        _parallel(
            lambda args: self.ctl(seed, *args),
            [
                ("set_user_tags", self.admin_user, "administrator"),
                ("set_permissions", "-p", "/", self.admin_user, ".*", ".*", ".*"),
            ],
        )

    def _drop_stats_handler(self, node: ClusterNode) -> None:
        """Remove the management agent's event handler from a node about to stop, so it stops at once.

        Removed while RabbitMQ stops, the handler (``rabbit_mgmt_db_handler``, 3.10) asks for an event
        refresh nobody answers any more and waits 5 s for it; removed while the node runs, it is done at
        once. Best effort: where this fails the node only stops more slowly.
        """
        with contextlib.suppress(RabbitClusterError):
            self.ctl(
                node,
                "eval",
                "gen_event:delete_handler(rabbit_event, rabbit_mgmt_db_handler, []).",
                timeout=15,
            )

    def _running_nodes_of(self, node: ClusterNode) -> list[str]:
        status = self.ctl(node, "cluster_status", "--formatter", "json", timeout=30)
        return list(json.loads(status.stdout)["running_nodes"])

    def _redacted(self, text: str) -> str:
        return text.replace(self.admin_password, "***")


def start_cluster(base_dir: Path, size: int = 3) -> RabbitCluster:
    """Start ``size`` fresh nodes under ``base_dir``, cluster them and create the admin user.

    :class:`RabbitClusterError` (with the failing node's log) when RabbitMQ is missing or a node does not
    start or join; whatever was started is stopped again. A port taken by another process between its
    choice and its use costs one more attempt, with other ports and node names.
    """
    if not RABBITMQ_SERVER.is_file():
        raise RabbitClusterError(
            f"{RABBITMQ_SERVER} is missing: the cluster tests need Debian's RabbitMQ server "
            "(apt-get install rabbitmq-server)"
        )
    if size < 1:
        raise ValueError(f"a cluster needs at least one node, not {size}")
    base_dir = Path(base_dir).absolute()
    for attempt in range(1, _START_ATTEMPTS + 1):
        # Hex, never token_urlsafe: rabbitmqctl would take a password starting with "-" for an option.
        cluster = RabbitCluster(base_dir, _plan(base_dir, size), admin_password=secrets.token_hex(16))
        try:
            cluster._write_files()
            cluster._form(time.monotonic() + _BOOT_TIMEOUT_S)
        except RabbitClusterError:
            cluster.close()
            if attempt == _START_ATTEMPTS or not any(_port_was_taken(node) for node in cluster.nodes):
                raise
        except BaseException:
            cluster.close()
            raise
        else:
            return cluster
    raise AssertionError("unreachable")


def _plan(base_dir: Path, size: int) -> list[ClusterNode]:
    token = secrets.token_hex(3)
    ports = iter(_free_ports(4 * size))
    nodes = []
    for index in range(1, size + 1):
        short = f"conveyor-c{index}-{token}"
        nodes.append(
            ClusterNode(
                name=f"{short}@{_HOST}",
                amqp_port=next(ports),
                dist_port=next(ports),
                management_port=next(ports),
                prometheus_port=next(ports),
                data_dir=base_dir / short / "data",
                log_dir=base_dir / short / "log",
            )
        )
    return nodes


def _port_was_taken(node: ClusterNode) -> bool:
    for path in (node.stdout_file, node.log_file):
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text(errors="replace")
            if "eaddrinuse" in text or "dist_port_already_used" in text:
                return True
    return False


def _config(node: ClusterNode) -> str:
    return (
        f"listeners.tcp.default = {_ADDRESS}:{node.amqp_port}\n"
        f"management.tcp.ip = {_ADDRESS}\n"
        f"management.tcp.port = {node.management_port}\n"
        f"prometheus.tcp.ip = {_ADDRESS}\n"
        f"prometheus.tcp.port = {node.prometheus_port}\n"
        "# A nearly full test disk must not raise the free-disk alarm, which blocks every publisher.\n"
        "disk_free_limit.absolute = 50MB\n"
        "log.console = false\n"
        "log.file.level = info\n"
    )


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _parallel(action: Callable[[_T], object], items: Iterable[_T]) -> None:
    """Run ``action`` on every item at once; the first failure is raised once all have finished."""
    with ThreadPoolExecutor() as pool:
        futures = [pool.submit(action, item) for item in items]
    for future in futures:
        future.result()


def _until(check: Callable[[], bool], deadline: float, failure: str) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise RabbitClusterError(failure)
        time.sleep(_POLL_S)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the process group the node's server leads (erl_child_setup…)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _epmd_answers() -> bool:
    try:
        with socket.create_connection((_ADDRESS, _EPMD_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def _stop_idle_epmd(env: dict[str, str]) -> None:
    """Stop the epmd our nodes started, unless other nodes use it (``epmd -kill`` refuses then)."""
    epmd = shutil.which("epmd", path=env["PATH"])
    if epmd is not None:
        subprocess.run(  # noqa: S603 - a fixed command
            [epmd, "-kill"], env=env, capture_output=True, check=False, timeout=10, stdin=subprocess.DEVNULL
        )
