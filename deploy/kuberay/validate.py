"""Validate the Kubernetes manifests in deploy/kuberay/ offline, as the API server would.

    python deploy/kuberay/validate.py                 # every rendered manifest
    python deploy/kuberay/validate.py other.yaml ...  # any manifest files

- A RayService is checked against KubeRay's own CRD (schemas/ray.io_rayservices.yaml,
  v1.5.1): its `openAPIV3Schema` with `jsonschema`, every field the API server would prune
  as unknown (structural pruning drops them silently; `kubectl apply --validate=strict`
  refuses them), and duplicate keys in `x-kubernetes-list-type: map|set` lists.
- Built-in kinds (NetworkPolicy, PersistentVolumeClaim, and Redis's StatefulSet and
  Service) are checked against Kubernetes' own schemas, strictly (unknown fields are
  errors), with `kubernetes-validate`, which bundles them for each Kubernetes minor version.

Left to the API server: CEL rules (`x-kubernetes-validations`), `format`, defaulting and
the root `metadata`.
"""

from __future__ import annotations

import copy
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import yaml

HERE = Path(__file__).resolve().parent
CRD = HERE / "schemas" / "ray.io_rayservices.yaml"
# Also the order to apply, after the Secrets asr-redis and asr-callbacks (docs/operations.md).
MANIFESTS = ("pvc.yaml", "networkpolicy.yaml", "redis.yaml", "rayservice.yaml")
# The oldest Kubernetes minor that KubeRay 1.5 supports and kubernetes-validate bundles.
KUBERNETES_VERSION = "1.29"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Keywords whose value maps names to schemas, is a schema, or is a list of schemas.
_SCHEMA_MAPS = ("properties", "patternProperties")
_SCHEMA_VALUES = ("items", "additionalProperties", "not")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


def problems(document: dict) -> list[str]:
    """What is wrong with one manifest document; empty when the API server would take it
    as written."""
    group, _, version = document.get("apiVersion", "").rpartition("/")
    schema = crd_schemas().get((group, version, document.get("kind")))
    if schema is None:
        return _builtin_problems(document)
    validator = _validator(group, version, document.get("kind"))
    found = [f"{_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    found += [f"{path}: unknown field, the API server would prune it"
              for path in pruned_fields(document, schema)]
    found += list(duplicate_list_keys(document, schema))
    return found


@lru_cache(maxsize=1)
def crd_schemas() -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> openAPIV3Schema, for every version the CRD serves."""
    crd = yaml.load(CRD.read_text(encoding="utf-8"), Loader=_Loader)
    spec = crd["spec"]
    return {(spec["group"], v["name"], spec["names"]["kind"]): v["schema"]["openAPIV3Schema"]
            for v in spec["versions"] if v.get("served", True)}


@lru_cache(maxsize=None)
def _validator(group: str, version: str, kind: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_json_schema(crd_schemas()[(group, version, kind)]))


def _builtin_problems(document: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{_path(exc.path)}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema: {exc.message}"]
    return []


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 (a CRD's structural schema) as JSON Schema: `nullable` becomes a "null"
    type, int-or-string an anyOf. Property names are never read as keywords."""
    if not isinstance(node, dict):
        return node
    out: dict = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _json_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            out[key] = _json_schema(value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_json_schema(sub) for sub in value]
        else:
            out[key] = copy.deepcopy(value)
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def pruned_fields(value: Any, schema: dict | None, path: str = "",
                  root: bool = True) -> Iterator[str]:
    """Paths of the fields structural pruning would drop: keys a schema does not declare,
    where it neither allows other keys nor preserves unknown fields."""
    if schema is None or value is None:
        return
    if isinstance(value, dict):
        declared = schema.get("properties") or {}
        others = schema.get("additionalProperties")
        embedded = root or bool(schema.get("x-kubernetes-embedded-resource"))
        for key, sub in value.items():
            where = f"{path}.{key}" if path else key
            if embedded and key in ("apiVersion", "kind", "metadata") and key not in declared:
                continue  # kept in every (embedded) object
            if root and key == "metadata":
                continue  # the object's own ObjectMeta: the API server's, not the CRD's
            if key in declared:
                yield from pruned_fields(sub, declared[key], where, root=False)
            elif isinstance(others, dict):
                yield from pruned_fields(sub, others, where, root=False)
            elif others is not True and not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield where
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from pruned_fields(item, schema["items"], f"{path}[{index}]", root=False)


def duplicate_list_keys(value: Any, schema: dict | None, path: str = "") -> Iterator[str]:
    """Two entries with the same key in a list the API server keys (containers by name,
    ports by port and protocol): it would refuse the object."""
    if schema is None or value is None:
        return
    if isinstance(value, dict):
        declared = schema.get("properties") or {}
        others = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = declared.get(key) or (others if isinstance(others, dict) else None)
            yield from duplicate_list_keys(sub, sub_schema, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else None
        list_type = schema.get("x-kubernetes-list-type")
        item_props = (items or {}).get("properties") or {}
        seen: dict = {}
        for index, item in enumerate(value):
            key = None
            if list_type == "map" and isinstance(item, dict):
                # The API server fills defaults (a port's protocol: TCP) before comparing.
                key = tuple(item.get(k, (item_props.get(k) or {}).get("default"))
                            for k in schema.get("x-kubernetes-list-map-keys") or [])
            elif list_type == "set":
                key = yaml.safe_dump(item, sort_keys=True)
            if key is not None and key in seen:
                yield f"{path}[{index}]: duplicate of [{seen[key]}] (key {key!r})"
            elif key is not None:
                seen[key] = index
            yield from duplicate_list_keys(item, items, f"{path}[{index}]")


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


def main(argv: list[str] | None = None) -> int:
    files = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    files = files or [HERE / name for name in MANIFESTS]
    failed = False
    for file in files:
        for document in yaml.load_all(file.read_text(encoding="utf-8"), Loader=_Loader):
            if not document:
                continue
            found = problems(document)
            failed = failed or bool(found)
            name = f"{file.name}: {document.get('kind')}/{document['metadata'].get('name')}"
            print(f"{'FAIL' if found else 'ok  '} {name}")
            for problem in found:
                print(f"     {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
