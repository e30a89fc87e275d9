"""deploy/k8s: every overlay rendered (scripts/kustomize_lite.py), every object checked offline against
the Kubernetes API schemas (kubernetes-validate), and what the schemas cannot say checked here:
no secret committed, probes and limits everywhere, the broker's tuning equal to the deployer's
profiles, and who may reach the management API and MySQL."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from conveyor_deployer.rabbit.profiles import PROFILES

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import kustomize_lite

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
ENVS = ("dev", "qa", "prod")
# The oldest Kubernetes release the manifests support, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
RABBIT_REPLICAS = {"dev": 1, "qa": 3, "prod": 3}
RABBIT_POD_LABELS = {"app.kubernetes.io/name": "conveyor-rabbitmq", "app.kubernetes.io/component": "rabbitmq"}
DEPLOYER_LABEL = {"app.kubernetes.io/name": "conveyor-deployer"}
# Fields of RabbitmqCluster v1beta1 (rabbitmq/cluster-operator, api/v1beta1/rabbitmqcluster_types.go).
RABBIT_SPEC_FIELDS = {
    "replicas", "image", "imagePullSecrets", "service", "persistence", "resources", "affinity",
    "tolerations", "rabbitmq", "tls", "override", "skipPostDeploySteps", "terminationGracePeriodSeconds",
    "delayStartSeconds", "secretBackend",
}  # fmt: skip
RABBIT_CONFIG_FIELDS = {
    "additionalPlugins",
    "additionalConfig",
    "advancedConfig",
    "envConfig",
    "erlangInetConfig",
}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")

Manifest = dict[str, Any]


@functools.cache
def render(env: str) -> tuple[Manifest, ...]:
    return tuple(kustomize_lite.build(K8S / "overlays" / env))


def of_kind(objects: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    (found,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def workloads(objects: tuple[Manifest, ...]) -> list[Manifest]:
    return [o for o in objects if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]


def containers(objects: tuple[Manifest, ...]) -> Iterator[tuple[Manifest, Manifest]]:
    for workload in workloads(objects):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


def effective_env(objects: tuple[Manifest, ...], container: Manifest) -> dict[str, str]:
    """The container's environment as the kubelet builds it, with every Secret key as `<secret:key>`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = f"<{ref['name']}:{ref['key']}>"
    return env


def documented_out_of_band() -> set[str]:
    """Names of the Secrets and ConfigMaps the README says to create before applying an overlay."""
    text = (K8S / "README.md").read_text(encoding="utf-8")
    section = text.split("## Created out of band", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE))


def documented_variables() -> set[str]:
    names: set[str] = set()
    for readme in (ROOT / "services").glob("*/README.md"):
        names |= set(re.findall(r"^\| `(CONVEYOR_[A-Z0-9_]+)` \|", readme.read_text(encoding="utf-8"), re.M))
    return names


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("env", ENVS)
def test_every_object_passes_the_kubernetes_schema(env: str, version: str) -> None:
    for obj in render(env):
        if obj["kind"] == "RabbitmqCluster":
            continue  # a custom resource: checked below
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.absolute_path)
            pytest.fail(f"{env}: {obj['kind']} {obj['metadata']['name']}: {path}: {error.message}")


@pytest.mark.parametrize("env", ENVS)
def test_every_object_lives_in_the_environments_namespace(env: str) -> None:
    objects = render(env)
    assert named(objects, "Namespace", f"conveyor-{env}")
    for obj in objects:
        assert obj["metadata"]["labels"]["conveyor.dev/env"] == env
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == f"conveyor-{env}", obj["metadata"]["name"]
    for workload in workloads(objects):
        assert workload["spec"]["template"]["metadata"]["labels"]["conveyor.dev/env"] == env


@pytest.mark.parametrize("env", ENVS)
def test_no_secret_is_committed(env: str) -> None:
    objects = render(env)
    for secret in of_kind(objects, "Secret"):
        assert not secret.get("data"), secret["metadata"]["name"]
        assert not secret.get("stringData"), secret["metadata"]["name"]
    for config in of_kind(objects, "ConfigMap"):
        for key, value in config["data"].items():
            assert not re.search(r"://[^/@$]+:[^/@$]+@", value), f"{key} carries credentials"
    out_of_band = documented_out_of_band()
    rendered = {o["metadata"]["name"] for o in objects if o["kind"] in ("Secret", "ConfigMap")}
    for workload in workloads(objects):
        spec = workload["spec"]["template"]["spec"]
        referenced = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        referenced |= {v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
        for container in spec["containers"]:
            referenced |= {s["configMapRef"]["name"] for s in container.get("envFrom", [])}
            referenced |= {
                v["valueFrom"]["secretKeyRef"]["name"] for v in container.get("env", []) if "valueFrom" in v
            }
        assert referenced - rendered <= out_of_band, "undocumented: " + ", ".join(
            referenced - rendered - out_of_band
        )


@pytest.mark.parametrize("env", ENVS)
def test_every_container_has_requests_limits_and_probes(env: str) -> None:
    for workload, container in containers(render(env)):
        where = f"{workload['metadata']['name']}/{container['name']}"
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert QUANTITY.match(str(container["resources"][bound][resource])), f"{where} {bound}"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            check = container[probe]["httpGet"]
            assert check["path"] == "/healthz", where
            assert check["port"] in ports, where


@pytest.mark.parametrize("env", ENVS)
def test_probes_reach_the_port_and_address_the_service_listens_on(env: str) -> None:
    objects = render(env)
    for workload, container in containers(objects):
        settings = effective_env(objects, container)
        (port_name,) = (p["name"] for p in container["ports"])
        (port,) = (p["containerPort"] for p in container["ports"])
        prefix = "CONVEYOR_" + container["name"].upper().replace("-", "_") + "_"
        assert settings[prefix + "HTTP_PORT"] == str(port)
        host = container["readinessProbe"]["httpGet"].get("host")
        if workload["spec"]["template"]["spec"].get("hostNetwork"):
            assert host == settings[prefix + "HTTP_HOST"] == "127.0.0.1"  # the node's loopback only
        else:
            assert host is None
            assert settings[prefix + "HTTP_HOST"] == "0.0.0.0"
        assert container["livenessProbe"]["httpGet"]["port"] == port_name


@pytest.mark.parametrize("env", ENVS)
def test_each_service_connects_to_its_environments_vhost_with_its_own_credentials(env: str) -> None:
    objects = render(env)
    for _, container in containers(objects):
        settings = effective_env(objects, container)
        prefix = "CONVEYOR_" + container["name"].upper().replace("-", "_") + "_"
        (url,) = json.loads(settings[prefix + "ENVS"]).values()
        assert json.loads(settings[prefix + "ENVS"]).keys() == {env}
        user, password = settings["AMQP_USERNAME"], settings["AMQP_PASSWORD"]
        assert user.startswith("<"), "credentials come from a Secret"
        assert password.startswith("<"), "credentials come from a Secret"
        assert url == f"amqp://{user}:{password}@conveyor-rabbitmq:5672/{env}"
        if prefix + "ENV" in settings:
            assert settings[prefix + "ENV"] == env


@pytest.mark.parametrize("env", ENVS)
def test_every_setting_is_a_documented_variable(env: str) -> None:
    objects = render(env)
    documented = documented_variables()
    for config in of_kind(objects, "ConfigMap"):
        unknown = {k for k in config["data"] if k.startswith("CONVEYOR_")} - documented
        assert not unknown, f"{config['metadata']['name']}: {sorted(unknown)}"
    for _, container in containers(objects):
        unknown = {
            v["name"] for v in container.get("env", []) if v["name"].startswith("CONVEYOR_")
        } - documented
        assert not unknown, f"{container['name']}: {sorted(unknown)}"


@pytest.mark.parametrize("env", ENVS)
def test_containers_are_locked_down_except_the_firewall_agents_network_rights(env: str) -> None:
    for workload, container in containers(render(env)):
        pod = workload["spec"]["template"]["spec"]
        context = {**pod.get("securityContext", {}), **container["securityContext"]}
        assert pod["automountServiceAccountToken"] is False
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert not context.get("privileged")
        assert context["capabilities"]["drop"] == ["ALL"]
        if container["name"] == "firewall-agent":
            assert sorted(context["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
            assert pod["hostNetwork"] is True
            assert pod["nodeSelector"] == {"conveyor.dev/node-agent": "true"}
        else:
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] != 0
            assert "add" not in context["capabilities"]


@pytest.mark.parametrize("env", ENVS)
def test_the_control_plane_runs_one_instance_each_on_its_volume(env: str) -> None:
    objects = render(env)
    claims = {c["metadata"]["name"] for c in of_kind(objects, "PersistentVolumeClaim")}
    for name in ("conveyor-deployer", "conveyor-notifier", "conveyor-version-db"):
        deployment = named(objects, "Deployment", name)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {
            v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
        } <= claims
        service = named(objects, "Service", name)
        assert (
            service["spec"]["selector"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In is evaluated here"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def peers_admitted(objects: tuple[Manifest, ...], pod_labels: dict[str, str], port: int) -> list[Manifest]:
    """Every `from` peer that the policies selecting these pods admit on this port ({} for anyone)."""
    peers: list[Manifest] = []
    policies = [p for p in of_kind(objects, "NetworkPolicy") if selects(p["spec"]["podSelector"], pod_labels)]
    assert policies, f"no NetworkPolicy selects {pod_labels}"
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports", [])
            if ports and not any(p["port"] <= port <= p.get("endPort", p["port"]) for p in ports):
                continue
            peers += rule.get("from") or [{}]
    return peers


def pods_admitted(objects: tuple[Manifest, ...], peers: list[Manifest]) -> set[str]:
    assert all(set(peer) == {"podSelector"} for peer in peers), f"only same-namespace pods: {peers}"
    return {
        w["metadata"]["name"]
        for w in workloads(objects)
        if any(selects(peer["podSelector"], w["spec"]["template"]["metadata"]["labels"]) for peer in peers)
    }


@pytest.mark.parametrize("env", ENVS)
def test_only_the_deployer_reaches_the_rabbitmq_management_api(env: str) -> None:
    objects = render(env)
    peers = peers_admitted(objects, RABBIT_POD_LABELS, 15672)
    assert peers == [{"podSelector": {"matchLabels": DEPLOYER_LABEL}}]
    assert pods_admitted(objects, peers) == {"conveyor-deployer"}


@pytest.mark.parametrize("env", ENVS)
def test_only_the_database_clients_reach_mysql(env: str) -> None:
    """Of Conveyor's services only version-db and the notifier hold a DATABASE_URL; the deployer has no
    database."""
    objects = render(env)
    clients = {
        w["metadata"]["name"]
        for w in workloads(objects)
        for c in w["spec"]["template"]["spec"]["containers"]
        if any(v["name"].endswith("_DATABASE_URL") for v in c.get("env", []))
    }
    assert clients == {"conveyor-version-db", "conveyor-notifier"}
    for database in ("mysql", "mariadb"):
        peers = peers_admitted(objects, {"app.kubernetes.io/name": database}, 3306)
        assert pods_admitted(objects, peers) == clients


@pytest.mark.parametrize("env", ENVS)
def test_every_conveyor_pod_reaches_amqp(env: str) -> None:
    objects = render(env)
    peers = peers_admitted(objects, RABBIT_POD_LABELS, 5672)
    by_pod = pods_admitted(objects, [p for p in peers if "podSelector" in p])
    for workload in workloads(objects):
        if workload["spec"]["template"]["spec"].get("hostNetwork"):
            assert any("ipBlock" in p for p in peers), "node agents connect from the nodes' addresses"
        else:
            assert workload["metadata"]["name"] in by_pod


def rabbitmq_conf(cluster: Manifest) -> dict[str, str]:
    text = cluster["spec"]["rabbitmq"]["additionalConfig"]
    assert len(text) <= 2000, "the CRD's limit for additionalConfig"
    settings: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, separator, value = (part.strip() for part in line.partition("="))
        assert separator, f"not `key = value`: {line!r}"
        assert key not in settings, f"{key} set twice"
        settings[key] = value
    return settings


def gigabytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    scale = {"GB": 1.0, "G": 1.0, "Gi": 2**30 / 1e9, "Ti": 2**40 / 1e9, "MB": 1e-3, "Mi": 2**20 / 1e9}[unit]
    return float(number) * scale


@pytest.mark.parametrize("env", ENVS)
def test_rabbitmq_cluster_is_a_well_formed_custom_resource(env: str) -> None:
    (cluster,) = of_kind(render(env), "RabbitmqCluster")
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cluster["metadata"]["name"])
    spec = cluster["spec"]
    assert set(spec) <= RABBIT_SPEC_FIELDS
    assert set(spec["rabbitmq"]) <= RABBIT_CONFIG_FIELDS
    assert isinstance(spec["replicas"], int)
    assert spec["replicas"] % 2 == 1, "quorum queues and pause_minority need an odd number"
    assert QUANTITY.match(spec["persistence"]["storage"])
    # The fields typed as core/v1 types, checked with their schemas inside a pod.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rabbitmq"},
        "spec": {
            "affinity": spec.get("affinity", {}),
            "containers": [{"name": "rabbitmq", "image": "rabbitmq", "resources": spec["resources"]}],
        },
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSIONS[0], strict=True)
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= spec["resources"][bound].keys()
        assert all(QUANTITY.match(str(q)) for q in spec["resources"][bound].values())
    # The operator's advice: memory requests equal to limits, so the watermark has a fixed base.
    assert spec["resources"]["requests"]["memory"] == spec["resources"]["limits"]["memory"]


@pytest.mark.parametrize("env", ENVS)
def test_rabbitmq_cluster_follows_the_environments_tuning_profile(env: str) -> None:
    (cluster,) = of_kind(render(env), "RabbitmqCluster")
    profile = PROFILES[env]
    conf = rabbitmq_conf(cluster)
    assert cluster["spec"]["replicas"] == RABBIT_REPLICAS[env]
    assert cluster["spec"]["replicas"] in profile.sizes
    assert conf == {
        "cluster_partition_handling": profile.cluster_partition_handling,
        "vm_memory_high_watermark.relative": str(profile.vm_memory_high_watermark),
        "disk_free_limit.absolute": profile.disk_free_limit,
        "consumer_timeout": str(profile.consumer_timeout_ms),
        "heartbeat": str(profile.heartbeat_s),
    }
    if env in ("qa", "prod"):
        assert conf["cluster_partition_handling"] == "pause_minority"
    # The broker blocks publishers when free disk falls under the limit: the volume must be far larger.
    assert gigabytes(cluster["spec"]["persistence"]["storage"]) >= 5 * gigabytes(profile.disk_free_limit)


@pytest.mark.parametrize("env", ENVS)
def test_kustomize_lite_renders_what_kubectl_kustomize_renders(env: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize_lite alone renders the overlays")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / env)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert list(yaml.safe_load_all(result.stdout)) == list(render(env))


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")
    return directory


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers:
        - name: web
          image: team/web:1.0
          args: [serve]
          env: [{name: A, value: "1"}, {name: B, value: "2"}]
        - name: sidecar
          image: team/sidecar:1.0
"""


def test_kustomize_lite_merges_containers_and_env_by_name_and_replaces_plain_lists(tmp_path: Path) -> None:
    patch = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers:
        - name: web
          args: [serve, --fast]
          env: [{name: B, value: "3"}, {name: C, value: "4"}]
"""
    overlay = write(
        tmp_path,
        {
            "base/kustomization.yaml": "resources: [web.yaml]\n",
            "base/web.yaml": DEPLOYMENT,
            "overlay/kustomization.yaml": "resources: [../base]\nnamespace: ns\npatches: [{path: p.yaml}]\n"
            "labels: [{pairs: {env: x}, includeTemplates: true}]\n"
            "images: [{name: team/web, newTag: '2.0'}]\n",
            "overlay/p.yaml": patch,
        },
    )
    (web,) = kustomize_lite.build(overlay / "overlay")
    first, second = web["spec"]["template"]["spec"]["containers"]
    assert first["args"] == ["serve", "--fast"]
    assert first["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "3"},
        {"name": "C", "value": "4"},
    ]
    assert (first["image"], second["image"]) == ("team/web:2.0", "team/sidecar:1.0")
    assert web["metadata"] == {"name": "web", "namespace": "ns", "labels": {"env": "x"}}
    assert web["spec"]["template"]["metadata"]["labels"] == {"env": "x"}


@pytest.mark.parametrize(
    ("kustomization", "refusal"),
    [
        ("resources: [web.yaml]\ncommonLabels: {a: b}\n", "commonLabels not supported"),
        ("resources: [web.yaml]\nlabels: [{pairs: {a: b}, includeSelectors: true}]\n", "includeSelectors"),
        ("resources: [web.yaml]\npatches: [{path: p.yaml, target: {kind: Deployment}}]\n", "each patch"),
        ("resources: [web.yaml, web.yaml]\n", "listed twice"),
        ("resources: [https://example.invalid/base]\n", "remote resource"),
    ],
)
def test_kustomize_lite_refuses_what_it_does_not_implement(
    tmp_path: Path, kustomization: str, refusal: str
) -> None:
    write(tmp_path, {"kustomization.yaml": kustomization, "web.yaml": DEPLOYMENT})
    with pytest.raises(kustomize_lite.KustomizationError, match=refusal):
        kustomize_lite.build(tmp_path)


def test_kustomize_lite_refuses_lists_it_cannot_merge_like_kustomize(tmp_path: Path) -> None:
    patch = DEPLOYMENT.replace("args: [serve]", "ports: [{containerPort: 80}]").replace(
        "        - name: sidecar\n          image: team/sidecar:1.0\n", ""
    )
    web = DEPLOYMENT.replace("args: [serve]", "ports: [{containerPort: 81}]")
    write(
        tmp_path,
        {"kustomization.yaml": "resources: [web.yaml]\npatches: [{path: p.yaml}]\n", "web.yaml": web},
    )
    (tmp_path / "p.yaml").write_text(patch, encoding="utf-8")
    with pytest.raises(kustomize_lite.KustomizationError, match="does not know how kustomize merges 'ports'"):
        kustomize_lite.build(tmp_path)
