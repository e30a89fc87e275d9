"""A small Conveyor estate for end-to-end tests of the deployer: version-db, the deployer, a dev
source listener and target listeners in dev, qa and prod, each target running a dummy service
under supervisord, all on private RabbitMQ vhosts."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from conveyor.changeset import ReleaseRoot
from conveyor.pkgvcs import Package
from conveyor.signing import SigningKey
from conveyor.testing.services import RabbitEndpoint, free_port
from conveyor.testing.supervisor import DUMMY_SERVICE_SOURCE, Supervisor

from .test_services import wait_healthy

PACKAGE = "web"
SOURCE = "dev-src"
READER_TOKEN = "reader-" + secrets.token_hex(8)
STORE_TOKEN = "store-" + secrets.token_hex(8)
USERS = {name: f"{name}-{secrets.token_hex(8)}" for name in ("ada", "grace", "viewer", "admin")}
ROLES = {"ada": "deployer", "grace": "deployer", "viewer": "reader", "admin": "admin"}


@dataclass
class Node:
    name: str
    env: str
    port: int
    app_port: int
    root: Path
    state: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def unit(self) -> str:
        return f"{PACKAGE}-{self.name}"

    @property
    def fail_flag(self) -> Path:
        """While this file exists, the node's health check fails."""
        return self.state.parent / "fail-health"


@dataclass
class Estate:
    tmp: Path
    urls: dict[str, str]
    supervisor: Supervisor
    nodes: dict[str, Node] = field(default_factory=dict)
    version_db_port: int = field(default_factory=free_port)
    deployer_port: int = field(default_factory=free_port)
    version_db: subprocess.Popen[bytes] | None = None
    deployer: subprocess.Popen[bytes] | None = None
    extra_nodes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # env → inventory entries
    deployer_env: dict[str, str] = field(default_factory=dict)  # more CONVEYOR_DEPLOYER_* settings

    @property
    def store_url(self) -> str:
        return f"http://127.0.0.1:{self.version_db_port}"

    @property
    def deployer_url(self) -> str:
        return f"http://127.0.0.1:{self.deployer_port}"

    @property
    def key_path(self) -> Path:
        return self.tmp / "signing.key"

    @property
    def trusted_path(self) -> Path:
        return self.tmp / "trusted-keys"

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, script: str, env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        with (self.tmp / log).open("ab") as output:
            return subprocess.Popen(
                [str(Path(sys.executable).parent / script)],
                env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **env},
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def start_version_db(self) -> None:
        p = "CONVEYOR_VERSION_DB_"
        self.version_db = self._spawn(
            "conveyor-version-db",
            {
                f"{p}ENVS": json.dumps(self.urls),
                f"{p}HTTP_PORT": str(self.version_db_port),
                f"{p}DATABASE_URL": f"sqlite+aiosqlite:///{self.tmp / 'version-db.sqlite3'}",
                f"{p}ARTIFACTS_DIR": str(self.tmp / "artifacts"),
                f"{p}API_TOKENS": json.dumps({"deployer": [STORE_TOKEN], "reader": [READER_TOKEN]}),
                f"{p}LOG_FORMAT": "json",
            },
            "version-db.log",
        )
        wait_healthy(self.version_db_port, self.version_db, timeout=30)

    def inventory(self) -> dict[str, Any]:
        environments = []
        for env in ("dev", "qa", "prod"):
            nodes = [
                {
                    "name": n.name,
                    "address": "127.0.0.1",
                    "labels": {"role": "web"},
                    "packages": {PACKAGE: [n.unit]},
                }
                for n in self.nodes.values()
                if n.env == env and n.name != SOURCE
            ] + self.extra_nodes.get(env, [])
            environments.append(
                {
                    "name": env,
                    "soak_s": 0,
                    "approval": env == "prod",
                    "clusters": [{"name": "web", "nodes": nodes}] if nodes else [],
                }
            )
        return {"environments": environments}

    def start_deployer(self) -> None:
        (self.tmp / "inventory.yaml").write_text(yaml.safe_dump(self.inventory()))
        p = "CONVEYOR_DEPLOYER_"
        users = {name: {"token": token, "role": ROLES[name]} for name, token in USERS.items()}
        self.deployer = self._spawn(
            "conveyor-deployer",
            {
                f"{p}ENVS": json.dumps(self.urls),
                f"{p}HTTP_PORT": str(self.deployer_port),
                f"{p}LOG_FORMAT": "json",
                f"{p}INVENTORY_FILE": str(self.tmp / "inventory.yaml"),
                f"{p}STATE_DIR": str(self.tmp / "deployer"),
                f"{p}USERS": json.dumps(users),
                f"{p}SIGNING_KEY_FILE": str(self.key_path),
                f"{p}ARTIFACT_STORE_URL": self.store_url,
                f"{p}ARTIFACT_STORE_TOKEN": STORE_TOKEN,
                f"{p}NODE_TIMEOUT_S": "60",
                f"{p}HEARTBEAT_STALE_S": "3",
                f"{p}SSH_KEY_FILE": str(self.tmp / "deployer-ssh" / "id_ed25519"),
                f"{p}KNOWN_HOSTS_FILE": str(self.tmp / "deployer" / "known_hosts"),
                f"{p}REMOTE_CONVEYOR": str(Path(sys.executable).parent / "conveyor"),
                f"{p}BUS__RETRY_DELAYS_S": "[0.2, 0.5]",
                f"{p}BUS__RECONNECT_INTERVAL_S": "0.3",
                **self.deployer_env,
            },
            "deployer.log",
        )
        wait_healthy(self.deployer_port, self.deployer, timeout=30)

    def stop(self, process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def listener_env(self, node: Node) -> dict[str, str]:
        p = "CONVEYOR_CHANGELOG_LISTENER_"
        if node.name == SOURCE:
            package: dict[str, Any] = {"name": PACKAGE, "root": str(node.root), "role": "source"}
        else:
            package = {
                "name": PACKAGE,
                "root": str(node.root),
                "role": "target",
                "units": [node.unit],
                "health_check": {
                    "command": [
                        sys.executable,
                        "-c",
                        "import pathlib, sys, urllib.request\n"
                        f"if pathlib.Path({str(node.fail_flag)!r}).exists(): sys.exit('failing on purpose')\n"
                        f"urllib.request.urlopen('http://127.0.0.1:{node.app_port}/healthz', timeout=2)",
                    ],
                    "timeout_s": 8,
                    "interval_s": 0.1,
                },
            }
        return {
            f"{p}ENVS": json.dumps(self.urls),
            f"{p}ENV": node.env,
            f"{p}NODE": node.name,
            f"{p}HTTP_PORT": str(node.port),
            f"{p}LOG_FORMAT": "json",
            f"{p}PACKAGES": json.dumps([package]),
            f"{p}STATE_DIR": str(node.state),
            f"{p}ARTIFACT_STORE_URL": self.store_url,
            f"{p}ARTIFACT_STORE_TOKEN": STORE_TOKEN if node.name == SOURCE else READER_TOKEN,
            f"{p}TRUSTED_KEYS_FILE": str(self.trusted_path),
            f"{p}SERVICE_MANAGER": "supervisord",
            f"{p}SUPERVISORCTL_CONFIG": str(self.supervisor.config_path),
            f"{p}QUIET_PERIOD_S": "0.3",
            f"{p}RESCAN_INTERVAL_S": "2",
            f"{p}HEARTBEAT_INTERVAL_S": "0.5",
            f"{p}BUS__RETRY_DELAYS_S": "[0.2, 0.5]",
            f"{p}BUS__RECONNECT_INTERVAL_S": "0.3",
        }

    def start_listener(self, node: Node) -> None:
        node.process = self._spawn(
            "conveyor-changelog-listener", self.listener_env(node), f"listener-{node.name}.log"
        )
        wait_healthy(node.port, node.process, timeout=30)

    # -- the API -------------------------------------------------------------------------

    def cli(self, *args: str, user: str = "admin") -> subprocess.CompletedProcess[str]:
        """``conveyor ARGS`` against this estate's deployer, as ``user``."""
        env = {
            **os.environ,
            "CONVEYOR_DEPLOYER_URL": self.deployer_url,
            "CONVEYOR_DEPLOYER_TOKEN": USERS[user],
            "COLUMNS": "250",
        }
        return subprocess.run(
            [str(Path(sys.executable).parent / "conveyor"), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    def api(self, method: str, path: str, *, user: str = "ada", body: Any = None) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.deployer_url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {USERS[user]}"},
            timeout=30,
        )

    async def wait_final(self, promotion_id: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            promotion: dict[str, Any] = (
                await asyncio.to_thread(self.api, "GET", f"/promotions/{promotion_id}")
            ).json()
            if promotion["state"] in ("succeeded", "failed"):
                return promotion
            assert time.monotonic() < deadline, promotion
            await asyncio.sleep(0.2)

    async def wait_alive(self, names: list[str], timeout: float = 20) -> None:
        """Until the deployer has heard every node's heartbeat recently."""
        deadline = time.monotonic() + timeout
        while True:
            rows = (await asyncio.to_thread(self.api, "GET", "/nodes")).json()
            alive = {r["name"] for r in rows if r["alive"]}
            if set(names) <= alive:
                return
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.2)

    # -- the source package ----------------------------------------------------------------

    def write_source(self, files: Mapping[str, str | None]) -> None:
        root = self.nodes[SOURCE].root
        for relative, text in files.items():
            path = root / relative
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)

    async def ship(self, files: Mapping[str, str | None], timeout: float = 30) -> str:
        """Change the source; the version once the deployer's mirror has it."""
        self.write_source(files)
        deadline = time.monotonic() + timeout
        root = self.nodes[SOURCE].root
        while True:
            package = Package(root)
            head = package.head()
            mirrored = (
                head is not None
                and (
                    self.tmp
                    / "deployer"
                    / "mirror"
                    / "packages"
                    / PACKAGE
                    / "releases"
                    / head
                    / ".conveyor"
                    / "HEAD"
                ).exists()
            )
            if mirrored and not package.status():
                assert head is not None
                return head
            assert time.monotonic() < deadline, "the change never reached the deployer's mirror"
            await asyncio.sleep(0.1)

    def records(self, path: str, **params: Any) -> Any:
        response = httpx.get(
            f"{self.store_url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {READER_TOKEN}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def serving(self, node: Node) -> str:
        return httpx.get(f"http://127.0.0.1:{node.app_port}/version", timeout=5).text

    def running(self, node: Node) -> str | None:
        return ReleaseRoot(node.root).current()


def build_estate(rabbit: RabbitEndpoint, tmp: Path, layout: dict[str, list[str]]) -> tuple[Estate, list[str]]:
    suffix = secrets.token_hex(4)
    vhosts = [f"deploy-{env}-{suffix}" for env in ("dev", "qa", "prod")]
    for vhost in vhosts:
        rabbit.create_vhost(vhost)
    estate = Estate(
        tmp=tmp,
        urls={env: rabbit.url_for(v) for env, v in zip(("dev", "qa", "prod"), vhosts, strict=True)},
        supervisor=Supervisor(tmp / "supervisor"),
    )
    for env, names in layout.items():
        for name in names:
            node = Node(
                name=name,
                env=env,
                port=free_port(),
                app_port=free_port(),
                root=tmp / name / PACKAGE,
                state=tmp / name / "state",
            )
            estate.nodes[name] = node
            if name != SOURCE:
                estate.supervisor.add_program(
                    node.unit,
                    [sys.executable, str(node.root / "current" / "serve.py"), "--port", str(node.app_port)],
                    autostart=False,
                    startsecs=0,
                )
    key = SigningKey.generate()
    key.save(estate.key_path)
    estate.trusted_path.write_text(key.public_key_text() + "\n")
    return estate, vhosts


def first_release(estate: Estate) -> dict[str, str]:
    return {"serve.py": DUMMY_SERVICE_SOURCE, "VERSION": "1"}
