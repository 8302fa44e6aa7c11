"""CRD validation as the API server does it for custom resources, for the fake API server.

Written from Kubernetes' apiextensions-apiserver (``pkg/apiserver/schema/pruning/algorithm.go``: fields a
structural schema does not declare are pruned, except under ``x-kubernetes-preserve-unknown-fields``;
``customresource_handler.go``/``pkg/registry/customresource``: the ``fieldValidation`` query parameter decides what
a pruned field means) and the API reference for ``fieldValidation``:

- ``Ignore``: unknown fields are dropped silently;
- ``Warn`` (the default when the parameter is absent): dropped, and each reported in a ``Warning: 299 - "unknown
  field \\"spec.x\\""`` response header;
- ``Strict``: the request fails with ``400 BadRequest``: ``<Kind> in version "v1beta1" cannot be handled as a
  <Kind>: strict decoding error: unknown field "spec.x"``.

Then the object is validated against the schema (types, enums, required): failures are ``422 Invalid``
(``<Kind>.<group> "<name>" is invalid: <path>: ...``). It does not import the plugin's own schema code.
"""

from __future__ import annotations

import copy
from typing import Any

MODES = ("Ignore", "Warn", "Strict")


def version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return dict(v["schema"]["openAPIV3Schema"])
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def prune(value: Any, schema: dict[str, Any], path: str, pruned: list[str], root: bool = False) -> Any:
    """``value`` without the fields ``schema`` does not declare; their paths are appended to ``pruned``."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out = {}
        for k, v in value.items():
            where = f"{path}.{k}" if path else k
            if root and k in ("apiVersion", "kind"):
                out[k] = v
            elif root and k == "metadata":
                out[k] = _prune_metadata(v, pruned)
            elif props is not None and k in props:
                out[k] = prune(v, props[k], where, pruned)
            elif isinstance(extra, dict):
                out[k] = prune(v, extra, where, pruned)
            else:
                pruned.append(where)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"], f"{path}[{i}]", pruned) for i, v in enumerate(value)]
    return value


OBJECT_META = ("name", "generateName", "namespace", "labels", "annotations", "uid", "resourceVersion",
               "generation", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
               "ownerReferences", "finalizers", "managedFields", "selfLink")


def _prune_metadata(meta: Any, pruned: list[str]) -> Any:
    if not isinstance(meta, dict):
        return meta
    out = {}
    for k, v in meta.items():
        if k in OBJECT_META:
            out[k] = v
        else:
            pruned.append(f"metadata.{k}")
    return out


def _jsonschema(node: Any) -> Any:
    """The structural schema in jsonschema's terms: int-or-string, nullable."""
    if isinstance(node, list):
        return [_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _jsonschema(v) for k, v in node.items()}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def invalid(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Schema violations as ``path: message``."""
    import jsonschema

    body = {k: v for k, v in obj.items() if k != "metadata"}
    root = copy.deepcopy(schema)
    root.get("properties", {}).pop("metadata", None)
    validator = jsonschema.Draft7Validator(_jsonschema(root))
    out = []
    for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "<root>"
        out.append(f"{where}: Invalid value: {err.message}")
    return out


def admit(obj: dict[str, Any], crd: dict[str, Any], mode: str) -> tuple[int, str, dict[str, Any], list[str]]:
    """``(status, message, object to store, warnings)``: status 0 when admitted."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    version = str(obj.get("apiVersion", "")).split("/")[-1]
    try:
        schema = version_schema(crd, version)
    except KeyError:
        return 400, f'no kind "{kind}" is registered for version "{obj.get("apiVersion")}"', obj, []
    pruned: list[str] = []
    kept = prune(obj, schema, "", pruned, root=True)
    unknown = [f'unknown field "{p}"' for p in pruned]
    if unknown and mode == "Strict":
        return 400, (f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: '
                     + ", ".join(unknown)), obj, []
    errors = invalid(kept, schema)
    if errors:
        name = (obj.get("metadata") or {}).get("name", "")
        return 422, f'{kind}.{group} "{name}" is invalid: ' + "; ".join(errors[:10]), obj, []
    return 0, "", kept, unknown if mode == "Warn" else []
