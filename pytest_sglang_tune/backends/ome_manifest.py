"""The InferenceService we create for one configuration, and the names and labels that find it again."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_sglang_tune.backends.base import DeploymentSpec
from pytest_sglang_tune.backends.ome_placement import Placement, affinity_terms, model_ready_label, union_tolerations
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
# OME pkg/constants/constants.go DeploymentMode: read from the InferenceService's annotations by the controller
# (controller.go: Serverless is refused without Knative) and from spec.engine.annotations for the engine itself
# (utils/deployment.go DetermineEngineDeploymentMode: it overrides the leader/worker heuristic)
ANN_DEPLOYMENT_MODE = "ome.io/deploymentMode"
DEPLOYMENT_MODES = ("RawDeployment", "Serverless")
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


def runtime_engine(runtime: Mapping[str, Any]) -> Mapping[str, Any]:
    engine = runtime.get("spec", {}).get("engineConfig")
    return engine if isinstance(engine, Mapping) else {}


def multi_node(runtime: Mapping[str, Any]) -> bool:
    """A runtime whose engine has a leader or worker: OME deploys it MultiNode and runs the leader's runner."""
    engine = runtime_engine(runtime)
    return engine.get("leader") is not None or engine.get("worker") is not None


def gpu_resources(runtime: Mapping[str, Any], gpus: int) -> dict[str, Any]:
    """The runtime's requests/limits with only the GPU count changed. OME merges the runtime's runner resources
    key by key anyway (``MergeEngineSpec``); they are copied so the manifest states the whole request. Setting
    any resources turns off OME's AcceleratorClass resource injection (``MergeEngineResources``)."""
    res = copy.deepcopy(dict(runtime_runner(runtime).get("resources") or {}))
    out: dict[str, Any] = {}
    for part in ("requests", "limits"):
        values = {str(k): str(v) for k, v in (res.get(part) or {}).items()}  # quantities travel as strings
        values[GPU] = str(gpus)
        out[part] = values
    return out


def runner_args(spec: DeploymentSpec) -> list[str]:
    return argv_with_name(spec.argv, spec.served_model_name)


def argv_with_name(argv: Sequence[Any], served_model_name: str) -> list[str]:
    args = [str(a) for a in argv]
    if "--served-model-name" not in args:
        args += ["--served-model-name", served_model_name]
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


def deployment_mode(settings: Mapping[str, Any], default: str | None = None) -> str:
    """The ``ome.io/deploymentMode`` we pin: the suite's ``deployment_mode``, else the backend's, else
    RawDeployment (a cluster whose default is Serverless without Knative would otherwise refuse every
    InferenceService with ``ServerlessModeRejected``)."""
    mode = str(settings.get("deployment_mode") or default or "RawDeployment")
    if mode not in DEPLOYMENT_MODES:
        raise SuiteError(f"{mode!r} is not a deployment mode we can tune with; allowed: {', '.join(DEPLOYMENT_MODES)} "
                         "(MultiNode runtimes are not supported yet)", field="backends.ome.deployment_mode")
    return mode


def node_selector(settings: Mapping[str, Any]) -> dict[str, str]:
    value = settings.get("node_selector")
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise SuiteError(f"must be a mapping label: value, got {value!r}", field="backends.ome.node_selector")
    return {str(k): str(v) for k, v in value.items()}


def suite_tolerations(settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    value = settings.get("tolerations")
    if not value:
        return []
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise SuiteError(f"must be a list of Kubernetes tolerations, got {value!r}", field="backends.ome.tolerations")
    return [dict(t) for t in value]


def engine_spec(runtime: Mapping[str, Any], settings: Mapping[str, Any], args: list[str], gpus: int,
                mode: str) -> dict[str, Any]:
    """``spec.engine``: our runner (name, args, resources, env), the pinned mode, selectors and tolerations."""
    runner: dict[str, Any] = {"name": str(runtime_runner(runtime).get("name") or "ome-container"), "args": args,
                              "resources": gpu_resources(runtime, gpus)}
    env = _env_list(settings.get("env"), "backends.ome.env")
    if env:
        runner["env"] = env
    engine: dict[str, Any] = {"minReplicas": 1, "maxReplicas": 1, "annotations": {ANN_DEPLOYMENT_MODE: mode},
                              "runner": runner}
    selector = node_selector(settings)
    if selector:
        engine["nodeSelector"] = selector
    own = suite_tolerations(settings)
    if own:  # a pod-spec list has no merge strategy: ours would replace the runtime's (and its GPU toleration)
        engine["tolerations"] = union_tolerations(runtime_engine(runtime).get("tolerations"), own)
    return engine


def build_inference_service(spec: DeploymentSpec, *, name: str, namespace: str, runtime: Mapping[str, Any],
                            owner: str, default_mode: str | None = None) -> dict[str, Any]:
    """One InferenceService: the suite's model and runtime, our flags appended as ``runner.args``."""
    settings = spec.settings
    mode = deployment_mode(settings, default_mode)
    meta = object_meta(name, namespace, spec.run_id, owner,
                       extra_labels={LABEL_SUITE: label_value(spec.suite), LABEL_CONFIG: label_value(spec.config_id)},
                       annotations={ANN_CONFIG_ID: spec.config_id, ANN_DEPLOYMENT_MODE: mode})
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"model": model_ref(settings), "runtime": runtime_ref(settings),
                 "engine": engine_spec(runtime, settings, runner_args(spec), spec.gpus, mode)},
    }


# --- export: the winner as a manifest to apply ------------------------------------------------------------------
EXPORT_SECRET = "sglang-tune-secrets"   # the Secret an exported manifest takes its secret values from


def _secrets_to_refs(args: list[str], env: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Secret flag values become ``$(VAR)`` (Kubernetes expands it in args) and secret env values a
    ``secretKeyRef`` into ``EXPORT_SECRET``: the manifest is complete, and holds no secret."""
    from pytest_sglang_tune.redact import SecretArg, is_secret_name, secret_args

    def ref(var: str) -> dict[str, Any]:
        return {"name": var, "valueFrom": {"secretKeyRef": {"name": EXPORT_SECRET, "key": var}}}

    split = secret_args(args)
    out_args = [f"{a.prefix}$({a.var})" if isinstance(a, SecretArg) else a for a in split]
    out_env = [ref(e["name"]) if is_secret_name(e["name"]) else e for e in env]
    named = {e["name"] for e in out_env}
    out_env += [ref(v) for v in dict.fromkeys(a.var for a in split if isinstance(a, SecretArg)) if v not in named]
    return out_args, out_env


def export_inference_service(*, suite: str, config_id: str, settings: Mapping[str, Any], served_model_name: str,
                             argv: Sequence[Any], gpus: int, runtime: Mapping[str, Any] | None = None,
                             namespace: str | None = None, name: str | None = None,
                             default_mode: str | None = None) -> dict[str, Any]:
    """The InferenceService that deploys this config, ready for ``kubectl apply``.

    The same inputs as a deploy (the suite's ``backends.ome`` settings, its served model name, the config's flags
    as argv, its GPU count) give the same ``spec`` a deploy sends, minus what belongs to one run: no run label,
    no owner annotation, a name stable across runs (``name`` overrides it). Secret flag and env values are taken
    from the Secret ``sglang-tune-secrets`` (one key per variable). ``runtime`` (the ServingRuntime object) supplies
    the runner's container name and resources; without it the name is ``ome-container`` and only GPUs are set
    (OME merges the runtime's other resources key by key).
    """
    rt = runtime or {}
    mode = deployment_mode(settings, default_mode)
    engine = engine_spec(rt, settings, argv_with_name(argv, served_model_name), gpus, mode)
    runner = engine["runner"]
    runner["args"], env = _secrets_to_refs(runner["args"], runner.pop("env", []))
    if env:
        runner["env"] = env
    meta: dict[str, Any] = {"name": name or isvc_name(suite, config_id, "export"),
                            "labels": {LABEL_SUITE: label_value(suite), LABEL_CONFIG: label_value(config_id)},
                            "annotations": {ANN_CONFIG_ID: config_id, ANN_DEPLOYMENT_MODE: mode}}
    ns = namespace or settings.get("namespace")
    if ns:
        meta["namespace"] = str(ns)
    return {"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": meta,
            "spec": {"model": model_ref(settings), "runtime": runtime_ref(settings), "engine": engine}}


def export_inference_service_yaml(**kwargs: Any) -> str:
    """``export_inference_service(**kwargs)`` as YAML text, with a header saying where it came from."""
    import yaml

    body = export_inference_service(**kwargs)
    head = [f"# pytest-sglang-tune: the best config of suite {kwargs.get('suite')!r} as an OME InferenceService",
            f"# config: {kwargs.get('config_id')}", "# apply with: kubectl apply -f <this file>"]
    if EXPORT_SECRET in str(body):
        head.append(f"# secret values come from Secret {EXPORT_SECRET!r} (one key per variable named below)")
    return "\n".join(head) + "\n" + str(yaml.safe_dump(body, sort_keys=False))


def pod_placement(runtime: Mapping[str, Any], settings: Mapping[str, Any], namespace: str,
                  model: Mapping[str, str] | None = None) -> Placement:
    """What the engine pod will carry that decides its node: the runtime's tolerations (or the union we send),
    the runtime's, its engine's and the suite's node selectors (OME ``MergeNodeSelector``), the runtime engine's
    required node affinity, and OME's model-ready node label."""
    engine = runtime_engine(runtime)
    own = suite_tolerations(settings)
    tolerations = union_tolerations(engine.get("tolerations"), own) if own else list(engine.get("tolerations") or ())
    selector = {**(runtime.get("spec", {}).get("nodeSelector") or {}), **(engine.get("nodeSelector") or {}),
                **node_selector(settings)}
    label, desc = None, ""
    if model is not None:
        label = model_ready_label(model["kind"], model["name"], namespace)
        desc = f"{model['kind']} {model['name']}"
    return Placement(tolerations=tuple(tolerations), node_selector={str(k): str(v) for k, v in selector.items()},
                     affinity=tuple(affinity_terms(engine.get("affinity"))), model_label=label, model=desc)
