"""Where an engine pod can run, predicted before it is created, and why it cannot (pure functions on plain dicts).

The pod OME creates (see ``docs/ome.md``) carries the runtime's ``engineConfig.tolerations`` unless the
InferenceService sets its own list (a pod-spec list has no merge strategy: ours replaces the runtime's, so we
send the union), the runtime's and the suite's node selectors, and the node selector OME adds so the pod lands
only where the model's weights are: ``models.ome.io/clusterbasemodel.<model>=Ready`` (OME
``pkg/constants/constants.go`` ``GetClusterBaseModelLabel``/``GetBaseModelLabel``, long names hashed; set by
OME's model agent). Kubernetes' rules (``k8s.io/api/core/v1`` ``Toleration.ToleratesTaint``, the scheduler's
NodeUnschedulable, TaintToleration, NodeAffinity and NodeResourcesFit filters, and the pod's effective request:
the larger of the app containers' sum and each init container) decide the rest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GPU = "nvidia.com/gpu"
MODEL_LABEL_DOMAIN = "models.ome.io"
MAX_LABEL_NAME = 49   # 63 - len("models.ome.io") - 1
HASH_PREFIX = 8


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (GPUs are integers; CPU/memory suffixes handled for completeness)."""
    text = str(value).strip()
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
                "Ti": 2**40}
    for suf in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suf):
            return float(text[: -len(suf)]) * suffixes[suf]
    return float(text) if text else 0.0


def _shorten(name: str, limit: int) -> str:
    """OME's ``truncateWithHash``: the first 8 hex digits of sha256(name), '-', then the name's tail."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:HASH_PREFIX]
    tail = limit - HASH_PREFIX - 1
    return digest[:limit] if tail <= 0 else f"{digest}-{name[len(name) - tail:]}"


def model_ready_label(kind: str, name: str, namespace: str | None = None) -> str:
    """The node label (key) OME's scheduling constraint requires to be ``Ready`` for this base model."""
    if kind == "ClusterBaseModel":
        return f"{MODEL_LABEL_DOMAIN}/clusterbasemodel.{_shorten(name, MAX_LABEL_NAME - len('clusterbasemodel.'))}"
    ns = namespace or ""
    room = MAX_LABEL_NAME - len("basemodel.") - 1
    if len(ns) + len(name) <= room:
        return f"{MODEL_LABEL_DOMAIN}/{ns}.basemodel.{name}"
    if room < 16:
        ns_room = room // 2
    else:
        ns_room = len(ns) if len(ns) <= 8 else 8
    return f"{MODEL_LABEL_DOMAIN}/{_shorten(ns, ns_room)}.basemodel.{_shorten(name, room - ns_room)}"


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """``Toleration.ToleratesTaint``."""
    if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
        return False
    if toleration.get("key") and toleration.get("key") != taint.get("key"):
        return False
    op = toleration.get("operator") or "Equal"
    if op == "Exists":
        return True
    return op == "Equal" and str(toleration.get("value") or "") == str(taint.get("value") or "")


def taint_text(taint: Mapping[str, Any]) -> str:
    """``key=value:Effect`` as ``kubectl taint`` writes it."""
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


def untolerated(taints: Iterable[Mapping[str, Any]], tolerations: Sequence[Mapping[str, Any]]) -> list[str]:
    """The node's NoSchedule/NoExecute taints the tolerations do not cover (PreferNoSchedule never blocks)."""
    return [taint_text(t) for t in taints if t.get("effect") in ("NoSchedule", "NoExecute")
            and not any(tolerates(tol, t) for tol in tolerations)]


def union_tolerations(*lists: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The lists concatenated, first occurrence of each toleration kept (as sent to the API)."""
    out: list[dict[str, Any]] = []
    for items in lists:
        for t in items or ():
            item = {str(k): v for k, v in t.items()}
            if item not in out:
                out.append(item)
    return out


def _expression(labels: Mapping[str, str], expr: Mapping[str, Any]) -> bool:
    key, op, values = expr.get("key", ""), expr.get("operator"), [str(v) for v in expr.get("values") or ()]
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def affinity_terms(affinity: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The required node-affinity terms of a pod's ``affinity`` (ORed; each term's expressions ANDed)."""
    required = (((affinity or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
                or {})
    return list(required.get("nodeSelectorTerms") or ())


def matches_affinity(labels: Mapping[str, str], terms: Sequence[Mapping[str, Any]]) -> bool:
    if not terms:
        return True
    return any(all(_expression(labels, e) for e in term.get("matchExpressions") or ()) for term in terms)


def _requests(container: Mapping[str, Any]) -> dict[str, float]:
    res = container.get("resources") or {}
    out = {str(k): quantity(v) for k, v in (res.get("limits") or {}).items()}   # requests default to limits
    out.update({str(k): quantity(v) for k, v in (res.get("requests") or {}).items()})
    return out


def pod_request(pod_spec: Mapping[str, Any], resource: str = GPU) -> float:
    """A pod's effective request: app containers plus sidecars summed, or the largest init container (with the
    sidecars started before it), whichever is larger — so an init container's GPUs count once, not twice."""
    sidecars = 0.0
    init_peak = 0.0
    for c in pod_spec.get("initContainers") or ():
        req = _requests(c).get(resource, 0.0)
        if c.get("restartPolicy") == "Always":
            sidecars += req
        else:
            init_peak = max(init_peak, sidecars + req)
    apps = sum(_requests(c).get(resource, 0.0) for c in pod_spec.get("containers") or ()) + sidecars
    return max(apps, init_peak) + quantity((pod_spec.get("overhead") or {}).get(resource, 0))


@dataclass(frozen=True)
class NodeGpus:
    name: str
    labels: Mapping[str, str]
    allocatable: int
    used: int
    schedulable: bool
    taints: tuple[Mapping[str, Any], ...] = ()

    @property
    def free(self) -> int:
        return max(0, self.allocatable - self.used)


@dataclass(frozen=True)
class Placement:
    """What the engine pod will carry that decides where it may run."""

    tolerations: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity: tuple[Mapping[str, Any], ...] = ()     # required node-affinity terms
    model_label: str | None = None                   # models.ome.io/...=Ready, required by OME
    model: str = ""                                  # "ClusterBaseModel qwen3-8b", for messages

    def node_problem(self, node: NodeGpus) -> str | None:
        """Why this node can never take the pod (first failing filter, in the scheduler's order), or None."""
        if not node.schedulable:
            return "unschedulable"
        if untolerated(node.taints, self.tolerations):
            return "taint"
        if self.model_label and node.labels.get(self.model_label) != "Ready":
            return "model"
        if any(node.labels.get(k) != v for k, v in self.node_selector.items()) or \
                not matches_affinity(node.labels, self.affinity):
            return "selector"
        return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def unplaceable(placement: Placement, nodes: Sequence[NodeGpus]) -> str | None:
    """None when some GPU node can take the pod (free GPUs aside); else the cause, as the user must fix it."""
    gpu_nodes = [n for n in nodes if n.allocatable > 0]
    if not gpu_nodes:
        return None   # no GPUs at all: a capacity matter, reported with the numbers
    problems = {n.name: placement.node_problem(n) for n in gpu_nodes}
    if any(p is None for p in problems.values()):
        return None
    parts = []
    tainted = [n for n in gpu_nodes if problems[n.name] == "taint"]
    if tainted:
        taints = sorted({t for n in tainted for t in untolerated(n.taints, placement.tolerations)})
        tols = ", ".join(f"{t.get('key') or '*'}:{t.get('effect') or '*'}" for t in placement.tolerations) or "none"
        parts.append(f"{_plural(len(tainted), 'GPU node')} with untolerated taint {', '.join(taints)} (the pod "
                     f"tolerates: {tols}; add the toleration to backends.ome.tolerations or the runtime's "
                     "engineConfig.tolerations)")
    no_model = [n for n in gpu_nodes if problems[n.name] == "model"]
    if no_model:
        parts.append(f"{_plural(len(no_model), 'GPU node')} without the model: {placement.model} is Ready on no "
                     f"schedulable GPU node (OME requires node label {placement.model_label}=Ready, set by its "
                     "model agent once the weights are on the node)")
    selector = [n for n in gpu_nodes if problems[n.name] == "selector"]
    if selector:
        parts.append(f"{_plural(len(selector), 'GPU node')} not matching the pod's node selector "
                     f"{dict(placement.node_selector)}" + (" / required node affinity" if placement.affinity else ""))
    cordoned = [n for n in gpu_nodes if problems[n.name] == "unschedulable"]
    if cordoned:
        parts.append(f"{_plural(len(cordoned), 'GPU node')} cordoned (spec.unschedulable)")
    return "no GPU node can run this config: " + "; ".join(parts)


def eligible(placement: Placement, nodes: Sequence[NodeGpus]) -> list[NodeGpus]:
    return [n for n in nodes if n.allocatable > 0 and placement.node_problem(n) is None]


_REASON = re.compile(r"(\d+) ([^,]+?)(?=, \d+ |$)")


def scheduling_reasons(message: str) -> dict[str, int]:
    """``0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint {...}.
    preemption: ...`` → ``{"Insufficient nvidia.com/gpu": 1, "node(s) had untolerated taint {...}": 2}``."""
    head = message.split(". preemption:", 1)[0]
    if ":" not in head:
        return {}
    body = head.split(":", 1)[1].strip().rstrip(".")
    return {m.group(2).strip(): int(m.group(1)) for m in _REASON.finditer(body)}


def classify_unschedulable(message: str) -> str:
    """``capacity`` when some node lacks only free resources (waiting may help); otherwise ``placement``."""
    reasons = scheduling_reasons(message)
    if not reasons or any(r.startswith("Insufficient ") or r == "Too many pods" for r in reasons):
        return "capacity"
    return "placement"
