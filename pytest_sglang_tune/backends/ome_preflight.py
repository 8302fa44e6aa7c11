"""Once per session, before anything deploys: is the API reachable, may we use it, is OME installed, how many GPUs
are free where.

"No capacity" and "could not ask" are different answers: an unreachable API, refused credentials (401), a
refusal to read what every user of the backend must read (403), or missing CRDs raise ``BackendUnavailable`` (an
error of the session, one message); zero free GPUs is a number (configs are skipped with it). A user whose Role
is namespaced cannot list nodes: the pre-flight is then *degraded*: ``--gpus`` must say how many GPUs the run may
use, and the summary says capacity was not checked.

A config fits only if one node it can run on has ``tp × dp × pp`` ``nvidia.com/gpu`` free (allocatable minus the
effective requests of live pods on it, listed node by node); the sum over nodes is only the budget for configs
running in parallel. Which nodes a config can run on is ``ome_placement``'s business.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_sglang_tune.backends.ome_manifest import GPU, GROUP, VERSION
from pytest_sglang_tune.backends.ome_placement import NodeGpus, Placement, eligible, pod_request, quantity
from pytest_sglang_tune.errors import BackendUnavailable, DeployError

REQUIRED_RESOURCES = ("inferenceservices", "clusterservingruntimes", "servingruntimes", "clusterbasemodels",
                      "basemodels")
PREFLIGHT_TIMEOUT = (3.0, 10.0)  # (connect, read) seconds: an unreachable API fails the session, it never hangs
INSTALL_HINT = "the ome backend needs the kubernetes client: pip install 'pytest-sglang-tune[kube]'"
RBAC_HINT = "deploy/ome-rbac.yaml (see docs/ome.md, 'RBAC')"


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
            raise BackendUnavailable(f"ome: kubeconfig {path!r} does not exist (from "
                                     f"{'--sglang-kubeconfig' if kubeconfig else '$KUBECONFIG'})")
        try:
            client = k8s.config.new_client_from_config(config_file=path)
        except Exception as exc:
            raise BackendUnavailable(f"ome: kubeconfig {path!r} cannot be used: {exc}") from exc
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
    raise BackendUnavailable("ome: no Kubernetes configuration: pass --sglang-kubeconfig, set $KUBECONFIG, create "
                             "~/.kube/config, or run inside a cluster")


def status_message(exc: Any) -> str:
    """The ``message`` of a Kubernetes Status body, else the exception's reason."""
    import json

    try:
        return str(json.loads(exc.body).get("message"))
    except Exception:
        return str(getattr(exc, "reason", "") or getattr(exc, "body", "") or exc)[:300]


def _where(api: Any, source: str) -> str:
    return f"{api.configuration.host} ({source})"


def check_cluster(api: Any, source: str, namespace: str) -> None:
    """Raise ``BackendUnavailable`` when the API cannot be reached or used, or OME is not installed."""
    k8s = import_kubernetes()
    exc_type = k8s.client.exceptions.ApiException
    try:
        k8s.client.VersionApi(api).get_code(_request_timeout=PREFLIGHT_TIMEOUT)
    except exc_type as exc:
        raise _refused(exc, api, source, "read /version") from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise BackendUnavailable(f"ome: cannot reach the Kubernetes API at {_where(api, source)}: "
                                 f"{type(exc).__name__}: {first}") from exc
    try:
        out = k8s.client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION, _request_timeout=PREFLIGHT_TIMEOUT)
        have = {r.name for r in (out.resources if out else None) or ()}
    except exc_type as exc:
        if exc.status != 404:
            raise _refused(exc, api, source, f"discover {GROUP}/{VERSION}") from exc
        have = set()
    missing = [f"{r}.{GROUP}" for r in REQUIRED_RESOURCES if r not in have]
    if missing:
        raise BackendUnavailable(f"ome: OME is not installed in the cluster at {_where(api, source)}: missing CRDs "
                                 f"{', '.join(missing)} (install OME: its CRDs and controller)")
    try:  # the one right every user of the backend needs, whatever else is granted
        k8s.client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferenceservices", limit=1, _request_timeout=PREFLIGHT_TIMEOUT)
    except exc_type as exc:
        raise _refused(exc, api, source, f"list inferenceservices.{GROUP} in namespace {namespace!r}") from exc


def _refused(exc: Any, api: Any, source: str, what: str) -> BackendUnavailable:
    if exc.status == 401:
        return BackendUnavailable(f"ome: the Kubernetes API at {_where(api, source)} refused our credentials "
                                  f"(HTTP 401 Unauthorized): {status_message(exc)}; renew the token or fix the "
                                  "kubeconfig's user")
    if exc.status == 403:
        return BackendUnavailable(f"ome: not allowed to {what} at {_where(api, source)} (HTTP 403 Forbidden: "
                                  f"{status_message(exc)}); bind the roles of {RBAC_HINT}")
    return BackendUnavailable(f"ome: the Kubernetes API at {_where(api, source)} answered HTTP {exc.status} to "
                              f"'{what}': {status_message(exc)}")


@dataclass
class GpuInventory:
    """Per-node GPU numbers, read once."""

    nodes: list[NodeGpus] = field(default_factory=list)

    def gpu_nodes(self) -> list[NodeGpus]:
        return [n for n in self.nodes if n.allocatable > 0 and n.schedulable]

    def total_free(self) -> int:
        """Free GPUs on schedulable nodes, whoever may use them (the budget for configs running in parallel)."""
        return sum(n.free for n in self.gpu_nodes())

    def largest_free(self) -> int:
        return max((n.free for n in self.gpu_nodes()), default=0)

    def fits(self, gpus: int, placement: Placement) -> str | None:
        """None when a node this pod can run on has ``gpus`` free; otherwise the numbers. (When no node can run
        the pod at all, that is not a capacity matter: ``ome_placement.unplaceable`` names the cause.)"""
        nodes = eligible(placement, self.nodes)
        largest = max((n.free for n in nodes), default=0)
        if gpus <= largest or not nodes:
            return None
        return (f"config needs {gpus} {GPU} on one node (tp × dp × pp) but the largest free on any node it can run "
                f"on is {largest} ({len(nodes)} such node(s), {sum(n.free for n in nodes)} free in total)")

    def describe(self) -> str:
        alloc = sum(n.allocatable for n in self.nodes)
        gpu_nodes = [n for n in self.nodes if n.allocatable > 0]
        tainted = [n for n in gpu_nodes if any(t.get("effect") in ("NoSchedule", "NoExecute") for t in n.taints)]
        extra = f", {len(tainted)} of them tainted" if tainted else ""
        return (f"cluster nodes: {len(self.nodes)} node(s), {len(gpu_nodes)} with {GPU}{extra}, {alloc} allocatable, "
                f"{self.total_free()} free, largest free on one node {self.largest_free()}")


def read_inventory(api: Any) -> GpuInventory | None:
    """Nodes' allocatable ``nvidia.com/gpu`` minus what live pods on each GPU node request; None when the user may
    not list nodes or pods cluster-wide (a namespaced Role: the degraded pre-flight)."""
    k8s = import_kubernetes()
    core = k8s.client.CoreV1Api(api)
    try:
        nodes = api.sanitize_for_serialization(core.list_node(_request_timeout=PREFLIGHT_TIMEOUT).items)
        inv = GpuInventory()
        for n in nodes:
            alloc = int(quantity(((n.get("status") or {}).get("allocatable") or {}).get(GPU, 0)))
            used = _used_gpus(core, api, n["metadata"]["name"]) if alloc else 0
            spec = n.get("spec") or {}
            inv.nodes.append(NodeGpus(name=n["metadata"]["name"], labels=dict(n["metadata"].get("labels") or {}),
                                      allocatable=alloc, used=used, schedulable=not spec.get("unschedulable"),
                                      taints=tuple(spec.get("taints") or ())))
    except k8s.client.exceptions.ApiException as exc:
        if exc.status == 403:
            return None
        raise
    return inv


def _used_gpus(core: Any, api: Any, node: str) -> int:
    """GPUs requested by the pods on ``node`` that still hold them (one list per GPU node, never all pods)."""
    selector = f"spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed"
    total, token = 0.0, None
    while True:
        page = core.list_pod_for_all_namespaces(field_selector=selector, limit=500, _continue=token,
                                                _request_timeout=PREFLIGHT_TIMEOUT)
        for pod in api.sanitize_for_serialization(page.items):
            total += pod_request(pod.get("spec") or {})
        token = page.metadata._continue if page.metadata else None
        if not token:
            return int(total)


def missing_rights_note(gpus: int) -> str:
    return (f"capacity not checked: this user may not list nodes/pods cluster-wide (a namespaced Role); trusting "
            f"--gpus={gpus}; per-config GPU fit and node placement are not pre-checked")


def gpus_required_message(api: Any, source: str) -> str:
    return (f"ome: cannot list nodes at {_where(api, source)} (HTTP 403 Forbidden), so the GPUs free in the "
            "cluster cannot be counted: pass --gpus=N (how many GPUs this run may use at once), or grant list on "
            f"nodes and pods cluster-wide (ClusterRole sglang-tune-read in {RBAC_HINT})")

