"""Validate manifests against a CRD's ``openAPIV3Schema`` with unknown fields refused.

CRD schemas never say ``additionalProperties: false``; the API server prunes unknown fields silently, so a typo
(``spec.engine.runner.arg``) would vanish instead of failing. Here every object schema with ``properties`` is
closed, except under ``x-kubernetes-preserve-unknown-fields``. ``jsonschema`` is imported lazily.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pytest_sglang_tune.errors import DeployError

KUBE_INT_OR_STRING = "x-kubernetes-int-or-string"


def closed_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where objects accept only their declared properties."""
    out = copy.deepcopy(dict(schema))
    _close(out)
    return out


def _close(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item)
        return
    if not isinstance(node, dict):
        return
    if node.get(KUBE_INT_OR_STRING):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return  # open on purpose (e.g. free-form config): leave this subtree as it is
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            for sub in value.values():
                _close(sub)
        elif key in ("items", "additionalProperties", "not"):
            _close(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            _close(value)


def crd_schema(crd: Mapping[str, Any], version: str = "v1beta1") -> dict[str, Any]:
    for v in crd.get("spec", {}).get("versions", []):
        if v.get("name") == version:
            schema = v.get("schema", {}).get("openAPIV3Schema")
            if isinstance(schema, dict):
                return schema
    raise DeployError(f"CRD {crd.get('metadata', {}).get('name')!r} has no openAPIV3Schema for {version}")


def schema_errors(manifest: Mapping[str, Any], crd: Mapping[str, Any], version: str = "v1beta1") -> list[str]:
    """Every violation of the closed schema, as ``path: message`` strings (empty when valid)."""
    import jsonschema

    validator = jsonschema.Draft7Validator(closed_schema(crd_schema(crd, version)))
    errors = []
    for err in sorted(validator.iter_errors(dict(manifest)), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path) or "(root)"
        errors.append(f"{path}: {err.message}")
    return errors


def validate_manifest(manifest: Mapping[str, Any], crd: Mapping[str, Any], version: str = "v1beta1") -> None:
    """Raise ``DeployError`` naming each unknown or invalid field of ``manifest``."""
    errors = schema_errors(manifest, crd, version)
    if errors:
        kind = manifest.get("kind", "object")
        raise DeployError(f"the generated {kind} does not match the cluster's CRD: " + "; ".join(errors[:10]))
