"""The RabbitMQ part of ``make demo``: desired-state files for the local broker's three vhosts, and
``conveyor rabbit status`` at the end.

The demo runs one local broker for dev, qa and prod (a vhost each), so every file uses the
single-node dev profile; a site has a cluster per environment (see deploy/rabbitmq/).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

__all__ = ["rabbit_env", "show_rabbit_status"]

PASSWORD_VARIABLE = "CONVEYOR_DEMO_RABBIT_PASSWORD"


def rabbit_env(log_dir: Path, management_url: str, user: str, password: str) -> dict[str, str]:
    """Write ``log_dir/rabbitmq/<env>.yaml`` for dev, qa and prod; the deployer's settings for them."""
    nodes = httpx.get(f"{management_url}/api/nodes", auth=(user, password), timeout=10).json()
    directory = log_dir / "rabbitmq"
    directory.mkdir(parents=True, exist_ok=True)
    for env in ("dev", "qa", "prod"):
        document = {
            "env": env,
            "profile": "dev",
            "cluster": {"nodes": [{"name": nodes[0]["name"], "management_url": management_url}]},
            "management": {"user": user, "password_env": PASSWORD_VARIABLE},
            "vhosts": [{"name": env, "conveyor": True}],
            "remove_guest": False,
            "poll_s": 5,
        }
        (directory / f"{env}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return {
        "CONVEYOR_DEPLOYER_RABBIT_DIR": str(directory.resolve()),
        PASSWORD_VARIABLE: password,
    }


def show_rabbit_status(deployer_url: str, token: str) -> bool:
    """``conveyor rabbit status`` as an engineer runs it; True if it ran (whatever it found)."""
    print("\n$ conveyor rabbit status", flush=True)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "conveyor"), "rabbit", "status"],
        env={**os.environ, "CONVEYOR_DEPLOYER_URL": deployer_url, "CONVEYOR_DEPLOYER_TOKEN": token},
        check=False,
        timeout=60,
    )
    return done.returncode in (0, 1)
