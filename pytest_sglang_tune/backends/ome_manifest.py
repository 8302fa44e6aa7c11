"""The InferenceService we create for one configuration, and the names and labels that find it again."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_sglang_tune.backends.base import DeploymentSpec
from pytest_sglang_tune.errors import SuiteError

GROUP = "ome.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
PREFIX = "sglang-tune.io"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGED_BY = "pytest-sglang-tune"
LABEL_RUN = f"{PREFIX}/run"
LABEL_SUITE = f"{PREFIX}/suite"
LABEL_CONFIG = f"{PREFIX}/config"
ANN_OWNER = f"{PREFIX}/owner"          # host:pid of the pytest process that created the object
ANN_CONFIG_ID = f"{PREFIX}/config-id"  # the full canonical config id (labels are too short for it)
POD_LABEL = "ome.io/inferenceservice"
GPU = "nvidia.com/gpu"
# OME derives Deployment/Service names from the InferenceService name ("<name>-engine", "-router" ...) and the
# pods add a hash: stay well below the 63-character DNS-1123 label limit.
MAX_NAME = 47

_DNS = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]+")


def dns_label(text: str, limit: int) -> str:
    s = _DNS.sub("-", text.lower()).strip("-")
    s = re.sub(r"-{2,}", "-", s)[:limit].strip("-")
    return s or "x"


def label_value(text: str) -> str:
    """A valid label value (≤ 63, alphanumeric at both ends); long or odd values get a hash suffix."""
    s = _LABEL_VALUE.sub("-", text).strip("-._")
    if len(s) <= 63 and s == text:
        return s
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return (s[:54].strip("-._") + "-" + digest).strip("-._")


def isvc_name(suite: str, config_id: str, run_id: str) -> str:
    """``<suite>-<config>-<hash>``: readable, DNS-1123, ≤ 47 chars, unique per (run, config)."""
    digest = hashlib.sha256(f"{run_id}\0{suite}\0{config_id}".encode()).hexdigest()[:6]
    head = dns_label(suite, 20)
    room = MAX_NAME - len(head) - len(digest) - 2
    body = dns_label(config_id, room)
    name = f"{head}-{body}-{digest}" if body != "x" else f"{head}-{digest}"
    if not name[0].isalpha():
        name = "t" + name[: MAX_NAME - 1]
    return name


def run_labels(run_id: str) -> dict[str, str]:
    return {LABEL_MANAGED: MANAGED_BY, LABEL_RUN: label_value(run_id)}


def object_meta(name: str, namespace: str | None, run_id: str, owner: str,
                extra_labels: Mapping[str, str] | None = None,
                annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**run_labels(run_id), **(extra_labels or {})},
                            "annotations": {ANN_OWNER: owner, **(annotations or {})}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def runtime_runner(runtime: Mapping[str, Any]) -> Mapping[str, Any]:
    runner = runtime.get("spec", {}).get("engineConfig", {}).get("runner")
    return runner if isinstance(runner, Mapping) else {}


def gpu_resources(runtime: Mapping[str, Any], gpus: int) -> dict[str, Any]:
    """The runtime's requests/limits with only the GPU count changed (OME ignores the runtime's resources as soon
    as the InferenceService sets any, so CPU and memory are copied)."""
    res = copy.deepcopy(dict(runtime_runner(runtime).get("resources") or {}))
    out: dict[str, Any] = {}
    for part in ("requests", "limits"):
        values = {str(k): str(v) for k, v in (res.get(part) or {}).items()}  # quantities travel as strings
        values[GPU] = str(gpus)
        out[part] = values
    return out


def runner_args(spec: DeploymentSpec) -> list[str]:
    args = [str(a) for a in spec.argv]
    if "--served-model-name" not in args:
        args += ["--served-model-name", spec.served_model_name]
    return args


def _env_list(env: Any, where: str) -> list[dict[str, str]]:
    if env is None:
        return []
    if not isinstance(env, Mapping):
        raise SuiteError(f"must be a mapping NAME: value, got {env!r}", field=where)
    return [{"name": str(k), "value": str(v)} for k, v in env.items()]


def _ref(value: Any, field: str, kinds: Sequence[str]) -> dict[str, str]:
    """``runtime: name`` or ``runtime: {name, kind}``."""
    if isinstance(value, str) and value:
        return {"name": value, "kind": kinds[0]}
    if isinstance(value, Mapping) and value.get("name"):
        kind = str(value.get("kind") or kinds[0])
        if kind not in kinds:
            raise SuiteError(f"kind {kind!r} is not one of {', '.join(kinds)}", field=f"backends.ome.{field}")
        return {"name": str(value["name"]), "kind": kind}
    raise SuiteError(f"must name the {kinds[0]} (a string or {{name, kind}}), got {value!r}",
                     field=f"backends.ome.{field}")


def runtime_ref(settings: Mapping[str, Any]) -> dict[str, str]:
    return _ref(settings.get("runtime"), "runtime", ("ClusterServingRuntime", "ServingRuntime"))


def model_ref(settings: Mapping[str, Any]) -> dict[str, str]:
    return _ref(settings.get("model"), "model", ("ClusterBaseModel", "BaseModel"))


def build_inference_service(spec: DeploymentSpec, *, name: str, namespace: str, runtime: Mapping[str, Any],
                            owner: str) -> dict[str, Any]:
    """One InferenceService: the suite's model and runtime, our flags appended as ``runner.args``."""
    settings = spec.settings
    runner: dict[str, Any] = {
        "name": str(runtime_runner(runtime).get("name") or "ome-container"),
        "args": runner_args(spec),
        "resources": gpu_resources(runtime, spec.gpus),
    }
    env = _env_list(settings.get("env"), "backends.ome.env")
    if env:
        runner["env"] = env
    engine: dict[str, Any] = {"minReplicas": 1, "maxReplicas": 1, "runner": runner}
    if settings.get("node_selector"):
        if not isinstance(settings["node_selector"], Mapping):
            raise SuiteError(f"must be a mapping label: value, got {settings['node_selector']!r}",
                             field="backends.ome.node_selector")
        engine["nodeSelector"] = {str(k): str(v) for k, v in settings["node_selector"].items()}
    if settings.get("tolerations"):
        if not isinstance(settings["tolerations"], list):
            raise SuiteError(f"must be a list of Kubernetes tolerations, got {settings['tolerations']!r}",
                             field="backends.ome.tolerations")
        engine["tolerations"] = [dict(t) for t in settings["tolerations"]]
    meta = object_meta(name, namespace, spec.run_id, owner,
                       extra_labels={LABEL_SUITE: label_value(spec.suite), LABEL_CONFIG: label_value(spec.config_id)},
                       annotations={ANN_CONFIG_ID: spec.config_id})
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"model": model_ref(settings), "runtime": runtime_ref(settings), "engine": engine},
    }
