"""The fault table: every failure the ome backend must recognise, injected into one shared fake cluster.

Each case fails within 10 s although the readiness timeout is 300 s, with an error of the right kind whose
message names the cause as Kubernetes or OME stated it, and leaves nothing behind. The fake cluster states them
as the real components do (``fakeome``, ``fakekubelet``, ``fakesched``: see their sources)."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakecluster import MODEL, FakeCluster, start_cluster, test_model, test_runtime
from test_ome_backend import backend, spec

from pytest_sglang_tune.errors import BackendError, CapacityError, DeployError, InfeasibleConfig, NotReady

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCluster]:
    """One fake API server and controller for the whole table."""
    cluster = start_cluster(tmp_path_factory.mktemp("faults"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(cluster.kubeconfig))
        mp.setenv("SGLANG_TUNE_PORT_FORWARD", "client")
        yield cluster
    cluster.controller.close()
    cluster.api.stop()


@pytest.fixture
def cluster(shared: FakeCluster) -> FakeCluster:
    shared.reset()
    return shared


def _replace(cluster: FakeCluster, obj: dict[str, Any]) -> None:
    plural = "clusterservingruntimes" if obj["kind"] == "ClusterServingRuntime" else "clusterbasemodels"
    cluster.store.delete(plural, "", obj["metadata"]["name"])
    cluster.put(obj)


def untolerated(cluster: FakeCluster) -> None:
    cluster.taint_gpu_nodes()
    _replace(cluster, test_runtime(tolerations=False))


def incompatible(cluster: FakeCluster) -> None:
    model = test_model()
    model["spec"]["modelArchitecture"] = "LlamaForCausalLM"
    model["status"] = cluster.store.get("clusterbasemodels", "", MODEL)["status"]
    _replace(cluster, model)


def disabled(cluster: FakeCluster) -> None:
    model = test_model()
    model["spec"]["disabled"] = True
    model["status"] = cluster.store.get("clusterbasemodels", "", MODEL)["status"]
    _replace(cluster, model)


def model_elsewhere(cluster: FakeCluster) -> None:
    cluster.add_node("cpu-0", 0)
    cluster.store.delete("clusterbasemodels", "", MODEL)
    for node in cluster.store.list("nodes"):
        cluster.store.update("nodes", "", node["metadata"]["name"],
                             lambda o: o["metadata"]["labels"].pop(f"models.ome.io/clusterbasemodel.{MODEL}", None))
    cluster.install(runtime=False, model_on=["cpu-0"])


def busy(cluster: FakeCluster) -> None:
    cluster.store.put("pods", {"metadata": {"name": "other-tenant", "namespace": "default"},
                               "spec": {"nodeName": "gpu-node-0", "containers": [{"name": "c", "image": "i",
                                        "resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
                               "status": {"phase": "Running"}})


def fault(name: str) -> Callable[[FakeCluster], None]:
    def inject(cluster: FakeCluster) -> None:
        cluster.controller.fault = name
    return inject


def isvc_warning(reason: str, message: str) -> Callable[[FakeCluster], None]:
    def inject(cluster: FakeCluster) -> None:
        cluster.controller.isvc_warning = (reason, message)
    return inject


def quota(cluster: FakeCluster) -> None:
    cluster.controller.kubelet.gpu_quota["default"] = 0


def no_event_watch(cluster: FakeCluster) -> None:
    cluster.api.deny("watch", "events")


def tainted_unlisted(cluster: FakeCluster) -> None:
    untolerated(cluster)
    cluster.api.deny("list", "nodes")   # degraded pre-flight: only the scheduler's message is left


def multi_node(cluster: FakeCluster) -> None:
    _replace(cluster, test_runtime(multi_node=True))


Case = tuple[str, Callable[[FakeCluster], None], dict[str, Any], type[BackendError], str]
TABLE: list[Case] = [
    ("Insufficient GPU", busy, {}, CapacityError,
     "cluster has no room: InferenceService *unschedulable for *s: 0/1 nodes are available: 1 Insufficient "
     "nvidia.com/gpu.*"),
    ("untolerated taint", untolerated, {}, DeployError,
     "no GPU node can run this config: 1 GPU node with untolerated taint nvidia.com/gpu=present:NoSchedule*"),
    ("untolerated taint, seen by the scheduler", tainted_unlisted, {}, DeployError,
     "InferenceService *cannot be scheduled: 0/1 nodes are available: 1 node(s) had untolerated taint "
     "{nvidia.com/gpu: present}.*"),
    ("model Ready on no GPU node", model_elsewhere, {}, DeployError,
     "*ClusterBaseModel qwen3-8b is Ready on no schedulable GPU node*models.ome.io/clusterbasemodel.qwen3-8b=Ready*"),
    ("multi-node runtime", multi_node, {}, DeployError,
     "ClusterServingRuntime 'srt-qwen3-8b' is a multi-node runtime*not supported yet*"),
    ("ImagePullBackOff", fault("image_pull"), {}, DeployError,
     "InferenceService *, pod *: ImagePullBackOff: Back-off pulling image \"docker.io/lmsysorg/sglang:*\""),
    ("CrashLoopBackOff", fault("crash"), {}, NotReady,
     "config crashed: *CrashLoopBackOff: container ome-container exited with code 3*"),
    ("OOMKilled", fault("oom"), {}, InfeasibleConfig, "out of memory: *ome-container was OOMKilled*"),
    ("ModelLoadFailed", fault("model_failure"), {}, NotReady,
     "config crashed: *ModelLoadFailed: weights for the model could not be loaded (exit code 1)"),
    ("FailedMount", fault("failed_mount"), {}, DeployError,
     '*FailedMount: MountVolume.SetUp failed for volume "hf-token" : secret "hf-token" not found'),
    ("ResourceQuota", quota, {}, CapacityError,
     'namespace quota exhausted: *ReplicaSet *-engine-*: FailedCreate: Error creating: pods "*" is forbidden: '
     "exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=0, "
     "limited: requests.nvidia.com/gpu=0"),
    ("PodSecurity", fault("podsecurity"), {}, DeployError,
     '*FailedCreate: Error creating: pods "*" is forbidden: violates PodSecurity "restricted:latest"*'),
    ("RuntimeValidationError", incompatible, {}, DeployError,
     "*OME: RuntimeValidationError: Runtime srt-qwen3-8b does not support model qwen3-8b: runtime srt-qwen3-8b "
     "does not support model safetensors: incompatible model format"),
    ("ModelReconcileError", disabled, {}, DeployError,
     "*OME: ModelReconcileError: specified base model qwen3-8b is disabled"),
    ("ServerlessModeRejected", lambda c: None, {"deployment_mode": "Serverless"}, DeployError,
     "*OME: ServerlessModeRejected: It is not possible to use Serverless deployment mode when Knative Services "
     "are not available"),
    ("AcceleratorClassError", isvc_warning("AcceleratorClassError", "Failed to get accelerator class for engine: "
                                           'acceleratorclasses.ome.io "h200" not found'), {}, DeployError,
     '*OME: AcceleratorClassError: Failed to get accelerator class for engine: acceleratorclasses.ome.io "h200" *'),
    ("DeploymentModeError", isvc_warning("DeploymentModeError", "engine cannot use serverless deployment when "
                                         "decoder is present"), {}, DeployError,
     "*OME: DeploymentModeError: engine cannot use serverless deployment when decoder is present"),
    ("RuntimeFetchError", isvc_warning("RuntimeFetchError", "runtime srt-qwen3-8b not found in namespace default "
                                       "or at cluster scope"), {}, DeployError,
     "*OME: RuntimeFetchError: runtime srt-qwen3-8b not found in namespace default or at cluster scope"),
    ("events watch refused", no_event_watch, {}, DeployError,
     "*cannot watch event: HTTP 403 (events is forbidden: User \"tester\" cannot watch resource \"events\" in API "
     "group \"\" in the namespace \"default\")*grant list/watch on events in namespace 'default'*"),
]


@pytest.mark.parametrize(("case", "setup", "settings", "error", "pattern"), TABLE, ids=[t[0] for t in TABLE])
def test_each_fault_fails_fast_with_the_cause(cluster: FakeCluster, case: str, setup: Callable[[FakeCluster], None],
                                              settings: dict[str, Any], error: type[BackendError],
                                              pattern: str) -> None:
    setup(cluster)
    b = backend(cluster, gpus=4)
    s = spec(**settings)
    assert s.settings["ready_timeout"] >= 300
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        b.start(s)
    elapsed = time.monotonic() - start
    assert type(info.value) is error, (type(info.value), info.value.bare_message)
    assert elapsed < 10, elapsed
    assert fnmatch.fnmatchcase(info.value.bare_message, pattern), info.value.bare_message
    if case == "CrashLoopBackOff":
        assert "illegal memory access" in info.value.log_tail
    b.close()
    assert cluster.ours() == []


def test_a_first_err_image_pull_that_recovers_is_not_a_failure(cluster: FakeCluster) -> None:
    cluster.controller.fault = "errimagepull_transient"   # a registry rate limit, then the pull succeeds
    b = backend(cluster, url_mode="direct")
    d = b.start(spec())
    assert d.poll() is None
    b.stop(d)
    assert any(e["reason"] == "Failed" and "429 Too Many Requests" in e["message"]
               for e in cluster.store.list("events"))


def test_the_backend_creates_with_strict_field_validation(cluster: FakeCluster, tmp_path: Path) -> None:
    b = backend(cluster, url_mode="direct")
    b.stop(b.start(spec()))
    creates = [p for m, p in cluster.api.requests if m == "POST" and "/inferenceservices" in p]
    assert creates and all("fieldValidation=Strict" in p for p in creates), creates
