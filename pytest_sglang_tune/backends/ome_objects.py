"""Cluster objects around the InferenceServices: namespace, runtime and model (found, or created on request and
deleted again), the InferenceService CRD (to validate our manifests), and the opt-in sweep of dead runs."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_sglang_tune.backends.ome_manifest import (
    ANN_OWNER,
    GROUP,
    LABEL_MANAGED,
    MANAGED_BY,
    VERSION,
    object_meta,
)
from pytest_sglang_tune.errors import DeployError, SuiteError

PLURALS = {"ClusterServingRuntime": "clusterservingruntimes", "ServingRuntime": "servingruntimes",
           "ClusterBaseModel": "clusterbasemodels", "BaseModel": "basemodels",
           "InferenceService": "inferenceservices"}
CLUSTER_SCOPED = {"ClusterServingRuntime", "ClusterBaseModel"}


def api_exception() -> Any:
    """The client's ApiException class (typed Any: its ``status``/``body`` are read below)."""
    from kubernetes.client.exceptions import ApiException

    return ApiException


class Objects:
    """Get/create/delete ome.io objects; remembers what it created so ``close`` removes exactly that."""

    def __init__(self, api_client: Any, run_id: str, owner: str) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.custom: Any = client.CustomObjectsApi(api_client)
        self.core: Any = client.CoreV1Api(api_client)
        self.run_id = run_id
        self.owner = owner
        self.created: list[tuple[str, str, str | None]] = []   # (kind, name, namespace)
        self._crd: dict[str, Any] | bool | None = False

    # --- ome.io objects ------------------------------------------------------------------------------------
    def get(self, kind: str, name: str, namespace: str | None) -> dict[str, Any] | None:
        try:
            if kind in CLUSTER_SCOPED:
                obj = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURALS[kind], name)
            else:
                obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)
        except api_exception() as exc:
            if getattr(exc, "status", None) == 404:
                return None
            from pytest_sglang_tune.backends.ome_preflight import RBAC_HINT, status_message

            hint = f"; grant get on {PLURALS[kind]}.{GROUP} ({RBAC_HINT})" if exc.status == 403 else ""
            raise DeployError(f"cannot read {kind} {name!r}: HTTP {getattr(exc, 'status', '?')}: "
                              f"{status_message(exc)}{hint}") from exc
        return obj if isinstance(obj, dict) else None

    def names(self, kind: str, namespace: str | None) -> list[str]:
        try:
            if kind in CLUSTER_SCOPED:
                out = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURALS[kind])
            else:
                out = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind])
        except api_exception():
            return []
        return sorted(i["metadata"]["name"] for i in out.get("items", []))

    def create(self, kind: str, body: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        if kind in CLUSTER_SCOPED:
            out = self.custom.create_cluster_custom_object(GROUP, VERSION, PLURALS[kind], body)
        else:
            out = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], body)
        return dict(out)

    def delete(self, kind: str, name: str, namespace: str | None) -> None:
        try:
            if kind in CLUSTER_SCOPED:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURALS[kind], name)
            else:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name,
                                                            propagation_policy="Foreground")
        except api_exception() as exc:
            if getattr(exc, "status", None) != 404:
                raise

    def ensure(self, ref: Mapping[str, str], namespace: str, create: Any, what: str) -> dict[str, Any]:
        """The runtime/model the suite names; created from ``create`` (a mapping or a YAML file) if absent."""
        kind, name = ref["kind"], ref["name"]
        ns = None if kind in CLUSTER_SCOPED else namespace
        found = self.get(kind, name, ns)
        if found is not None:
            return found
        if not create:
            others = self.names(kind, ns)
            where = "in the cluster" if ns is None else f"in namespace {ns!r}"
            raise DeployError(f"{kind} {name!r} ({what}) not found {where}; existing: "
                              f"{', '.join(others) or 'none'}. Install it, or set backends.ome.create_{what} "
                              "to a manifest so the plugin creates (and later deletes) it")
        body = load_manifest(create, f"backends.ome.create_{what}")
        body.setdefault("apiVersion", f"{GROUP}/{VERSION}")
        body.setdefault("kind", kind)
        if body["kind"] != kind:
            raise SuiteError(f"the manifest's kind {body['kind']!r} differs from the suite's {kind}",
                             field=f"backends.ome.create_{what}")
        meta = object_meta(name, ns, self.run_id, self.owner)
        given = body.get("metadata") or {}
        meta["labels"].update(given.get("labels") or {})
        meta["annotations"].update(given.get("annotations") or {})
        body["metadata"] = meta
        try:
            out = self.create(kind, body, ns)
        except api_exception() as exc:
            if getattr(exc, "status", None) == 409:   # another worker created it first
                return self.get(kind, name, ns) or body
            raise DeployError(f"cannot create {kind} {name!r}: HTTP {getattr(exc, 'status', '?')}: "
                              f"{getattr(exc, 'body', '')}"[:600]) from exc
        self.created.append((kind, name, ns))
        return out

    # --- namespace -----------------------------------------------------------------------------------------
    def ensure_namespace(self, namespace: str, create: bool) -> None:
        try:
            self.core.read_namespace(namespace)
            return
        except api_exception() as exc:
            if getattr(exc, "status", None) == 403:
                return  # a namespaced Role cannot read namespaces: assume it exists
            if getattr(exc, "status", None) != 404:
                raise DeployError(f"cannot read namespace {namespace!r}: HTTP {exc.status}") from exc
        if not create:
            raise DeployError(f"namespace {namespace!r} does not exist; create it, choose another with "
                              "--sglang-namespace / backends.ome.namespace, or set backends.ome.create_namespace")
        from kubernetes import client

        body = client.V1Namespace(metadata=client.V1ObjectMeta(**_meta_kwargs(
            object_meta(namespace, None, self.run_id, self.owner))))
        try:
            self.core.create_namespace(body)
        except api_exception() as exc:
            if getattr(exc, "status", None) != 409:
                raise
            return
        self.created.append(("Namespace", namespace, None))

    # --- the CRD, to validate what we send ------------------------------------------------------------------
    def isvc_crd(self) -> dict[str, Any] | None:
        if self._crd is False:
            from kubernetes import client

            try:
                import json

                ext: Any = client.ApiextensionsV1Api(self.api_client)
                raw = ext.read_custom_resource_definition(
                    f"inferenceservices.{GROUP}", _preload_content=False, _request_timeout=(3, 10))
                self._crd = json.loads(raw.data)
            except Exception:  # no RBAC to read CRDs: the API server's own validation still applies
                self._crd = None
        return self._crd if isinstance(self._crd, dict) else None

    def close(self) -> list[str]:
        """Delete what ``ensure``/``ensure_namespace`` created, newest first; return what was removed."""
        removed = []
        for kind, name, ns in reversed(self.created):
            try:
                if kind == "Namespace":
                    self.core.delete_namespace(name)
                else:
                    self.delete(kind, name, ns)
                removed.append(f"{kind} {name}")
            except Exception:
                pass
        self.created.clear()
        return removed


def _meta_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": meta["name"], "labels": meta.get("labels"), "annotations": meta.get("annotations")}


def load_manifest(value: Any, field: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        body = {str(k): v for k, v in value.items()}
        return body if "spec" in body else {"spec": body}
    if isinstance(value, str):
        import yaml

        path = Path(value)
        if not path.is_file():
            raise SuiteError(f"manifest file {value!r} does not exist", field=field)
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise SuiteError(f"{value!r} does not hold one YAML mapping", field=field)
        return data
    raise SuiteError(f"must be a manifest (mapping) or a YAML file path, got {value!r}", field=field)


def owner_alive(owner: str) -> bool | None:
    """True/False for an owner ``host:pid`` on this host; None when it runs elsewhere (cannot tell)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(objects: Objects, namespace: str) -> list[str]:
    """Delete InferenceServices carrying our label whose owner process is gone; return a line per decision."""
    notes: list[str] = []
    try:
        items = objects.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS["InferenceService"],
            label_selector=f"{LABEL_MANAGED}={MANAGED_BY}").get("items", [])
    except api_exception() as exc:
        return [f"sweep: cannot list InferenceServices in {namespace!r}: HTTP {getattr(exc, 'status', '?')}"]
    kept = 0
    for item in items:
        meta = item.get("metadata", {})
        owner = (meta.get("annotations") or {}).get(ANN_OWNER, "")
        if owner_alive(owner) is False:
            objects.delete("InferenceService", meta["name"], namespace)
            notes.append(f"sweep: removed InferenceService {namespace}/{meta['name']} (owner {owner} is gone)")
        else:
            kept += 1
    if kept:
        notes.append(f"sweep: kept {kept} InferenceService(s) of ours whose owner is alive or on another host")
    if not items:
        notes.append(f"sweep: nothing of ours in namespace {namespace!r}")
    return notes
