"""A fake OME cluster (API server + OME controller) for the kube tests, and as a script for manual runs:

    python tests/kube/fakecluster.py --gpus 4 4 --tainted --kubeconfig /tmp/fake-kubeconfig
    KUBECONFIG=/tmp/fake-kubeconfig pytest suites/ --backend=ome --gpus=4

The port-forward is kubectl's when kubectl is on the PATH (the fake API server speaks its SPDY/3.1 upgrade),
else the kubernetes client's websocket one; SGLANG_TUNE_PORT_FORWARD=client or =kubectl picks one.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from fakeapi import FakeApiServer, load_crds, write_kubeconfig
from fakeome import FakeOmeController, model_label
from fakeschema import admit
from fakestore import Store

REFERENCE_CRDS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "ome-crds"
RUNTIME = "srt-qwen3-8b"
MODEL = "qwen3-8b"
MODEL_PATH = "Qwen/Qwen3-8B"   # the ClusterBaseModel's storage.path: what $(MODEL_PATH) expands to
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}   # as managed clouds taint
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PLURAL_OF = {"ClusterServingRuntime": "clusterservingruntimes", "ServingRuntime": "servingruntimes",
             "ClusterBaseModel": "clusterbasemodels", "BaseModel": "basemodels",
             "InferenceService": "inferenceservices"}


def test_runtime(name: str = RUNTIME, *, tolerations: bool = True, multi_node: bool = False) -> dict[str, Any]:
    """A ClusterServingRuntime shaped like OME's shipped SGLang runtimes (config/runtimes/srt/...): the launch
    line in runner.command, no args, the GPU toleration in engineConfig.tolerations."""
    runner = {"name": "ome-container", "image": "docker.io/lmsysorg/sglang:v0.5.5.post3-cu129-amd64",
              "ports": [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}],
              "command": ["python3", "-m", "sglang.launch_server", "--host", "0.0.0.0", "--port", "8080",
                          "--enable-metrics", "--log-requests", "--model-path", "$(MODEL_PATH)", "--tp-size", "1",
                          "--mem-frac", "0.9", "--served-model-name", "Qwen/Qwen3-8B"],
              "resources": {"requests": {"cpu": 10, "memory": "30Gi", "nvidia.com/gpu": 1},
                            "limits": {"cpu": 10, "memory": "30Gi", "nvidia.com/gpu": 1}}}
    engine: dict[str, Any] = {"runner": runner}
    if multi_node:   # like OME's multi-node runtimes: the launch line lives in the leader's and worker's runners
        engine = {"leader": {"runner": {**runner, "command": [*runner["command"], "--nnodes", "2"]}},
                  "worker": {"size": 1, "runner": {**runner, "command": [*runner["command"], "--nnodes", "2"]}}}
    if tolerations:
        engine["tolerations"] = [dict(GPU_TOLERATION)]
    return {"apiVersion": "ome.io/v1beta1", "kind": "ClusterServingRuntime", "metadata": {"name": name},
            "spec": {"disabled": False,
                     "supportedModelFormats": [{"modelFormat": {"name": "safetensors", "version": "1.0.0"},
                                                "modelFramework": {"name": "transformers", "version": "4.51.0"},
                                                "modelArchitecture": "Qwen3ForCausalLM", "autoSelect": False,
                                                "priority": 1}],
                     "protocolVersions": ["openAI"], "modelSizeRange": {"min": "7B", "max": "9B"},
                     "engineConfig": engine}}


def test_model(name: str = MODEL) -> dict[str, Any]:
    """A ClusterBaseModel as OME's model agent leaves it once downloaded: format, framework and architecture
    filled in from the weights (the runtime matcher needs them)."""
    return {"apiVersion": "ome.io/v1beta1", "kind": "ClusterBaseModel", "metadata": {"name": name},
            "spec": {"vendor": "qwen", "disabled": False, "displayName": "qwen.qwen3-8b",
                     "modelFormat": {"name": "safetensors", "version": "1.0.0"},
                     "modelFramework": {"name": "transformers", "version": "4.51.0"},
                     "modelArchitecture": "Qwen3ForCausalLM", "modelParameterSize": "8.19B",
                     "storage": {"storageUri": "hf://Qwen/Qwen3-8B", "path": MODEL_PATH}}}


test_runtime.__test__ = False  # type: ignore[attr-defined]
test_model.__test__ = False  # type: ignore[attr-defined]


def crd_errors(obj: dict[str, Any]) -> str:
    """Why the real CRD refuses ``obj`` (strict: unknown fields count); "" when valid or the CRDs are absent."""
    if not REFERENCE_CRDS.is_dir():
        return ""
    crd = load_crds(REFERENCE_CRDS)[f"{PLURAL_OF[obj['kind']]}.ome.io"]
    code, message, _, _ = admit(obj, crd, "Strict")
    return message if code else ""


@dataclass
class FakeCluster:
    store: Store
    api: FakeApiServer
    controller: FakeOmeController
    kubeconfig: Path

    def add_node(self, name: str, gpus: int, labels: dict[str, str] | None = None,
                 taints: list[dict[str, str]] | None = None) -> None:
        alloc = {"cpu": "96", "memory": "1Ti", "pods": "110"}
        if gpus:
            alloc["nvidia.com/gpu"] = str(gpus)
        self.store.put("nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"taints": list(taints)} if taints else {},
            "status": {"capacity": dict(alloc), "allocatable": dict(alloc)}})

    def taint_gpu_nodes(self, taint: dict[str, str] | None = None) -> None:
        """Taint every GPU node as a managed cloud does (``nvidia.com/gpu=present:NoSchedule``)."""
        for node in self.store.list("nodes"):
            if "nvidia.com/gpu" in (node.get("status") or {}).get("allocatable", {}):
                self.store.update("nodes", "", node["metadata"]["name"], lambda o: o.setdefault("spec", {})
                                  .setdefault("taints", []).append(dict(taint or GPU_TAINT)))

    def add_namespace(self, name: str) -> None:
        self.store.put("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                                      "status": {"phase": "Active"}})

    def put(self, obj: dict[str, Any]) -> None:
        """Store an ome.io object after checking it against the real CRD (the fixtures must be valid)."""
        problem = crd_errors(obj)
        assert not problem, problem
        ns = obj["metadata"].get("namespace", "")
        self.store.put(PLURAL_OF[obj["kind"]], {**obj, "metadata": {**obj["metadata"], **({"namespace": ns}
                                                                                          if ns else {})}})

    def install(self, runtime: bool = True, model: bool = True, model_on: list[str] | None = None) -> None:
        """The test runtime, and the test model already downloaded: Ready on ``model_on`` (default: every GPU
        node), those nodes labelled as OME's model agent labels them."""
        if runtime:
            self.put(test_runtime())
        if model:
            nodes = model_on if model_on is not None else [
                n["metadata"]["name"] for n in self.store.list("nodes")
                if "nvidia.com/gpu" in (n.get("status") or {}).get("allocatable", {})]
            self.controller.label_nodes(model_label(MODEL), nodes)
            body = test_model()
            body["status"] = {"state": "Ready" if nodes else "In_Transit", "nodesReady": nodes}
            self.put(body)

    def ours(self) -> list[str]:
        """Every object a run of ours may leave: InferenceServices, their pods, labelled runtimes/models."""
        left = [f"isvc/{o['metadata']['name']}" for o in self.store.list("inferenceservices")]
        left += [f"pod/{o['metadata']['name']}" for o in self.store.list("pods")
                 if "ome.io/inferenceservice" in (o["metadata"].get("labels") or {})]
        for plural in ("clusterservingruntimes", "clusterbasemodels", "namespaces"):
            left += [f"{plural}/{o['metadata']['name']}" for o in self.store.list(plural)
                     if "sglang-tune.io/run" in (o["metadata"].get("labels") or {})]
        return left

    def reset(self, gpus_per_node: tuple[int, ...] = (4,)) -> None:
        """Back to a fresh cluster (shared fake server): no faults, untainted nodes, the test runtime and model."""
        ctl = self.controller
        ctl.fault, ctl.isvc_warning, ctl.model_nodes = None, None, None
        ctl.default_deployment_mode, ctl.knative = "RawDeployment", False
        ctl.kubelet.gpu_quota.clear()
        self.api.denied.clear()
        self.api.unauthorized, self.api.ome_installed = False, True
        for plural in ("inferenceservices", "pods", "events", "replicasets", "services", "nodes",
                       "clusterservingruntimes", "clusterbasemodels", "servingruntimes", "basemodels"):
            for o in self.store.list(plural):
                self.store.delete(plural, o["metadata"].get("namespace", ""), o["metadata"]["name"])
        for i, gpus in enumerate(gpus_per_node):
            self.add_node(f"gpu-node-{i}", gpus)
        self.install()


def start_cluster(tmp: Path, *, gpus_per_node: tuple[int, ...] = (4,), crds: bool = True,
                  tainted: bool = False) -> FakeCluster:
    store = Store()
    api = FakeApiServer(store, REFERENCE_CRDS if REFERENCE_CRDS.is_dir() else None)
    api.start()
    controller = FakeOmeController(store, api, tmp)
    cluster = FakeCluster(store, api, controller, write_kubeconfig(tmp / "kubeconfig", api.url))
    cluster.add_namespace("default")
    for i, gpus in enumerate(gpus_per_node):
        cluster.add_node(f"gpu-node-{i}", gpus, taints=[dict(GPU_TAINT)] if tainted and gpus else None)
    api.ome_installed = crds
    return cluster


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run a fake OME cluster on 127.0.0.1 until Ctrl-C")
    p.add_argument("--gpus", type=int, nargs="+", default=[4], help="nvidia.com/gpu of each node")
    p.add_argument("--kubeconfig", type=Path, default=None, help="where to write the kubeconfig")
    p.add_argument("--tainted", action="store_true",
                   help="taint GPU nodes nvidia.com/gpu=present:NoSchedule, as managed clouds do")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="fake-ome-"))
    cluster = start_cluster(tmp, gpus_per_node=tuple(args.gpus), tainted=args.tainted)
    cluster.install()
    if args.kubeconfig:
        args.kubeconfig.write_text(cluster.kubeconfig.read_text())
    print(f"fake cluster at {cluster.api.url}; kubeconfig: {args.kubeconfig or cluster.kubeconfig}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.controller.close()
        cluster.api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
