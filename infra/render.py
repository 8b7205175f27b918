"""Render a kustomize directory without the kustomize binary, for the subset of kustomize this repo uses.

Supported kustomization fields: resources (files and kustomize directories), namespace, patches (strategic
merge of maps by apiVersion/kind/name, or JSON 6902 operations with a target), secretGenerator and
configMapGenerator with literals, generatorOptions.disableNameSuffixHash. Anything else raises, so that
a render never silently differs from `kustomize build`. The tests in tests/infra validate what it renders.

Usage: python infra/render.py infra/overlays/local > local.yaml
"""

from __future__ import annotations

import base64
import copy
import sys
from pathlib import Path

import yaml

SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches", "secretGenerator",
                    "configMapGenerator", "generatorOptions"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                        "PersistentVolume", "StorageClass", "ClusterSecretStore", "PriorityClass"}


class RenderError(ValueError):
    """The kustomization uses something this renderer does not support, or a patch matches nothing."""


def render(directory: str | Path) -> list[dict]:
    """Objects that `kustomize build DIRECTORY` would output (for the supported subset)."""
    directory = Path(directory)
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unsupported = set(spec) - SUPPORTED_FIELDS
    if unsupported:
        raise RenderError(f"{path}: unsupported kustomization fields {sorted(unsupported)}")
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        target = directory / entry
        objects += render(target) if target.is_dir() else load_documents(target)
    hashless = (spec.get("generatorOptions") or {}).get("disableNameSuffixHash", False)
    if (spec.get("secretGenerator") or spec.get("configMapGenerator")) and not hashless:
        raise RenderError(f"{path}: generated names with a hash suffix are not supported; "
                          "set generatorOptions.disableNameSuffixHash: true")
    objects += [_generate("Secret", g, path) for g in spec.get("secretGenerator", [])]
    objects += [_generate("ConfigMap", g, path) for g in spec.get("configMapGenerator", [])]
    for patch in spec.get("patches", []):
        _apply_patch(objects, patch, directory)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj["metadata"]["namespace"] = spec["namespace"]
    ids = [object_id(obj) for obj in objects]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RenderError(f"{directory}: objects defined more than once: {duplicates}")
    return objects


def load_documents(path: Path) -> list[dict]:
    """The non-empty YAML documents of a file."""
    if not path.is_file():
        raise RenderError(f"{path}: resource file not found")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def object_id(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def _generate(kind: str, generator: dict, path: Path) -> dict:
    unsupported = set(generator) - {"name", "literals", "type"}
    if unsupported:
        raise RenderError(f"{path}: {kind} generator {generator.get('name')}: unsupported {sorted(unsupported)}")
    pairs = dict(literal.split("=", 1) for literal in generator.get("literals", []))
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}}
    if kind == "Secret":
        obj["type"] = generator.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in pairs.items()}
    else:
        obj["data"] = pairs
    return obj


def _apply_patch(objects: list[dict], patch: dict, directory: Path) -> None:
    if set(patch) - {"path", "patch", "target"}:
        raise RenderError(f"{directory}: unsupported patch fields {sorted(set(patch))}")
    body = load_documents(directory / patch["path"]) if "path" in patch else list(yaml.safe_load_all(patch["patch"]))
    label = patch.get("path", "inline patch")
    if "target" in patch:
        matches = [obj for obj in objects if _matches(obj, patch["target"])]
        operations = body[0] if len(body) == 1 and isinstance(body[0], list) else None
        if not matches:
            raise RenderError(f"{directory}: {label}: target {patch['target']} matches no object")
        for obj in matches:
            if operations is not None:
                _json6902(obj, operations, label)
            else:
                for doc in body:
                    _merge(obj, doc, label)
        return
    for doc in body:
        matches = [obj for obj in objects if obj["kind"] == doc["kind"] and obj["apiVersion"] == doc["apiVersion"]
                   and obj["metadata"]["name"] == doc["metadata"]["name"]]
        if len(matches) != 1:
            raise RenderError(f"{directory}: {label}: {doc['kind']}/{doc['metadata']['name']} matches "
                              f"{len(matches)} objects, expected exactly 1")
        _merge(matches[0], doc, label)


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    facts = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"],
             "namespace": obj["metadata"].get("namespace", "")}
    unsupported = set(target) - set(facts)
    if unsupported:
        raise RenderError(f"patch target fields {sorted(unsupported)} are not supported")
    return all(facts[key] == value for key, value in target.items())


def _merge(obj: dict, patch: dict, label: str) -> None:
    """Strategic merge restricted to maps: merging lists needs per-type merge keys, so use JSON 6902."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(obj.get(key), dict):
            _merge(obj[key], value, label)
        elif isinstance(value, list):
            raise RenderError(f"{label}: strategic merge of the list {key!r} is not supported; "
                              "use a JSON 6902 patch with a target")
        elif value is None:
            obj.pop(key, None)
        else:
            obj[key] = copy.deepcopy(value)


def _json6902(obj: dict, operations: list[dict], label: str) -> None:
    for operation in operations:
        op, pointer = operation.get("op"), operation.get("path", "")
        if op not in ("add", "replace", "remove"):
            raise RenderError(f"{label}: JSON 6902 operation {op!r} is not supported (add, replace, remove)")
        keys = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
        if not keys:
            raise RenderError(f"{label}: empty JSON pointer")
        parent = obj
        try:
            for key in keys[:-1]:
                parent = parent[int(key)] if isinstance(parent, list) else parent[key]
            last = keys[-1]
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op == "add":
                    parent.insert(index, copy.deepcopy(operation["value"]))
                elif op == "replace":
                    parent[index] = copy.deepcopy(operation["value"])
                else:
                    del parent[index]
            elif op == "add" or (op == "replace" and last in parent):
                parent[last] = copy.deepcopy(operation["value"])
            elif op == "remove" and last in parent:
                del parent[last]
            else:
                raise KeyError(last)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise RenderError(f"{label}: {op} {pointer}: no such path in {object_id(obj)} ({exc})") from exc


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python infra/render.py KUSTOMIZE_DIRECTORY")
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)
