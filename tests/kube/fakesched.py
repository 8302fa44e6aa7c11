"""The fake cluster's kube-scheduler: the filters that matter for GPU pods, with the scheduler's own messages.

Written from Kubernetes (``pkg/scheduler``): the default filter order (``apis/config/v1/default_plugins.go``:
NodeUnschedulable, TaintToleration, NodeAffinity, NodeResourcesFit, ...) and each plugin's reason —
``node(s) were unschedulable``, ``node(s) had untolerated taint {key: value}``
(``plugins/tainttoleration``: only NoSchedule/NoExecute taints filter), ``node(s) didn't match Pod's node
affinity/selector`` (``plugins/nodeaffinity``: nodeSelector and required node affinity), ``Insufficient <resource>``
(``plugins/noderesources/fit.go``, with the pod's effective request from ``k8s.io/component-helpers/resource``:
the larger of the app containers' sum and any init container). The failure message is ``FitError.Error()``
(``framework/types.go``): ``0/N nodes are available: <count reason, sorted>. preemption: 0/N nodes are
available: <...>.``. Toleration matching is ``k8s.io/api/core/v1/toleration.go`` ``ToleratesTaint``.
It does not import the plugin.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

GPU = "nvidia.com/gpu"
_UNITS = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3,
          "Ti": 1024.0**4}


def amount(q: Any) -> float:
    s = str(q).strip()
    for unit in ("Ki", "Mi", "Gi", "Ti", "m", "k", "M", "G", "T"):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * _UNITS[unit]
    return float(s or 0)


def container_request(c: dict[str, Any], resource: str) -> float:
    res = c.get("resources") or {}
    req = res.get("requests") or {}
    if resource in req:
        return amount(req[resource])
    return amount((res.get("limits") or {}).get(resource, 0))   # an unset request defaults to the limit


def effective_request(spec: dict[str, Any], resource: str) -> float:
    app = sum(container_request(c, resource) for c in spec.get("containers") or [])
    running_sidecars, peak = 0.0, 0.0
    for c in spec.get("initContainers") or []:
        if c.get("restartPolicy") == "Always":   # a sidecar keeps running next to the app containers
            running_sidecars += container_request(c, resource)
        else:
            peak = max(peak, running_sidecars + container_request(c, resource))
    return max(app + running_sidecars, peak)


def toleration_matches(tol: dict[str, Any], taint: dict[str, Any]) -> bool:
    if tol.get("effect", "") not in ("", taint.get("effect")):
        return False
    if tol.get("key", "") not in ("", taint.get("key")):
        return False
    operator = tol.get("operator") or "Equal"
    if operator == "Exists":
        return True
    if operator == "Equal":
        return (tol.get("value") or "") == (taint.get("value") or "")
    return False


def _term_matches(labels: dict[str, str], term: dict[str, Any]) -> bool:
    for e in term.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], list(e.get("values") or [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op in ("Gt", "Lt"):
            if not present:
                return False
            a, b = int(labels[key]), int(values[0])
            if (op == "Gt" and not a > b) or (op == "Lt" and not a < b):
                return False
    return True


def node_selected(spec: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    return not terms or any(_term_matches(labels, t) for t in terms)


def filter_node(spec: dict[str, Any], node: dict[str, Any], pods_on_node: list[dict[str, Any]]) -> list[str]:
    """The reasons this node is refused ([] when it fits), as the first failing plugin states them."""
    labels = node["metadata"].get("labels") or {}
    nspec = node.get("spec") or {}
    if nspec.get("unschedulable"):
        return ["node(s) were unschedulable"]
    for taint in nspec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and \
                not any(toleration_matches(t, taint) for t in spec.get("tolerations") or []):
            return [f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"]
    if not node_selected(spec, labels):
        return ["node(s) didn't match Pod's node affinity/selector"]
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    wanted = {r for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
              for part in ("requests", "limits") for r in ((c.get("resources") or {}).get(part) or {})}
    short = []
    for resource in sorted(wanted):
        used = sum(effective_request(p["spec"], resource) for p in pods_on_node)
        if effective_request(spec, resource) + used > amount(allocatable.get(resource, 0)):
            short.append(f"Insufficient {resource}")
    return short


def schedule(spec: dict[str, Any], nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> tuple[str | None, str]:
    """(the chosen node, "") or (None, the FailedScheduling message)."""
    live = [p for p in pods if p["spec"].get("nodeName") and
            (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    reasons: Counter[str] = Counter()
    helpful = 0   # nodes where resources are short: preemption could help there (it never does for our pods)
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        name = node["metadata"]["name"]
        refused = filter_node(spec, node, [p for p in live if p["spec"]["nodeName"] == name])
        if not refused:
            return name, ""
        reasons.update(refused)
        helpful += any(r.startswith("Insufficient") for r in refused)
    n = len(nodes)
    listed = ", ".join(sorted(f"{count} {reason}" for reason, count in reasons.items()))
    pre = [f"{helpful} No preemption victims found for incoming pod"] if helpful else []
    if n - helpful:
        pre.append(f"{n - helpful} Preemption is not helpful for scheduling")
    return None, f"0/{n} nodes are available: {listed}. preemption: 0/{n} nodes are available: {', '.join(pre)}."
