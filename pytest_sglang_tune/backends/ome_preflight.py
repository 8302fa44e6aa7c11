"""Once per session, before anything deploys: is the API reachable, is OME installed, how many GPUs are free.

A config fits only if one eligible node has ``tp × dp × pp`` ``nvidia.com/gpu`` free (allocatable minus what
live pods request); the sum over nodes is only the budget for configs running in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_sglang_tune.backends.ome_manifest import GPU, GROUP, VERSION
from pytest_sglang_tune.errors import DeployError

REQUIRED_RESOURCES = ("inferenceservices", "clusterservingruntimes", "servingruntimes", "clusterbasemodels",
                      "basemodels")
PREFLIGHT_TIMEOUT = (3.0, 10.0)  # (connect, read) seconds: an unreachable API is a skip reason, not a hang
INSTALL_HINT = "the ome backend needs the kubernetes client: pip install 'pytest-sglang-tune[kube]'"


def import_kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError as exc:  # pragma: no cover - an extra
        raise DeployError(INSTALL_HINT) from exc
    return kubernetes


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and Path(
        "/var/run/secrets/kubernetes.io/serviceaccount/token").is_file()


def api_client(kubeconfig: str | None) -> tuple[Any, str, str | None]:
    """(ApiClient, where the config came from, the kubeconfig context's namespace)."""
    k8s = import_kubernetes()
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    default = Path(os.path.expanduser("~/.kube/config"))
    if path is None and default.is_file():
        path = str(default)
    if path:
        if not Path(path).is_file():
            raise DeployError(f"kubeconfig {path!r} does not exist (from "
                              f"{'--sglang-kubeconfig' if kubeconfig else '$KUBECONFIG'})")
        client = k8s.config.new_client_from_config(config_file=path)
        namespace = None
        try:
            _, active = k8s.config.list_kube_config_contexts(config_file=path)
            namespace = (active or {}).get("context", {}).get("namespace")
        except Exception:  # the namespace is only a default
            pass
        return client, f"kubeconfig {path}", namespace
    if in_cluster():
        k8s.config.load_incluster_config()
        ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        namespace = ns_file.read_text().strip() if ns_file.is_file() else None
        return k8s.client.ApiClient(), "in-cluster service account", namespace
    raise DeployError("no Kubernetes configuration: pass --sglang-kubeconfig, set $KUBECONFIG, create "
                      "~/.kube/config, or run inside a cluster")


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (GPUs are integers; CPU/memory suffixes handled for completeness)."""
    text = str(value).strip()
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
                "Ti": 2**40}
    for suf in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suf):
            return float(text[: -len(suf)]) * suffixes[suf]
    return float(text) if text else 0.0


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


def _tolerated(taint: Mapping[str, Any], tolerations: Sequence[Mapping[str, Any]]) -> bool:
    if taint.get("effect") not in ("NoSchedule", "NoExecute"):
        return True
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and str(t.get("value", "")) == str(taint.get("value", "") or ""):
            return True
    return False


@dataclass
class GpuInventory:
    """Per-node GPU numbers, read once."""

    nodes: list[NodeGpus] = field(default_factory=list)

    def eligible(self, node_selector: Mapping[str, str] | None = None,
                 tolerations: Sequence[Mapping[str, Any]] = ()) -> list[NodeGpus]:
        sel = dict(node_selector or {})
        return [n for n in self.nodes
                if n.schedulable and n.allocatable > 0 and all(n.labels.get(k) == v for k, v in sel.items())
                and all(_tolerated(t, tolerations) for t in n.taints)]

    def total_free(self, node_selector: Mapping[str, str] | None = None,
                   tolerations: Sequence[Mapping[str, Any]] = ()) -> int:
        return sum(n.free for n in self.eligible(node_selector, tolerations))

    def largest_free(self, node_selector: Mapping[str, str] | None = None,
                     tolerations: Sequence[Mapping[str, Any]] = ()) -> int:
        return max((n.free for n in self.eligible(node_selector, tolerations)), default=0)

    def fits(self, gpus: int, node_selector: Mapping[str, str] | None = None,
             tolerations: Sequence[Mapping[str, Any]] = ()) -> str | None:
        nodes = self.eligible(node_selector, tolerations)
        largest = max((n.free for n in nodes), default=0)
        if gpus <= largest:
            return None
        where = f" matching node selector {dict(node_selector)}" if node_selector else ""
        return (f"config needs {gpus} {GPU} on one node (tp × dp × pp) but the largest free on any eligible "
                f"node{where} is {largest} ({len(nodes)} eligible node(s), {sum(n.free for n in nodes)} free "
                "in total)")

    def describe(self) -> str:
        alloc = sum(n.allocatable for n in self.nodes)
        gpu_nodes = [n for n in self.nodes if n.allocatable > 0]
        return (f"cluster nodes: {len(self.nodes)} node(s), {len(gpu_nodes)} with {GPU}, {alloc} allocatable, "
                f"{self.total_free()} free, largest free on one node {self.largest_free()}")


def read_inventory(core: Any) -> GpuInventory:
    """Nodes' allocatable ``nvidia.com/gpu`` minus the GPU requests of pods that still hold them."""
    nodes = core.list_node(_request_timeout=PREFLIGHT_TIMEOUT).items
    pods = core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,status.phase!=Failed",
                                            _request_timeout=PREFLIGHT_TIMEOUT).items
    used: dict[str, int] = {}
    for pod in pods:
        node = pod.spec.node_name if pod.spec else None
        if not node:
            continue
        for c in [*(pod.spec.containers or ()), *(pod.spec.init_containers or ())]:
            res = c.resources
            req = (res.requests or res.limits or {}) if res else {}
            if GPU in req:
                used[node] = used.get(node, 0) + int(quantity(req[GPU]))
    inv = GpuInventory()
    for n in nodes:
        alloc = (n.status.allocatable or {}) if n.status else {}
        taints = tuple(t.to_dict() for t in (n.spec.taints or ())) if n.spec else ()
        inv.nodes.append(NodeGpus(
            name=n.metadata.name, labels=dict(n.metadata.labels or {}), allocatable=int(quantity(alloc.get(GPU, 0))),
            used=used.get(n.metadata.name, 0), schedulable=not (n.spec and n.spec.unschedulable), taints=taints))
    return inv


def ome_resources(api_client: Any) -> set[str]:
    """The ome.io/v1beta1 resources the API server serves (discovery); empty when OME is not installed."""
    k8s = import_kubernetes()
    try:
        out = k8s.client.CustomObjectsApi(api_client).get_api_resources(GROUP, VERSION,
                                                                         _request_timeout=PREFLIGHT_TIMEOUT)
    except k8s.client.exceptions.ApiException as exc:
        if exc.status == 404:
            return set()
        raise
    return {r.name for r in (out.resources if out else None) or ()}


def missing_crds(api_client: Any) -> list[str]:
    have = ome_resources(api_client)
    return [f"{r}.{GROUP}" for r in REQUIRED_RESOURCES if r not in have]
