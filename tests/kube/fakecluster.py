"""A fake OME cluster (API server + OME controller) for the kube tests, and as a script for manual runs:

    python tests/kube/fakecluster.py --gpus 4 4 --kubeconfig /tmp/fake-kubeconfig
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

from fakeapi import FakeApiServer, Store, write_kubeconfig
from fakeome import FakeOmeController

REFERENCE_CRDS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "ome-crds"
RUNTIME = "srt-qwen3-8b"
MODEL = "qwen3-8b"
MODEL_PATH = "Qwen/Qwen3-8B"   # the ClusterBaseModel's storage.path: what $(MODEL_PATH) expands to


def test_runtime(name: str = RUNTIME) -> dict[str, Any]:
    """A ClusterServingRuntime shaped like OME's shipped SGLang runtimes: the launch line in runner.command."""
    return {"apiVersion": "ome.io/v1beta1", "kind": "ClusterServingRuntime", "metadata": {"name": name},
            "spec": {"supportedModelFormats": [{"modelFormat": {"name": "safetensors"},
                                                "modelFramework": {"name": "transformers"}, "autoSelect": False}],
                     "engineConfig": {"runner": {
                         "name": "ome-container", "image": "docker.io/lmsysorg/sglang:v0.5.5.post3-cu129-amd64",
                         "ports": [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}],
                         "command": ["python3", "-m", "sglang.launch_server", "--host", "0.0.0.0", "--port",
                                     "8080", "--enable-metrics", "--log-requests", "--model-path", "$(MODEL_PATH)",
                                     "--tp-size", "1", "--mem-frac", "0.9", "--served-model-name",
                                     "Qwen/Qwen3-8B"],
                         "resources": {"requests": {"cpu": 10, "memory": "30Gi", "nvidia.com/gpu": 1},
                                       "limits": {"cpu": 10, "memory": "30Gi", "nvidia.com/gpu": 1}}}}}}


def test_model(name: str = MODEL) -> dict[str, Any]:
    return {"apiVersion": "ome.io/v1beta1", "kind": "ClusterBaseModel", "metadata": {"name": name},
            "spec": {"vendor": "qwen", "storage": {"storageUri": "hf://Qwen/Qwen3-8B", "path": MODEL_PATH}}}


test_runtime.__test__ = False  # type: ignore[attr-defined]
test_model.__test__ = False  # type: ignore[attr-defined]


@dataclass
class FakeCluster:
    store: Store
    api: FakeApiServer
    controller: FakeOmeController
    kubeconfig: Path

    def add_node(self, name: str, gpus: int, labels: dict[str, str] | None = None) -> None:
        alloc = {"cpu": "96", "memory": "1Ti", "pods": "110"}
        if gpus:
            alloc["nvidia.com/gpu"] = str(gpus)
        self.store.put("nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {}, "status": {"capacity": dict(alloc), "allocatable": dict(alloc)}})

    def add_namespace(self, name: str) -> None:
        self.store.put("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                                      "status": {"phase": "Active"}})

    def install(self, runtime: bool = True, model: bool = True) -> None:
        if runtime:
            self.store.put("clusterservingruntimes", test_runtime())
        if model:
            self.store.put("clusterbasemodels", test_model())

    def ours(self) -> list[str]:
        """Every object a run of ours may leave: InferenceServices, their pods, labelled runtimes/models."""
        left = [f"isvc/{o['metadata']['name']}" for o in self.store.list("inferenceservices")]
        left += [f"pod/{o['metadata']['name']}" for o in self.store.list("pods")]
        for plural in ("clusterservingruntimes", "clusterbasemodels", "namespaces"):
            left += [f"{plural}/{o['metadata']['name']}" for o in self.store.list(plural)
                     if "sglang-tune.io/run" in (o["metadata"].get("labels") or {})]
        return left


def start_cluster(tmp: Path, *, gpus_per_node: tuple[int, ...] = (4,), crds: bool = True) -> FakeCluster:
    store = Store()
    api = FakeApiServer(store, REFERENCE_CRDS if REFERENCE_CRDS.is_dir() else None)
    api.start()
    controller = FakeOmeController(store, api, tmp)
    cluster = FakeCluster(store, api, controller, write_kubeconfig(tmp / "kubeconfig", api.url))
    cluster.add_namespace("default")
    for i, gpus in enumerate(gpus_per_node):
        cluster.add_node(f"gpu-node-{i}", gpus)
    api.ome_installed = crds
    return cluster




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run a fake OME cluster on 127.0.0.1 until Ctrl-C")
    p.add_argument("--gpus", type=int, nargs="+", default=[4], help="nvidia.com/gpu of each node")
    p.add_argument("--kubeconfig", type=Path, default=None, help="where to write the kubeconfig")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="fake-ome-"))
    cluster = start_cluster(tmp, gpus_per_node=tuple(args.gpus))
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
