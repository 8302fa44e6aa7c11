"""The ome backend against the fake cluster: pre-flight, placement, start/stop and endpoints.

The fault table (every injected failure, against one shared fake server) is ``test_ome_faults.py``."""

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
from pytest_sglang_tune.errors import BackendUnavailable, DeployError, NotReady

pytestmark = pytest.mark.kube


def spec(gpus: int = 1, **settings: Any) -> DeploymentSpec:
    base: dict[str, Any] = {"runtime": RUNTIME, "model": MODEL, "ready_timeout": 300}
    base.update(settings)
    return DeploymentSpec(suite="kube-unit", config_id=f"mem-fraction-static=0.7,gpus={gpus}",
                          model_path="Qwen/Qwen3-8B", served_model_name="qwen3-8b",
                          server_args={"--mem-fraction-static": 0.7}, argv=("--mem-fraction-static", "0.7"),
                          gpus=gpus, settings=base, run_id="unit-run")


def backend(cluster: FakeCluster, **kw: Any) -> OmeBackend:
    return OmeBackend(kubeconfig=str(cluster.kubeconfig), run_id="unit-run", port_forward="client", **kw)


@pytest.fixture
def cluster_at(tmp_path: Path) -> Any:
    """``cluster_at(gpus_per_node=..., tainted=...)``: a fresh fake cluster, stopped after the test."""
    made: list[FakeCluster] = []

    def make(**kw: Any) -> FakeCluster:
        made.append(start_cluster(tmp_path, **kw))
        return made[-1]
    yield make
    for c in made:
        c.controller.close()
        c.api.stop()


# --- pre-flight ------------------------------------------------------------------------------------------------

def test_capacity_counts_free_gpus_per_node_and_fits_needs_one_node(cluster_at: Any) -> None:
    cluster = cluster_at(gpus_per_node=(4, 2, 0))
    cluster.add_node("h100-0", 8, labels={"gpu": "h100"})
    cluster.install()
    cluster.store.put("pods", {"metadata": {"name": "other-tenant", "namespace": "default"},
                               "spec": {"nodeName": "h100-0", "containers": [{"name": "c", "image": "i",
                                        "resources": {"limits": {"nvidia.com/gpu": "3"}}}],
                                        "initContainers": [{"name": "warmup", "image": "i", "resources": {
                                            "limits": {"nvidia.com/gpu": "2"}}}]},  # counts once: max, not sum
                               "status": {"phase": "Running"}})
    b = backend(cluster)
    cap = b.capacity()
    assert cap.gpus == 4 + 2 + 5
    assert "4 node(s), 3 with nvidia.com/gpu, 14 allocatable, 11 free, largest free on one node 5" in cap.source
    ok = {"runtime": RUNTIME, "model": MODEL}
    assert b.fits(5, ok) is None
    assert b.fits(6, ok) == ("config needs 6 nvidia.com/gpu on one node (tp × dp × pp) but the largest free on any "
                             "node it can run on is 5 (3 such node(s), 11 free in total)")
    assert b.fits(4, {**ok, "node_selector": {"gpu": "h100"}}) is None
    assert "largest free on any node it can run on is 5 (1 such node(s)" in \
        str(b.fits(6, {**ok, "node_selector": {"gpu": "h100"}}))
    assert backend(cluster, gpus=2).capacity().gpus == 2  # --gpus caps the parallel budget
    # pods are listed node by node (never every pod of the cluster), only on GPU nodes
    pod_lists = [p for m, p in cluster.api.requests if p.startswith("/api/v1/pods")]
    assert len(pod_lists) == 2 * 3 and all("spec.nodeName%3D" in p for p in pod_lists), pod_lists


def test_a_tainted_cluster_has_capacity_for_a_runtime_that_tolerates_the_taint(cluster_at: Any) -> None:
    cluster = cluster_at(gpus_per_node=(4, 4), tainted=True)
    cluster.install()
    b = backend(cluster)
    cap = b.capacity()
    assert cap.gpus == 8 and "2 with nvidia.com/gpu, 2 of them tainted" in cap.source
    # the runtime's own engineConfig.tolerations count, not only the suite's
    assert b.fits(4, {"runtime": RUNTIME, "model": MODEL}) is None
    assert b.fits(4, {"runtime": RUNTIME, "model": MODEL,
                      "tolerations": [{"key": "other", "operator": "Exists"}]}) is None


@pytest.mark.parametrize(("case", "message"), [
    ("unreachable", "ome: cannot reach the Kubernetes API at http://127.0.0.1:"),
    ("no_kubeconfig", "does not exist (from --sglang-kubeconfig)"),
    ("missing_crd", "OME is not installed in the cluster at http://127.0.0.1:"),
    ("unauthorized", "refused our credentials (HTTP 401 Unauthorized): Unauthorized; renew the token"),
    ("forbidden", 'not allowed to list inferenceservices.ome.io in namespace \'default\' at http://127.0.0.1:'),
])
def test_could_not_ask_is_an_error_of_the_session_not_zero_gpus(cluster_at: Any, tmp_path: Path, case: str,
                                                                 message: str) -> None:
    cluster = cluster_at(crds=case != "missing_crd")
    kubeconfig = cluster.kubeconfig
    if case == "unreachable":
        kubeconfig = write_kubeconfig(tmp_path / "dead", f"http://127.0.0.1:{free_port()}")
    if case == "no_kubeconfig":
        kubeconfig = tmp_path / "missing"
    cluster.api.unauthorized = case == "unauthorized"
    if case == "forbidden":
        cluster.api.deny("list", "inferenceservices")
    b = OmeBackend(kubeconfig=str(kubeconfig), run_id="r")
    start = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        b.capacity()
    assert time.monotonic() - start < 2.0
    assert message in info.value.bare_message, info.value.bare_message
    if case == "missing_crd":
        assert "missing CRDs inferenceservices.ome.io" in info.value.bare_message
    if case == "forbidden":
        assert ('inferenceservices.ome.io is forbidden' not in info.value.bare_message and
                'User "tester" cannot list resource "inferenceservices"' in info.value.bare_message)
        assert "deploy/ome-rbac.yaml" in info.value.bare_message


def test_zero_gpus_is_a_number_not_an_error(cluster_at: Any) -> None:
    cluster = cluster_at(gpus_per_node=(0, 0))
    cap = backend(cluster).capacity()
    assert cap.gpus == 0 and "2 node(s), 0 with nvidia.com/gpu, 0 allocatable" in cap.source


def test_namespaced_user_gets_a_degraded_preflight_that_needs_gpus(cluster_at: Any) -> None:
    cluster = cluster_at()
    cluster.install()
    cluster.api.deny("list", "nodes")
    with pytest.raises(BackendUnavailable, match=r"cannot list nodes .*HTTP 403 Forbidden.*pass --gpus=N"):
        backend(cluster).capacity()
    b = backend(cluster, gpus=2)
    cap = b.capacity()
    assert (cap.gpus, cap.checked) == (2, False)
    assert "capacity not checked" in cap.source
    assert any(n.startswith("capacity not checked: this user may not list nodes") for n in b.session_notes)
    assert b.fits(2, {"runtime": RUNTIME, "model": MODEL}) is None
    assert "needs 3 GPU(s) but 2 available" in str(b.fits(3, {"runtime": RUNTIME, "model": MODEL}))


# --- placement: what no amount of waiting fixes fails before anything is deployed -------------------------------

@pytest.mark.parametrize(("setup", "message"), [
    ("runtime_without_toleration", "no GPU node can run this config: 1 GPU node with untolerated taint "
                                   "nvidia.com/gpu=present:NoSchedule (the pod tolerates: none;"),
    ("model_nowhere", "1 GPU node without the model: ClusterBaseModel qwen3-8b is Ready on no schedulable GPU node "
                      "(OME requires node label models.ome.io/clusterbasemodel.qwen3-8b=Ready"),
    ("selector", "1 GPU node not matching the pod's node selector {'gpu': 'a100'}"),
])
def test_a_config_no_node_can_take_fails_at_once_with_the_cause(cluster_at: Any, setup: str, message: str) -> None:
    cluster = cluster_at(tainted=setup == "runtime_without_toleration")
    cluster.add_node("cpu-0", 0)   # the model was downloaded here only (its storage.nodeAffinity picked it)
    cluster.install(runtime=False, model_on=["cpu-0"] if setup == "model_nowhere" else None)
    cluster.put(test_runtime(tolerations=setup != "runtime_without_toleration"))
    b = backend(cluster)
    settings = {"node_selector": {"gpu": "a100"}} if setup == "selector" else {}
    assert b.fits(1, {"runtime": RUNTIME, "model": MODEL, **settings}) is None  # not a capacity matter: no skip
    start = time.monotonic()
    with pytest.raises(DeployError) as info:
        b.start(spec(**settings))
    assert time.monotonic() - start < 3
    assert message in info.value.bare_message, info.value.bare_message
    assert "no room" not in info.value.bare_message
    assert cluster.store.list("inferenceservices") == []


def test_a_multi_node_runtime_is_refused_before_deploying(cluster_at: Any) -> None:
    cluster = cluster_at()
    cluster.install(runtime=False)
    cluster.put(test_runtime(multi_node=True))
    with pytest.raises(DeployError, match=r"ClusterServingRuntime 'srt-qwen3-8b' is a multi-node runtime .*"
                                          r"multi-node tuning is not supported yet"):
        backend(cluster).start(spec())
    assert cluster.store.list("inferenceservices") == []


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
        (mode_seen,) = fake_cluster.controller.modes_seen.values()
        assert mode_seen == "RawDeployment"
    finally:
        b.stop(d)
    assert fake_cluster.ours() == []
    b.stop(d)  # idempotent


def test_a_tainted_cluster_deploys_with_the_runtime_toleration_kept(cluster_at: Any) -> None:
    cluster = cluster_at(tainted=True)
    cluster.install()
    b = backend(cluster, url_mode="direct")
    own = {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    d = b.start(spec(tolerations=[own]))
    try:
        (isvc,) = cluster.store.list("inferenceservices")
        assert isvc["spec"]["engine"]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, own]
        (pod,) = cluster.store.list("pods")
        assert pod["spec"]["nodeName"] == "gpu-node-0"
    finally:
        b.stop(d)
    assert cluster.ours() == []


def test_a_serverless_cluster_default_does_not_reject_our_pinned_deployments(fake_cluster: FakeCluster) -> None:
    fake_cluster.controller.default_deployment_mode = "Serverless"   # and no Knative
    b = backend(fake_cluster, url_mode="direct")
    d = b.start(spec())
    b.stop(d)
    assert fake_cluster.controller.modes_seen and set(fake_cluster.controller.modes_seen.values()) == \
        {"RawDeployment"}


def test_direct_mode_prefers_the_engine_service_over_an_ingress_host(fake_cluster: FakeCluster,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = fake_cluster.controller.kubelet.set_isvc_status

    def ingress(ns: str, name: str, status: dict[str, Any]) -> None:
        if "url" in status:
            status = {**status, "url": f"http://{name}.{ns}.example.com"}
        real(ns, name, status)
    monkeypatch.setattr(fake_cluster.controller.kubelet, "set_isvc_status", ingress)
    b = backend(fake_cluster, url_mode="direct")
    d = b.start(spec())
    try:
        name = d.info["inference_service"]
        assert d.endpoint.base_url == f"http://{name}-engine.default.svc.cluster.local:8080"
        assert d.info["endpoint_mode"] == "direct (engine Service)"
    finally:
        b.stop(d)


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


def test_a_sidecar_restart_is_not_a_server_crash(fake_cluster: FakeCluster) -> None:
    fake_cluster.controller.fault = "sidecar_restart"
    b = backend(fake_cluster, url_mode="direct")
    d = b.start(spec())
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert d.poll() is None
            time.sleep(0.1)
        (pod,) = fake_cluster.store.list("pods")
        restarts = {s["name"]: s["restartCount"] for s in pod["status"]["containerStatuses"]}
        assert restarts == {"ome-container": 0, "log-shipper": 1}   # the sidecar did restart
    finally:
        b.stop(d)


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
def test_missing_runtime_or_model_fails_before_creating_anything(cluster_at: Any, missing: str,
                                                                 message: str) -> None:
    cluster = cluster_at()
    cluster.install(runtime=missing != "runtime", model=missing != "model")
    start = time.monotonic()
    with pytest.raises(DeployError, match=message.replace("(", r"\(").replace(")", r"\)")):
        backend(cluster).start(spec())
    assert time.monotonic() - start < 3
    assert cluster.store.list("inferenceservices") == []


def test_a_model_the_run_creates_is_awaited_until_downloaded_then_removed(cluster_at: Any) -> None:
    cluster = cluster_at()
    cluster.controller.download_s = 2.5   # OME's model agent fetching the weights
    b = backend(cluster, url_mode="direct")
    d = b.start(spec(create_runtime=test_runtime()["spec"], create_model=test_model()["spec"],
                     namespace="tune-ns", create_namespace=True))
    model = cluster.store.get("clusterbasemodels", "", MODEL)
    assert model["status"]["state"] == "Ready" and model["metadata"]["labels"]["sglang-tune.io/run"] == "unit-run"
    assert d.info["namespace"] == "tune-ns"
    b.stop(d)
    b.close()
    assert cluster.ours() == []
    assert any("removed what this run created: ClusterBaseModel qwen3-8b, ClusterServingRuntime srt-qwen3-8b"
               in n for n in b.session_notes), b.session_notes


def test_sweep_removes_only_objects_of_dead_owners(fake_cluster: FakeCluster) -> None:
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, owner in (("left-by-dead", f"{socket.gethostname()}:{dead.pid}"),
                        ("alive-here", f"{socket.gethostname()}:1"), ("other-host", "elsewhere:42")):
        fake_cluster.put({
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



def test_watch_streams_resume_and_relist_after_410_gone(fake_cluster: FakeCluster,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import client, config

    from pytest_sglang_tune.backends import ome_watch

    monkeypatch.setattr(ome_watch, "WATCH_S", 1)
    api = config.new_client_from_config(config_file=str(fake_cluster.kubeconfig))
    streams = ome_watch.Streams(api)
    streams.add("node", client.CoreV1Api(api).list_node, label_selector="watched=yes")
    try:
        fake_cluster.add_node("w-0", 0, labels={"watched": "yes"})
        fake_cluster.store.history_limit = 2
        for i in range(6):   # churn the stream does not see: its resourceVersion falls out of the history
            fake_cluster.add_node(f"churn-{i}", 0)
        time.sleep(1.5)      # the stream reopens from its old resourceVersion: 410 Gone, then lists afresh
        fake_cluster.add_node("w-1", 0, labels={"watched": "yes"})
        seen: list[str] = []
        deadline = time.monotonic() + 5
        while "w-1" not in seen and time.monotonic() < deadline:
            item = streams.get(0.2)
            if item is not None:
                assert item[0] == "node", item
                seen.append(item[2]["metadata"]["name"])
        assert "w-1" in seen
        watches = [p for m, p in fake_cluster.api.requests if p.startswith("/api/v1/nodes") and "watch=true" in p]
        resumed = ["resourceVersion=" in p for p in watches]
        assert True in resumed                                   # it resumes rather than relisting every time,
        assert False in resumed[resumed.index(True):]            # and relisted after the 410
    finally:
        streams.stop()
