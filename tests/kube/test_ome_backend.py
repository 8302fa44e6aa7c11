"""The ome backend against the fake cluster: pre-flight, start/stop, endpoints, and the fail-fast table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
from fakeapi import write_kubeconfig
from fakecluster import MODEL, RUNTIME, FakeCluster, start_cluster, test_model, test_runtime

from pytest_sglang_tune.backends.base import DeploymentSpec
from pytest_sglang_tune.backends.local import free_port
from pytest_sglang_tune.backends.ome import OmeBackend
from pytest_sglang_tune.errors import BackendError, CapacityError, DeployError, InfeasibleConfig, NotReady

pytestmark = pytest.mark.kube


def spec(gpus: int = 1, **settings: Any) -> DeploymentSpec:
    base: dict[str, Any] = {"runtime": RUNTIME, "model": MODEL, "ready_timeout": 300}
    base.update(settings)
    return DeploymentSpec(suite="kube-unit", config_id=f"mem-fraction-static=0.7,gpus={gpus}",
                          model_path="Qwen/Qwen3-8B", served_model_name="qwen3-8b",
                          server_args={"--mem-fraction-static": 0.7}, argv=("--mem-fraction-static", "0.7"),
                          gpus=gpus, settings=base, run_id="unit-run")


def backend(cluster: FakeCluster, **kw: Any) -> OmeBackend:
    b = OmeBackend(kubeconfig=str(cluster.kubeconfig), run_id="unit-run", port_forward="client", **kw)
    return b


# --- pre-flight ------------------------------------------------------------------------------------------------

def test_capacity_counts_free_gpus_per_node_and_fits_needs_one_node(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, gpus_per_node=(4, 2, 0))
    try:
        cluster.add_node("h100-0", 8, labels={"gpu": "h100"})
        cluster.store.put("pods", {"metadata": {"name": "other-tenant", "namespace": "default"},
                                   "spec": {"nodeName": "h100-0", "containers": [{"name": "c", "image": "i",
                                            "resources": {"limits": {"nvidia.com/gpu": "3"}}}]},
                                   "status": {"phase": "Running"}})
        b = backend(cluster)
        cap = b.capacity()
        assert cap.gpus == 4 + 2 + 5
        assert "4 node(s), 3 with nvidia.com/gpu, 14 allocatable, 11 free, largest free on one node 5" in cap.source
        assert b.fits(5) is None
        assert b.fits(6) == ("config needs 6 nvidia.com/gpu on one node (tp × dp × pp) but the largest free on any "
                             "eligible node is 5 (3 eligible node(s), 11 free in total)")
        assert b.fits(4, {"node_selector": {"gpu": "h100"}}) is None
        assert "largest free on any eligible node matching node selector {'gpu': 'a100'} is 0" in \
            str(b.fits(1, {"node_selector": {"gpu": "a100"}}))
        assert backend(cluster, gpus=2).capacity().gpus == 2  # --gpus caps the parallel budget
    finally:
        cluster.controller.close()
        cluster.api.stop()


@pytest.mark.parametrize(("case", "reason"), [
    ("zero_gpus", "ome: ... no nvidia.com/gpu"),
    ("missing_crd", "OME is not installed"),
    ("unreachable", "Kubernetes API not reachable"),
    ("no_kubeconfig", "does not exist"),
])
def test_capacity_problems_are_zero_gpus_with_a_reason_within_a_second(tmp_path: Path, case: str,
                                                                       reason: str) -> None:
    cluster = start_cluster(tmp_path, gpus_per_node=(0, 0) if case == "zero_gpus" else (4,),
                            crds=case != "missing_crd")
    try:
        kubeconfig = cluster.kubeconfig
        if case == "unreachable":
            kubeconfig = write_kubeconfig(tmp_path / "dead", f"http://127.0.0.1:{free_port()}")
        if case == "no_kubeconfig":
            kubeconfig = tmp_path / "missing"
        b = OmeBackend(kubeconfig=str(kubeconfig), run_id="r")
        start = time.monotonic()
        cap = b.capacity()
        elapsed = time.monotonic() - start
        assert cap.gpus == 0
        if case == "zero_gpus":
            assert "2 node(s), 0 with nvidia.com/gpu, 0 allocatable" in cap.source
        else:
            assert reason in cap.source, cap.source
        if case == "missing_crd":
            assert "missing CRDs inferenceservices.ome.io" in cap.source
        assert elapsed < 1.0, elapsed
        assert b.capacity() is cap  # once per session
    finally:
        cluster.controller.close()
        cluster.api.stop()


# --- a config's life -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["tunnel", "direct"])
def test_start_serves_the_config_and_stop_leaves_nothing(fake_cluster: FakeCluster, mode: str) -> None:
    b = backend(fake_cluster, url_mode=mode)
    d = b.start(spec())
    try:
        info = requests.get(d.endpoint.url("/server_info"), timeout=10).json()
        assert info["mem_fraction_static"] == 0.7
        assert d.info["endpoint_mode"].startswith(mode)
        assert d.info["namespace"] == "default" and d.info["inference_service"].startswith("kube-unit-")
        assert d.launch_command[-4:] == ["--mem-fraction-static", "0.7", "--served-model-name", "qwen3-8b"]
        assert "Qwen/Qwen3-8B" in d.launch_command  # $(MODEL_PATH) expanded
        assert d.poll() is None
        assert "simulated SGLang" in d.logs(50)
        (argv,) = fake_cluster.controller.argv_seen.values()
        assert argv[argv.index("--mem-fraction-static") + 1] == "0.7"
    finally:
        b.stop(d)
    assert fake_cluster.ours() == []
    b.stop(d)  # idempotent


def test_poll_reports_a_server_that_dies_after_ready(fake_cluster: FakeCluster) -> None:
    b = backend(fake_cluster, url_mode="direct")
    d = b.start(spec())
    try:
        (proc,) = fake_cluster.controller.procs.values()
        proc.kill()
        deadline = time.monotonic() + 10
        while d.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "CrashLoopBackOff" in str(d.poll())
    finally:
        b.stop(d)
    assert fake_cluster.ours() == []


FAULTS = [
    ("unschedulable", CapacityError, "cluster has no room: InferenceService kube-unit-*unschedulable for *"
                                     "Insufficient nvidia.com/gpu*"),
    ("image_pull", DeployError, "*pull*image*"),
    ("crash", NotReady, "config crashed: *CrashLoopBackOff: container ome-container exited with code 3*"),
    ("oom", InfeasibleConfig, "out of memory: *OOMKilled*"),
    ("model_failure", NotReady, "config crashed: *ModelLoadFailed: weights for the model could not be loaded*"),
]


@pytest.mark.parametrize(("fault", "error", "pattern"), FAULTS, ids=[f[0] for f in FAULTS])
def test_faults_fail_fast_with_the_reason(fake_cluster: FakeCluster, fault: str, error: type[BackendError],
                                         pattern: str) -> None:
    import fnmatch

    fake_cluster.controller.fault = fault
    b = backend(fake_cluster)
    start = time.monotonic()
    with pytest.raises(error) as info:
        b.start(spec())  # readiness timeout 300 s
    elapsed = time.monotonic() - start
    assert elapsed < 10, elapsed
    assert fnmatch.fnmatch(info.value.bare_message, pattern), info.value.bare_message
    if fault == "crash":
        assert "illegal memory access" in info.value.log_tail
    assert fake_cluster.ours() == []


def test_not_enough_gpus_on_the_node_is_no_room(fake_cluster: FakeCluster) -> None:
    with pytest.raises(CapacityError, match=r"cluster has no room.*0/1 nodes are available"):
        backend(fake_cluster).start(spec(gpus=8, unschedulable_grace=1))
    assert fake_cluster.ours() == []


def test_never_ready_times_out_with_the_last_state(fake_cluster: FakeCluster) -> None:
    fake_cluster.controller.fault = "never_ready"
    start = time.monotonic()
    with pytest.raises(NotReady, match=r"not Ready after 2s \(last: no status yet\)"):
        backend(fake_cluster).start(spec(ready_timeout=2))
    assert time.monotonic() - start < 6
    assert fake_cluster.ours() == []


@pytest.mark.parametrize(("missing", "message"), [
    ("runtime", "ClusterServingRuntime 'srt-qwen3-8b' (runtime) not found in the cluster; existing: none"),
    ("model", "ClusterBaseModel 'qwen3-8b' (model) not found in the cluster; existing: none"),
])
def test_missing_runtime_or_model_fails_before_creating_anything(tmp_path: Path, missing: str,
                                                                 message: str) -> None:
    cluster = start_cluster(tmp_path)
    try:
        cluster.install(runtime=missing != "runtime", model=missing != "model")
        start = time.monotonic()
        with pytest.raises(DeployError, match=message.replace("(", r"\(").replace(")", r"\)")):
            backend(cluster).start(spec())
        assert time.monotonic() - start < 3
        assert cluster.store.list("inferenceservices") == []
    finally:
        cluster.controller.close()
        cluster.api.stop()


def test_runtime_and_model_created_on_request_are_deleted_at_close(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    try:
        b = backend(cluster, url_mode="direct")
        d = b.start(spec(create_runtime=test_runtime()["spec"], create_model=test_model()["spec"],
                         namespace="tune-ns", create_namespace=True))
        assert cluster.store.get("clusterservingruntimes", "", RUNTIME)["metadata"]["labels"][
            "sglang-tune.io/run"] == "unit-run"
        assert d.info["namespace"] == "tune-ns"
        b.stop(d)
        b.close()
        assert cluster.ours() == []
        assert any("removed what this run created: ClusterBaseModel qwen3-8b, ClusterServingRuntime srt-qwen3-8b"
                   in n for n in b.session_notes), b.session_notes
    finally:
        cluster.controller.close()
        cluster.api.stop()


def test_sweep_removes_only_objects_of_dead_owners(fake_cluster: FakeCluster) -> None:
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    for name, owner in (("left-by-dead", f"{socket.gethostname()}:{dead.pid}"),
                        ("alive-here", f"{socket.gethostname()}:1"), ("other-host", "elsewhere:42")):
        fake_cluster.store.put("inferenceservices", {
            "apiVersion": "ome.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"app.kubernetes.io/managed-by": "pytest-sglang-tune"},
                         "annotations": {"sglang-tune.io/owner": owner}},
            "spec": {"model": {"name": "nope"}, "runtime": {"name": "nope"}}})
    b = backend(fake_cluster, sweep=True)
    assert b.capacity().gpus == 4
    left = sorted(o["metadata"]["name"] for o in fake_cluster.store.list("inferenceservices"))
    assert left == ["alive-here", "other-host"]
    assert any("removed InferenceService default/left-by-dead" in n for n in b.session_notes)
    assert any("kept 2" in n for n in b.session_notes)
