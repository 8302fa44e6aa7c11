"""How OME and Kubernetes turn an InferenceService into the command a pod runs (facts, pinned by tests).

OME (``pkg/controller/v1beta1/inferenceservice/utils/merging.go``, ``MergeEngineSpec``) strategic-merges the
InferenceService's ``spec.engine`` over the runtime's ``engineConfig``: scalars and plain lists (``command``,
``args``, ``tolerations``) are replaced, maps (``resources.requests``, ``nodeSelector``) merge key by key, and
lists with a merge key (``env`` by name, ``ports`` by containerPort, ``volumeMounts`` by mountPath, ``volumes``
by name) merge item by item. The kubelet then runs ``command + args`` with ``$(VAR)`` expanded from the
container's env (``$$`` escapes ``$``; an undefined ``$(VAR)`` stays as written).

The shipped SGLang runtimes put the whole launch line in ``runner.command`` and set no ``args``; so the tuned
flags go into ``runner.args``: they are appended to the runtime's line, and argparse keeps the last value of a
repeated flag. Replacing ``command`` instead would drop the runtime's host, port and model path.
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
        mk = MERGE_KEYS[key]
        out_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            idx = next((i for i, x in enumerate(out_list)
                        if isinstance(x, Mapping) and isinstance(item, Mapping) and x.get(mk) == item.get(mk)),
                       None)
            if idx is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[idx] = strategic_merge(out_list[idx], item)
        return out_list
    return copy.deepcopy(patch)


ENGINE_FIELDS_FROM_RUNTIME = ("runner", "leader", "worker")


def merge_engine(runtime_engine: Mapping[str, Any] | None, isvc_engine: Mapping[str, Any] | None
                 ) -> dict[str, Any] | None:
    """``MergeEngineSpec``: nil engine in the InferenceService → none; nil in the runtime → the isvc's."""
    if isvc_engine is None:
        return None
    if runtime_engine is None:
        return copy.deepcopy(dict(isvc_engine))
    return strategic_merge(dict(runtime_engine), dict(isvc_engine))  # type: ignore[no-any-return]


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
