"""Render a kustomization the way ``kustomize build`` does, for the few features deploy/k8s uses.

CI has neither kustomize nor kubectl, and PyPI has no maintained wheel of the kustomize binary for
this project's Python, so the manifests keep to a small subset that this module implements:

- ``resources``: files (one or more YAML documents) and directories holding a kustomization;
- ``namespace``: set on every namespaced object;
- ``labels``: ``pairs`` on every object's metadata, and with ``includeTemplates`` on pod templates
  (``includeSelectors`` must stay false: selectors are written by hand);
- ``images``: ``name`` with ``newName``, ``newTag`` or ``digest``, on every ``containers`` and
  ``initContainers`` list;
- ``patches``: ``path`` to a file of strategic-merge patches (one or more documents), each applied
  to the one object of the same apiVersion, kind and name. Maps merge; ``null`` deletes a key;
  lists listed in ``MERGE_KEYS`` merge item by item on their key, lists in ``REPLACED_LISTS`` are
  replaced, any other list is refused.

Anything else is refused with the field's name rather than ignored: render such a kustomization
with kustomize itself (``kubectl kustomize DIR``). tests/test_k8s_manifests.py compares this
module's output with ``kubectl kustomize`` wherever kubectl is installed.

Usage: ``python scripts/kustomize_lite.py DIR [-o FILE]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import yaml

__all__ = [
    "MERGE_KEYS",
    "REPLACED_LISTS",
    "KustomizationError",
    "Manifest",
    "build",
    "dump",
    "strategic_merge",
]

Manifest = dict[str, Any]

KUSTOMIZATION_FILES: Final = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KNOWN_FIELDS: Final = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
)

# Strategic-merge keys of the Kubernetes types, for the fields the manifests patch.
MERGE_KEYS: Final[Mapping[str, str]] = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
# Lists that a strategic-merge patch replaces whole (no merge key in the Kubernetes types).
REPLACED_LISTS: Final = frozenset(
    {"args", "command", "envFrom", "accessModes", "ingress", "egress", "policyTypes"}
)

# API groups whose kinds kustomize merges by their OpenAPI schema; other kinds (custom resources)
# it merges by a heuristic this module does not copy, so their patches may hold no list.
BUILTIN_GROUPS: Final = frozenset({"", "apps", "batch", "policy", "networking.k8s.io"})

CLUSTER_SCOPED: Final = frozenset(
    {"Namespace", "PersistentVolume", "StorageClass", "PriorityClass", "ClusterRole", "IngressClass"}
)
# Kinds whose references kustomize rewrites in ways this module does not.
UNSUPPORTED_KINDS: Final = frozenset(
    {
        "RoleBinding",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "APIService",
    }
)
TEMPLATE_LABEL_PATHS: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = {
    "Deployment": (("spec", "template", "metadata", "labels"),),
    "ReplicaSet": (("spec", "template", "metadata", "labels"),),
    "DaemonSet": (("spec", "template", "metadata", "labels"),),
    "StatefulSet": (("spec", "template", "metadata", "labels"),),
    "Job": (("spec", "template", "metadata", "labels"),),
    "ReplicationController": (("spec", "template", "metadata", "labels"),),
    "CronJob": (
        ("spec", "jobTemplate", "metadata", "labels"),
        ("spec", "jobTemplate", "spec", "template", "metadata", "labels"),
    ),
}
# kustomize's default ("legacy") output order; other kinds follow, by group, version and kind.
FIRST_KINDS: Final = (
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
)
LAST_KINDS: Final = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


class KustomizationError(Exception):
    """The kustomization is broken or uses what this module does not implement."""


def build(directory: Path) -> list[Manifest]:
    """Every object the kustomization in ``directory`` renders, in kustomize's output order."""
    objects = _build(directory.resolve(), seen=())
    return sorted(objects, key=_output_order)


def dump(objects: Iterable[Manifest]) -> str:
    """The objects as one YAML stream (keys sorted, multi-line strings as blocks), like kustomize."""
    return "---\n".join(yaml.dump(o, Dumper=_Dumper, sort_keys=True, allow_unicode=True) for o in objects)


def strategic_merge(target: Any, patch: Any, *, builtin: bool, where: str) -> Any:
    """``patch`` merged into ``target`` (neither is changed): the semantics described above."""
    if isinstance(patch, dict) and isinstance(target, dict):
        merged = dict(target)
        for key, value in patch.items():
            if key.startswith("$"):
                raise KustomizationError(f"{where}: the patch directive {key!r} is not supported")
            if value is None:
                merged.pop(key, None)
            elif isinstance(value, list):
                merged[key] = _merge_list(
                    key, merged.get(key), value, builtin=builtin, where=f"{where}.{key}"
                )
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, builtin=builtin, where=f"{where}.{key}")
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    return copy.deepcopy(patch)


def _build(directory: Path, *, seen: tuple[Path, ...]) -> list[Manifest]:
    if directory in seen:
        raise KustomizationError(f"{directory}: kustomizations include each other")
    path = _kustomization_file(directory)
    kustomization = _load_mapping(path)
    unknown = sorted(set(kustomization) - KNOWN_FIELDS)
    if unknown:
        raise KustomizationError(
            f"{path}: {', '.join(unknown)} not supported by kustomize_lite "
            f"(supported: {', '.join(sorted(KNOWN_FIELDS))}); render with `kubectl kustomize` instead"
        )
    objects: list[Manifest] = []
    for entry in _string_list(kustomization, "resources", path):
        if "://" in entry or entry.startswith("git@"):
            raise KustomizationError(f"{path}: remote resource {entry!r} is not supported")
        resource = (directory / entry).resolve()
        if resource.is_dir():
            found = _build(resource, seen=(*seen, directory))
        elif resource.is_file():
            found = [_checked(o, resource) for o in _load_documents(resource)]
        else:
            raise KustomizationError(f"{path}: resource {entry!r} does not exist")
        for obj in found:
            if any(_identity(obj) == _identity(known) for known in objects):
                raise KustomizationError(f"{path}: {_describe(obj)} is listed twice")
            objects.append(obj)
    objects = _apply_patches(objects, kustomization.get("patches"), directory, path)
    if "namespace" in kustomization:
        _set_namespace(objects, kustomization["namespace"], path)
    for entry in kustomization.get("labels") or []:
        _add_labels(objects, entry, path)
    for entry in kustomization.get("images") or []:
        _set_images(objects, entry, path)
    return objects


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizationError(f"{directory}: no kustomization.yaml")


def _load_documents(path: Path) -> list[Manifest]:
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as error:
        raise KustomizationError(f"{path}: not YAML: {error}") from error
    result: list[Manifest] = []
    for document in documents:
        if document is None:
            continue
        if not isinstance(document, dict):
            raise KustomizationError(f"{path}: each document must be a mapping")
        result.append(document)
    return result


def _load_mapping(path: Path) -> Manifest:
    documents = _load_documents(path)
    if len(documents) != 1:
        raise KustomizationError(f"{path}: expected one YAML mapping")
    return documents[0]


def _string_list(kustomization: Manifest, field: str, path: Path) -> list[str]:
    value = kustomization.get(field) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KustomizationError(f"{path}: {field} must be a list of strings")
    return value


def _checked(obj: Manifest, source: Path) -> Manifest:
    for field in ("apiVersion", "kind"):
        if not isinstance(obj.get(field), str):
            raise KustomizationError(f"{source}: an object has no {field}")
    if not isinstance(obj.get("metadata"), dict) or not isinstance(obj["metadata"].get("name"), str):
        raise KustomizationError(f"{source}: a {obj['kind']} has no metadata.name")
    if obj["kind"] in UNSUPPORTED_KINDS:
        raise KustomizationError(f"{source}: kustomize_lite does not handle {obj['kind']}")
    return obj


def _identity(obj: Manifest) -> tuple[str, str, str, str]:
    group = obj["apiVersion"].rpartition("/")[0]
    return (group, obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _describe(obj: Manifest) -> str:
    return f"{obj['kind']} {obj['metadata']['name']!r}"


def _apply_patches(objects: list[Manifest], entries: Any, directory: Path, path: Path) -> list[Manifest]:
    for entry in entries or []:
        if not isinstance(entry, dict) or set(entry) != {"path"}:
            raise KustomizationError(
                f"{path}: each patch must be {{path: FILE}} (no target, no inline patch)"
            )
        source = (directory / entry["path"]).resolve()
        if not source.is_file():
            raise KustomizationError(f"{path}: patch {entry['path']!r} does not exist")
        for document in _load_documents(source):
            patch = _checked(document, source)
            matches = [i for i, obj in enumerate(objects) if _patch_applies(patch, obj)]
            if len(matches) != 1:
                raise KustomizationError(
                    f"{source}: {_describe(patch)} matches {len(matches)} objects, not 1"
                )
            index = matches[0]
            group = patch["apiVersion"].rpartition("/")[0]
            objects[index] = strategic_merge(
                objects[index],
                patch,
                builtin=group in BUILTIN_GROUPS,
                where=f"{source.name}:{_describe(patch)}",
            )
    return objects


def _patch_applies(patch: Manifest, obj: Manifest) -> bool:
    namespace = patch["metadata"].get("namespace")
    return (
        patch["apiVersion"] == obj["apiVersion"]
        and patch["kind"] == obj["kind"]
        and patch["metadata"]["name"] == obj["metadata"]["name"]
        and (namespace is None or namespace == obj["metadata"].get("namespace"))
    )


def _merge_list(key: str, target: Any, patch: list[Any], *, builtin: bool, where: str) -> list[Any]:
    if target is None or patch == target:
        return copy.deepcopy(patch)
    if not builtin:
        raise KustomizationError(f"{where}: a patch of a custom resource may not hold a list")
    if key in REPLACED_LISTS:
        return copy.deepcopy(patch)
    if key not in MERGE_KEYS or not isinstance(target, list):
        raise KustomizationError(f"{where}: kustomize_lite does not know how kustomize merges {key!r}")
    merge_key = MERGE_KEYS[key]
    merged = [copy.deepcopy(item) for item in target]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise KustomizationError(f"{where}: every item needs its {merge_key!r}")
        position = next((i for i, old in enumerate(merged) if old.get(merge_key) == item[merge_key]), None)
        if position is None:
            merged.append(copy.deepcopy(item))
        else:
            label = f"{where}[{item[merge_key]}]"
            merged[position] = strategic_merge(merged[position], item, builtin=builtin, where=label)
    return merged


def _set_namespace(objects: list[Manifest], namespace: Any, path: Path) -> None:
    if not isinstance(namespace, str) or not namespace:
        raise KustomizationError(f"{path}: namespace must be a name")
    for obj in objects:
        if obj["kind"] == "Namespace":
            if obj["metadata"]["name"] != namespace:
                raise KustomizationError(
                    f"{path}: kustomize would rename Namespace {obj['metadata']['name']!r}"
                )
        elif obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace


def _add_labels(objects: list[Manifest], entry: Any, path: Path) -> None:
    if not isinstance(entry, dict) or not set(entry) <= {"pairs", "includeSelectors", "includeTemplates"}:
        raise KustomizationError(f"{path}: labels entries take pairs, includeSelectors and includeTemplates")
    if entry.get("includeSelectors"):
        raise KustomizationError(f"{path}: labels.includeSelectors is not supported: write selectors by hand")
    pairs = entry.get("pairs")
    if not isinstance(pairs, dict) or not all(isinstance(v, str) for v in pairs.values()):
        raise KustomizationError(f"{path}: labels.pairs must map names to strings")
    for obj in objects:
        _merge_into(obj, ("metadata", "labels"), pairs)
        if entry.get("includeTemplates"):
            for field_path in TEMPLATE_LABEL_PATHS.get(obj["kind"], ()):
                _merge_into(obj, field_path, pairs)


def _merge_into(obj: Manifest, field_path: tuple[str, ...], pairs: Mapping[str, str]) -> None:
    node = obj
    for key in field_path:
        node = node.setdefault(key, {})
        if node is None:
            raise KustomizationError(f"{_describe(obj)}: {'.'.join(field_path)} is null")
    node.update(pairs)


def _set_images(objects: list[Manifest], entry: Any, path: Path) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise KustomizationError(f"{path}: each image needs a name")
    unknown = set(entry) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise KustomizationError(
            f"{path}: images take name, newName, newTag and digest, not {sorted(unknown)}"
        )
    for obj in objects:
        for container in _containers(obj):
            image = container.get("image")
            if not isinstance(image, str):
                continue
            name, tag, digest = _split_image(image)
            if name != entry["name"]:
                continue
            name = entry.get("newName", name)
            if "digest" in entry:
                container["image"] = f"{name}@{entry['digest']}"
            elif "newTag" in entry:
                container["image"] = f"{name}:{entry['newTag']}"
            else:
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every item of a ``containers`` or ``initContainers`` list anywhere in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (item for item in value if isinstance(item, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _split_image(image: str) -> tuple[str, str, str]:
    """``registry:5000/team/app:1.2@sha256:…`` → name, tag, digest (each may be empty)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest
    return name, "", digest


def _output_order(obj: Manifest) -> tuple[int, str, str, str]:
    kind = obj["kind"]
    group, _, version = obj["apiVersion"].rpartition("/")
    if kind in FIRST_KINDS:
        rank = FIRST_KINDS.index(kind)
    elif kind in LAST_KINDS:
        rank = len(FIRST_KINDS) + 1 + LAST_KINDS.index(kind)
    else:
        rank = len(FIRST_KINDS)
    return (rank, f"{group}_{version}_{kind}", obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("directory", type=Path, help="a directory holding a kustomization.yaml")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    args = parser.parse_args(argv)
    try:
        rendered = dump(build(args.directory))
    except KustomizationError as error:
        print(f"kustomize_lite: {error}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(rendered)
    else:
        args.output.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
