"""How OME and Kubernetes turn an InferenceService into the command a pod runs (facts, pinned by tests).

OME (``pkg/controller/v1beta1/inferenceservice/utils/merging.go``, ``MergeEngineSpec``) strategic-merges the
InferenceService's ``spec.engine`` over the runtime's ``engineConfig``: scalars and plain lists (``command``,
``args``, ``tolerations``) are replaced, maps (``resources.requests``, ``nodeSelector``) merge key by key, and
lists with a merge key (``env`` by name, ``ports`` by containerPort, ``volumeMounts`` by mountPath, ``volumes``
by name) merge item by item. The kubelet then runs ``command + args`` with ``$(VAR)`` expanded from the
container's env (``$$`` escapes ``$``; an undefined ``$(VAR)`` stays as written).

Then ``MergeRuntimeContainers`` merges the runner into the pod spec's container of the same name and
concatenates ``args`` (that container's args first). The shipped SGLang runtimes put the whole launch line in
``runner.command`` and set no ``args``; so the tuned flags go into ``runner.args``: they are appended to the
runtime's line, and argparse keeps the last value of a repeated flag. Replacing ``command`` instead would drop the
runtime's host, port and model path. The fake cluster merges with its own code (``tests/kube/fakemerge.py``);
both are pinned by OME's own test cases (``tests/kube/test_ome_merge.py``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

# strategic-merge keys of the Kubernetes core types that appear under an engine spec
MERGE_KEYS: dict[str, str] = {
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "volumes": "name",
    "containers": "name",
    "initContainers": "name",
    "imagePullSecrets": "name",
}


def _index(items: Sequence[Any], key: str, value: Any) -> int:
    return next((i for i, x in enumerate(items) if isinstance(x, Mapping) and x.get(key) == value), -1)


def _merge_list(base: list[Any], patch: list[Any], key: str) -> list[Any]:
    """Lists with a merge key: patched items in the patch's order, the base's other items slotted back before the
    first patched item that followed them in the base (apimachinery ``normalizeElementOrder``)."""
    patched = []
    for item in patch:
        i = _index(base, key, item.get(key)) if isinstance(item, Mapping) else -1
        patched.append(strategic_merge(base[i], item) if i >= 0 else copy.deepcopy(item))
    names = {item.get(key) for item in patch if isinstance(item, Mapping)}
    rest = [copy.deepcopy(x) for x in base if not (isinstance(x, Mapping) and x.get(key) in names)]
    out: list[Any] = []
    while rest or patched:
        if not patched or (rest and 0 <= _index(base, key, rest[0].get(key)) <
                           _index(base, key, patched[0].get(key))):
            out.append(rest.pop(0))
        else:
            out.append(patched.pop(0))
    return out


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """``patch`` over ``base`` as Kubernetes' strategic merge patch does for the fields above."""
    if isinstance(base, Mapping) and isinstance(patch, Mapping):
        out = {k: copy.deepcopy(v) for k, v in base.items()}
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        return _merge_list(base, patch, MERGE_KEYS[key])
    return copy.deepcopy(patch)


MAP_FIELDS = {"nodeSelector", "labels", "annotations", "requests", "limits", "overhead", "config"}


def omit_empty(value: Any) -> Any:
    """What OME's typed structs send on: ``omitempty`` drops nil, empty lists and empty maps (an empty struct, such
    as ``emptyDir: {}``, is sent)."""
    if isinstance(value, Mapping):
        return {k: omit_empty(v) for k, v in value.items()
                if v is not None and v != [] and not (v == {} and k in MAP_FIELDS)}
    if isinstance(value, list):
        return [omit_empty(v) for v in value]
    return value


ENGINE_FIELDS_FROM_RUNTIME = ("runner", "leader", "worker")


def merge_engine(runtime_engine: Mapping[str, Any] | None, isvc_engine: Mapping[str, Any] | None
                 ) -> dict[str, Any] | None:
    """``MergeEngineSpec``: nil engine in the InferenceService → none; nil in the runtime → the isvc's."""
    if isvc_engine is None:
        return None
    if runtime_engine is None:
        return copy.deepcopy(dict(isvc_engine))
    merged = strategic_merge(omit_empty(runtime_engine), omit_empty(isvc_engine))
    return merged  # type: ignore[no-any-return]


def merge_runtime_container(container: Mapping[str, Any], runner: Mapping[str, Any]) -> dict[str, Any]:
    """``MergeRuntimeContainers``: the runner strategic-merged over the pod spec's container of the same name,
    then ``args`` = the container's args + the runner's (concatenated, not replaced)."""
    merged: dict[str, Any] = strategic_merge(omit_empty(container), omit_empty(runner))
    merged["name"] = merged.get("name") or container.get("name", "")
    args = [*(container.get("args") or ()), *(runner.get("args") or ())]
    if args:
        merged["args"] = args
    else:
        merged.pop("args", None)
    return merged


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion of one command/args item."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)
    return _VAR.sub(sub, value)


def container_env(container: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Literal env values of a container (``valueFrom`` entries cannot be resolved here and are left out)."""
    env = dict(extra or {})
    for item in container.get("env") or ():
        if isinstance(item, Mapping) and "value" in item:
            env[str(item["name"])] = expand(str(item["value"]), env)
    return env


def effective_argv(container: Mapping[str, Any], extra_env: Mapping[str, str] | None = None) -> list[str]:
    """What the container really executes: ``command + args``, ``$(VAR)`` expanded."""
    env = container_env(container, extra_env)
    parts: Sequence[Any] = [*(container.get("command") or ()), *(container.get("args") or ())]
    return [expand(str(p), env) for p in parts]
