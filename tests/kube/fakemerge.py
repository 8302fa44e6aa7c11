"""How OME turns an InferenceService plus its runtime into the engine pod, written for the fake controller from
OME's source at the CRDs' commit (github.com/sgl-project/ome @ 17b77edad23bae262e0c9adb7f12039397a5d33d) and
Kubernetes' strategic merge patch. It never imports the plugin's own merge (``ome_merge``): the two are written
apart and pinned by the same golden cases (tests/kube/test_ome_merge.py), so they can disagree.

Sources (paths in sgl-project/ome):
- ``pkg/controller/v1beta1/inferenceservice/utils/merging.go``: ``MergeEngineSpec`` runs
  ``strategicpatch.StrategicMergePatch(json(runtime engine), json(isvc engine), EngineSpec{})``;
  ``MergeRuntimeContainers`` strategic-merges a pod-spec container with the runner and then sets
  ``Args = runtime container args + runner args``, keeping the runtime container's name when the merge blanked it.
- ``pkg/apis/ome/v1beta1/podspec.go`` and ``inference_service.go``: which lists merge by which key (struct tags
  ``patchStrategy:"merge" patchMergeKey:...``); ``tolerations`` has no tag, so a list in the isvc replaces the
  runtime's. ``EngineSpec`` inlines ``PodSpec`` and ``ComponentExtensionSpec`` and has ``runner``, ``leader``,
  ``worker``; every field is ``omitempty`` except a container's ``name``.
- ``.../utils/deployment.go`` ``DetermineEngineDeploymentMode``: the engine's own ``ome.io/deploymentMode``
  annotation, else leader or worker ⇒ MultiNode, else minReplicas 0 ⇒ Serverless, else RawDeployment.
- ``.../components/engine.go`` ``reconcilePodSpec``: MultiNode takes the leader's pod spec and runner (the
  engine's own runner and its args are not used); ``.../reconcilers/common/podspec_reconciler.go``
  ``resolveContainer``: the runner merges into the pod-spec container of the same name, or a new one.
- Kubernetes ``staging/src/k8s.io/apimachinery/pkg/util/strategicpatch/patch.go`` (``mergeSlice``,
  ``normalizeElementOrder``, ``mergeSortedSlice``): items named in the patch come in the patch's order; items only in
  the original are slotted back where the original had them relative to patched items.
"""

from __future__ import annotations

import copy
from typing import Any

DEPLOYMENT_MODE = "ome.io/deploymentMode"           # pkg/constants/constants.go: OMEAPIGroupName + "/deploymentMode"
VALID_MODES = ("Serverless", "RawDeployment", "MultiNodeRayVLLM", "MultiNode", "VirtualDeployment")

# struct type -> {list field: merge key}; fields not listed are atomic (a patch replaces them)
_POD_LISTS = {"volumes": "name", "initContainers": "name", "containers": "name", "ephemeralContainers": "name",
              "imagePullSecrets": "name", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
              "schedulingGates": "name", "resourceClaims": "name"}
_CONTAINER_LISTS = {"ports": "containerPort", "env": "name", "volumeMounts": "mountPath",
                    "volumeDevices": "devicePath"}
LIST_KEYS: dict[str, dict[str, str]] = {"EngineSpec": _POD_LISTS, "LeaderSpec": _POD_LISTS,
                                        "WorkerSpec": _POD_LISTS, "PodSpec": _POD_LISTS,
                                        "Container": _CONTAINER_LISTS}
# struct type -> {field: struct type of its value}
FIELD_TYPES: dict[str, dict[str, str]] = {
    "EngineSpec": {"runner": "Container", "leader": "LeaderSpec", "worker": "WorkerSpec",
                   "containers[]": "Container", "initContainers[]": "Container"},
    "LeaderSpec": {"runner": "Container", "containers[]": "Container", "initContainers[]": "Container"},
    "WorkerSpec": {"runner": "Container", "containers[]": "Container", "initContainers[]": "Container"},
    "PodSpec": {"containers[]": "Container", "initContainers[]": "Container"},
    "Container": {},
}


# fields whose Go type is a map (omitempty drops an empty one); every other object is a struct, sent as {} when
# empty (a non-nil pointer, e.g. ``emptyDir: &EmptyDirVolumeSource{}``)
GO_MAPS = ("nodeSelector", "labels", "annotations", "requests", "limits", "overhead", "config")


def go_json(value: Any, struct: str | None = None) -> Any:
    """What Go's ``json.Marshal`` of the typed struct sends: ``omitempty`` drops nil, empty lists and empty maps;
    a container always carries ``name`` (its tag has no omitempty)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            sub = FIELD_TYPES.get(struct or "", {}).get(k)
            if isinstance(v, list):
                sub = FIELD_TYPES.get(struct or "", {}).get(k + "[]")
            v = go_json(v, sub)
            if v is None or v == [] or (v == {} and k in GO_MAPS):   # a pointer to an empty struct stays {}
                continue
            out[k] = v
        if struct == "Container":
            out.setdefault("name", "")
        return out
    if isinstance(value, list):
        return [go_json(v, struct) for v in value]
    return copy.deepcopy(value)


def _position(items: list[Any], key: str, value: Any) -> int:
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get(key) == value:
            return i
    return -1


def _merge_keyed_list(original: list[Any], patch: list[Any], key: str, struct: str | None) -> list[Any]:
    merged_patch = []
    for item in patch:
        i = _position(original, key, item.get(key))
        merged_patch.append(patch_object(original[i], item, struct) if i >= 0 else copy.deepcopy(item))
    patched_keys = {item.get(key) for item in patch}
    server_only = [copy.deepcopy(o) for o in original if o.get(key) not in patched_keys]
    # mergeSortedSlice(left=server-only, right=patch items, order=original)
    out: list[Any] = []
    i = j = 0
    while i < len(server_only) or j < len(merged_patch):
        if i >= len(server_only):
            out.append(merged_patch[j])
            j += 1
        elif j >= len(merged_patch):
            out.append(server_only[i])
            i += 1
        else:
            li = _position(original, key, server_only[i].get(key))
            ri = _position(original, key, merged_patch[j].get(key))
            if li >= 0 and ri >= 0 and li < ri:
                out.append(server_only[i])
                i += 1
            else:
                out.append(merged_patch[j])
                j += 1
    return out


def patch_object(original: dict[str, Any], patch: dict[str, Any], struct: str | None) -> dict[str, Any]:
    """Strategic merge of ``patch`` into ``original`` (both plain JSON) for the Go type ``struct``."""
    out = copy.deepcopy(original)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
            continue
        cur = out.get(k)
        if isinstance(v, dict) and isinstance(cur, dict):
            out[k] = patch_object(cur, v, FIELD_TYPES.get(struct or "", {}).get(k))
        elif isinstance(v, list) and isinstance(cur, list) and k in LIST_KEYS.get(struct or "", {}):
            out[k] = _merge_keyed_list(cur, v, LIST_KEYS[struct or ""][k],
                                       FIELD_TYPES.get(struct or "", {}).get(k + "[]"))
        else:
            out[k] = copy.deepcopy(v)
    return out


def merge_engine_spec(runtime_engine: dict[str, Any] | None, isvc_engine: dict[str, Any] | None
                      ) -> dict[str, Any] | None:
    """``MergeEngineSpec``: no isvc engine → none; no runtime engine → the isvc's; else the strategic merge."""
    if isvc_engine is None:
        return None
    if runtime_engine is None:
        return copy.deepcopy(isvc_engine)
    base = go_json(runtime_engine, "EngineSpec")
    return patch_object(base, go_json(isvc_engine, "EngineSpec"), "EngineSpec")


def merge_runtime_containers(runtime_container: dict[str, Any], runner: dict[str, Any]) -> dict[str, Any]:
    """``MergeRuntimeContainers``: strategic merge, then args concatenated (runtime's first), name kept."""
    base = go_json(runtime_container, "Container")
    merged = patch_object(base, go_json(runner, "Container"), "Container")
    if not merged.get("name"):
        merged["name"] = runtime_container.get("name", "")
    args = [*(runtime_container.get("args") or ()), *(runner.get("args") or ())]
    if args:
        merged["args"] = args
    else:
        merged.pop("args", None)
    return merged


def engine_deployment_mode(engine: dict[str, Any] | None) -> str:
    """``DetermineEngineDeploymentMode`` (engine annotation, then leader/worker, then minReplicas 0)."""
    if engine is None:
        return "RawDeployment"
    mode = (engine.get("annotations") or {}).get(DEPLOYMENT_MODE)
    if mode in VALID_MODES:
        return str(mode)
    if engine.get("leader") is not None or engine.get("worker") is not None:
        return "MultiNode"
    if engine.get("minReplicas") == 0:
        return "Serverless"
    return "RawDeployment"


POD_SPEC_FIELDS = ("volumes", "initContainers", "containers", "restartPolicy", "terminationGracePeriodSeconds",
                   "nodeSelector", "serviceAccountName", "hostNetwork", "hostIPC", "securityContext",
                   "imagePullSecrets", "affinity", "schedulerName", "tolerations", "priorityClassName",
                   "runtimeClassName", "topologySpreadConstraints", "dnsPolicy", "hostAliases")


def engine_pod_spec(engine: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The pod spec ``reconcilePodSpec`` builds from a merged engine, and the index-free name of its runner
    container: MultiNode uses the leader's pod spec and runner (falling back to the engine's without a leader)."""
    mode = engine_deployment_mode(engine)
    source = engine
    if mode in ("MultiNode", "MultiNodeRayVLLM") and engine.get("leader") is not None:
        source = engine["leader"]
    pod = {k: copy.deepcopy(v) for k, v in source.items() if k in POD_SPEC_FIELDS}
    runner = source.get("runner")
    containers = list(pod.get("containers") or [])
    if runner is None:
        if not containers:
            raise ValueError("no containers found in pod spec and no runner spec provided")
        return pod, str(containers[0].get("name", ""))
    idx = next((i for i, c in enumerate(containers) if c.get("name") == runner.get("name", "")), None)
    if idx is None:
        containers.append({})
        idx = len(containers) - 1
    containers[idx] = merge_runtime_containers(containers[idx], runner)
    pod["containers"] = containers
    return pod, str(containers[idx].get("name", ""))
