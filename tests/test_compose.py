"""containers/*.Dockerfile and docker-compose.yml, checked without a Docker engine: each Dockerfile read as
text (multi-stage, only its own service installed, its port, its user), the compose file rendered by
`docker-compose config` with dummy secrets and checked against the services' own settings classes."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "containers"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENVS = ("dev", "qa", "prod")
IMAGES = ("version-db", "deployer", "notifier", "changelog-listener", "firewall-agent")
NEEDS_ROOT = {"firewall-agent"}  # changes the node's firewall: root with NET_ADMIN (its Dockerfile says why)
NON_ROOT_USER = "10001"
# compose service → the image (Dockerfile) it runs
CONVEYOR_SERVICES = {
    "version-db": "version-db",
    "deployer": "deployer",
    "notifier": "notifier",
    **{f"{env}-listener": "changelog-listener" for env in ENVS},
    **{f"{env}-firewall-agent": "firewall-agent" for env in ENVS},
}
SECRETS = {
    "RABBITMQ_PASSWORD": "rabbit-dummy",
    "MARIADB_PASSWORD": "maria-dummy",
    "CONVEYOR_ADMIN_TOKEN": "admin-dummy",
    "VERSION_DB_DEPLOYER_TOKEN": "deployer-dummy",
    "VERSION_DB_READER_TOKEN": "reader-dummy",
}

Service = dict[str, Any]


def settings_class(image: str) -> Any:
    return importlib.import_module(f"conveyor_{image.replace('-', '_')}.config").Settings


# -- the Dockerfiles ----------------------------------------------------------------------------------


def stages(image: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (keyword, arguments) per stage; [0] holds the ARGs before FROM."""
    text = re.sub(r"\\\n", " ", (DOCKER / f"{image}.Dockerfile").read_text())
    result: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            if keyword.upper() == "FROM":
                result.append([])
            result[-1].append((keyword.upper(), arguments.strip()))
    return result


def final_stage(image: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for keyword, arguments in stages(image)[-1]:
        found.setdefault(keyword, []).append(arguments)
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_multi_stage_with_a_slim_python_runtime(image: str) -> None:
    all_stages = stages(image)
    global_args = dict(a.split("=", 1) for k, a in all_stages[0] if k == "ARG" and "=" in a)
    froms = [stage[0][1] for stage in all_stages[1:]]
    assert len(froms) >= 2, f"{image}: one FROM, expected a builder stage and a runtime stage"
    runtime = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], froms[-1])
    assert runtime == "python:3.11-slim"
    assert final_stage(image)["COPY"] == ["--from=builder /opt/conveyor/venv /opt/conveyor/venv"], (
        "the runtime stage takes the virtualenv from the builder and nothing else"
    )
    labels = " ".join(final_stage(image)["LABEL"])
    for label in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_installs_only_its_own_service(image: str) -> None:
    own = f"conveyor-{image}"
    others = [f"conveyor-{other}" for other in IMAGES if other != image]
    builder = next(stage for stage in stages(image)[1:] if stage[0][1].endswith(" AS builder"))
    uv_runs = [a for k, a in builder if k == "RUN" and re.search(r"\buv (sync|export|build|pip)\b", a)]
    assert uv_runs, f"{image}: no uv command in the builder stage"
    for run in uv_runs:
        assert f"--package {own}" in run, run
        assert "--frozen" in run or "--locked" in run, f"not from uv.lock: {run}"
        assert "--no-dev" in run, run
        assert not [name for name in others if re.search(rf"{name}\b", run)], run
    assert any("--locked" in run for run in uv_runs), "the build must fail when uv.lock is stale"
    sources = [s for k, a in builder if k == "COPY" and not a.startswith("--from") for s in a.split()[:-1]]
    manifests = {"pyproject.toml", "uv.lock", "shared/pyproject.toml"} | {
        f"services/{name}/pyproject.toml" for name in IMAGES
    }
    assert {"shared/", f"services/{image}/"} <= set(sources)
    assert set(sources) <= manifests | {"shared/", f"services/{image}/"}, "sources of another service copied"


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_exposes_the_settings_http_port(image: str) -> None:
    port = settings_class(image).model_fields["http_port"].default
    final = final_stage(image)
    assert final["EXPOSE"] == [str(port)]
    (healthcheck,) = final["HEALTHCHECK"]
    assert "/healthz" in healthcheck
    assert f"'{port}'" in healthcheck, healthcheck


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_runs_its_console_script_as_the_right_user(image: str) -> None:
    final = final_stage(image)
    scripts = tomllib.loads((ROOT / "services" / image / "pyproject.toml").read_text())["project"]["scripts"]
    assert final["ENTRYPOINT"] == [json.dumps([f"conveyor-{image}"])]
    assert f"conveyor-{image}" in scripts
    user = final.get("USER", ["root"])[-1].split(":")[0]
    if image in NEEDS_ROOT:
        assert user in {"root", "0"}
    else:
        assert user == NON_ROOT_USER, f"{image} runs as {user}, expected uid {NON_ROOT_USER}"
    state_dir = settings_class(image).model_fields.get("state_dir")
    if state_dir is not None:
        assert final["VOLUME"] == [json.dumps([str(state_dir.default)])]


def test_firewall_image_documents_its_privileges_and_tools() -> None:
    for text in ((DOCKER / "firewall-agent.Dockerfile").read_text(), (DOCKER / "README.md").read_text()):
        for needed in ("--network host", "NET_ADMIN", "NET_RAW", "root", "nftables", "iptables"):
            assert needed in text
    installs = " ".join(final_stage("firewall-agent")["RUN"])
    assert re.search(r"apt-get install .*\bnftables\b.*\biptables\b", installs), installs


# -- the compose file, as docker-compose renders it ---------------------------------------------------


@pytest.fixture(scope="module")
def compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (scripts/ensure-services.sh installs it)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose, or make services)")
    return binary


def compose_config(binary: str, tmp: Path, secrets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with only these variables (an empty --env-file: no local .env)."""
    (tmp / "empty.env").write_text("")
    (tmp / "htpasswd").write_text("publisher:$2y$05$dummy\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "PYPI_HTPASSWD": str(tmp / "htpasswd"), **secrets}
    command = [binary, "--env-file", str(tmp / "empty.env"), "-f", str(COMPOSE_FILE), "config"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def rendered(compose_binary: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Service]:
    done = compose_config(compose_binary, tmp_path_factory.mktemp("compose"), SECRETS)
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    services: dict[str, Service] = yaml.safe_load(done.stdout)["services"]
    return services


def test_compose_refuses_to_render_without_a_secret(compose_binary: str, tmp_path: Path) -> None:
    for missing in SECRETS:
        done = compose_config(compose_binary, tmp_path, {k: v for k, v in SECRETS.items() if k != missing})
        assert done.returncode != 0, f"rendered without {missing}"
        assert f"set {missing}" in done.stderr, done.stderr


def test_compose_holds_no_secret_value() -> None:
    raw = COMPOSE_FILE.read_text()
    for name in SECRETS:
        uses = re.findall(rf"\$\{{{name}([^}}]*)\}}", raw)
        assert uses, f"{name} is not used"
        assert all(use.startswith(":?") for use in uses), f"{name} must be required: ${{{name}:?…}}"
    for service, spec in yaml.safe_load(raw)["services"].items():
        for key, value in (spec.get("environment") or {}).items():
            assert not literal_secrets(key, str(value)), f"{service}: {key} holds a secret value"


SECRET_NAME = re.compile(r"PASS|TOKEN|SECRET", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{[A-Z0-9_]+:\?[^}]*\}")
NOT_SECRETS = {"MARIADB_RANDOM_ROOT_PASSWORD"}  # a flag: "1" makes the image generate the root password


def literal_secrets(key: str, value: str) -> list[str]:
    """The parts of an environment value that hold a secret but are not a required interpolation:
    URL passwords, and in JSON every string under a secret-named key (token, password …)."""
    passwords = re.findall(r"://[^:/@\s\"]+:(\$\{[^}]*\}|[^@/\s\"]+)@", value)
    found = [p for p in passwords if not INTERPOLATION.fullmatch(p)]
    if value[:1] in ("{", "["):
        leaves = secret_leaves(json.loads(value), secret=bool(SECRET_NAME.search(key)))
        found += [leaf for leaf in leaves if not INTERPOLATION.fullmatch(leaf)]
    elif SECRET_NAME.search(key) and key not in NOT_SECRETS and not INTERPOLATION.fullmatch(value):
        found.append(value)
    return found


def secret_leaves(node: Any, *, secret: bool) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from secret_leaves(value, secret=secret or bool(SECRET_NAME.search(key)))
    elif isinstance(node, list):
        for value in node:
            yield from secret_leaves(value, secret=secret)
    elif secret:
        yield str(node)


def test_secret_check_finds_literal_secrets() -> None:
    assert literal_secrets("X_ENVS", '{"dev": "amqp://u:hunter2@rabbitmq/dev"}') == ["hunter2"]
    assert literal_secrets("X_USERS", '{"ada": {"token": "abc", "role": "admin"}}') == ["abc"]
    assert literal_secrets("X_API_TOKENS", '{"reader": ["abc"]}') == ["abc"]
    assert literal_secrets("X_TOKEN", "abc") == ["abc"]
    assert literal_secrets("X_TOKEN", "${T:?set T}") == []
    assert literal_secrets("X_ENVS", '{"dev": "amqp://u:${P:?set P}@rabbitmq/dev", "x": "http://h:1/"}') == []


@pytest.mark.parametrize(("service", "image"), CONVEYOR_SERVICES.items())
def test_conveyor_service_builds_its_image_with_a_healthcheck_after_the_broker(
    rendered: dict[str, Service], service: str, image: str
) -> None:
    spec = rendered[service]
    assert spec["build"]["context"] == str(ROOT)
    assert spec["build"]["dockerfile"] == f"containers/{image}.Dockerfile"
    prefix = settings_class(image).model_config["env_prefix"]
    port = spec["environment"].get(
        f"{prefix}HTTP_PORT", settings_class(image).model_fields["http_port"].default
    )
    assert f"127.0.0.1:{port}/healthz" in " ".join(spec["healthcheck"]["test"])
    assert spec["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
    assert spec.get("user") in (None, ""), "the image decides its user"
    assert not spec.get("privileged")
    assert bool(spec.get("cap_add")) == (image in NEEDS_ROOT), "only the firewall agents get capabilities"


def test_every_dependency_is_waited_for_properly(rendered: dict[str, Service]) -> None:
    for service, spec in rendered.items():
        for dependency, how in (spec.get("depends_on") or {}).items():
            assert dependency in rendered, f"{service} depends on an unknown service {dependency}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in rendered[dependency], f"{dependency} has no healthcheck"
    for infrastructure in ("rabbitmq", "mariadb", "pypi"):
        assert "healthcheck" in rendered[infrastructure]
    assert rendered["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert rendered["mariadb"]["image"] == "mariadb:11"
    assert rendered["pypi"]["image"].startswith("pypiserver/pypiserver:v2.")


@pytest.mark.parametrize("env", ENVS)
def test_firewall_agent_shares_its_node_network_with_net_admin(
    rendered: dict[str, Service], env: str
) -> None:
    agent, listener = rendered[f"{env}-firewall-agent"], rendered[f"{env}-listener"]
    assert {"NET_ADMIN", "NET_RAW"} <= set(agent["cap_add"])
    # The documented alternative to host networking (containers/README.md): the node's own namespace.
    assert agent["network_mode"] in {"host", f"service:{env}-listener"}
    assert (
        agent["environment"]["CONVEYOR_FIREWALL_AGENT_NODE"]
        == (listener["environment"]["CONVEYOR_CHANGELOG_LISTENER_NODE"])
    )


def test_compose_mounts_only_files_that_exist(rendered: dict[str, Service]) -> None:
    for service, spec in rendered.items():
        for volume in spec.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith(str(ROOT)):
                assert Path(source).exists(), f"{service} mounts {source}, which is missing"


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(("service", "image"), CONVEYOR_SERVICES.items())
def test_environment_is_valid_for_the_service_settings(
    rendered: dict[str, Service], clean_environment: pytest.MonkeyPatch, service: str, image: str
) -> None:
    settings = settings_class(image)
    prefix = settings.model_config["env_prefix"]
    environment: dict[str, str] = rendered[service]["environment"]
    for name, value in environment.items():
        assert name.startswith(prefix), f"{service}: {name} is not a {prefix}* variable"
        field = name.removeprefix(prefix).lower().split("__")[0]
        assert field in settings.model_fields, f"{service}: {name} is no setting of {image}"
        clean_environment.setenv(name, str(value))
    loaded = settings()
    definitions = json.loads((DOCKER / "rabbitmq" / "definitions.json").read_text())
    vhosts = {vhost["name"] for vhost in definitions["vhosts"]}
    for url in loaded.envs.values():
        parts = urlsplit(url)
        assert (parts.hostname, parts.username) == ("rabbitmq", "conveyor")
        assert parts.path.lstrip("/") in vhosts, f"{service}: vhost of {url} is not created"
    if hasattr(loaded, "env"):
        assert list(loaded.envs) == [loaded.env], "a node talks to its own environment's broker only"


def test_nodes_agree_with_the_inventory_and_the_artifact_store(rendered: dict[str, Service]) -> None:
    from conveyor_deployer.inventory import load_inventory

    inventory = load_inventory(DOCKER / "deployer" / "inventory.yaml")
    store = rendered["deployer"]["environment"]["CONVEYOR_DEPLOYER_ARTIFACT_STORE_URL"]
    for env in ENVS:
        listener = rendered[f"{env}-listener"]["environment"]
        assert listener["CONVEYOR_CHANGELOG_LISTENER_ARTIFACT_STORE_URL"] == store
        packages = json.loads(listener["CONVEYOR_CHANGELOG_LISTENER_PACKAGES"])
        targets = {p["name"] for p in packages if p["role"] == "target"}
        (environment,) = [e for e in inventory.environments if e.name == env]
        nodes = {node.name: node for cluster in environment.clusters for node in cluster.nodes}
        if targets:
            node = nodes[listener["CONVEYOR_CHANGELOG_LISTENER_NODE"]]
            assert set(node.packages) == targets
        else:
            assert listener["CONVEYOR_CHANGELOG_LISTENER_NODE"] not in nodes, "a source node is not listed"


def test_notifier_rules_file_is_valid() -> None:
    from conveyor_notifier.rules import load_rules

    assert load_rules(DOCKER / "notifier" / "rules.yaml").default_receiver == "log"
