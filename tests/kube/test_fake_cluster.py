"""The fake cluster itself behaves as the real components do: scheduler, admission, selectors, watch expiry, RBAC.

A fake that can disagree with the plugin is only useful if it agrees with Kubernetes and OME; these tests pin
the behaviour it was written from (see the sources cited in each fake module)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from fakecluster import REFERENCE_CRDS, FakeCluster, crd_errors, start_cluster, test_model, test_runtime
from fakeome import model_label
from fakesched import effective_request, schedule

from pytest_sglang_tune.backends.ome_placement import model_ready_label

pytestmark = pytest.mark.kube

TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(name: str, gpus: int = 4, labels: dict[str, str] | None = None, taints: list[Any] | None = None,
         unschedulable: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"taints": taints or []}
    if unschedulable:
        spec["unschedulable"] = True
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec,
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "96"}}}


def pod_spec(gpus: int = 1, **extra: Any) -> dict[str, Any]:
    return {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}], **extra}


# --- scheduler -------------------------------------------------------------------------------------------------

def test_the_scheduler_refuses_a_pod_that_does_not_tolerate_a_taint() -> None:
    nodes = [node("gpu-0", taints=[TAINT])]
    assert schedule(pod_spec(), nodes, []) == (None, (
        "0/1 nodes are available: 1 node(s) had untolerated taint {nvidia.com/gpu: present}. preemption: 0/1 nodes "
        "are available: 1 Preemption is not helpful for scheduling."))
    tolerating = pod_spec(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert schedule(tolerating, nodes, []) == ("gpu-0", "")
    # PreferNoSchedule never filters; a toleration for another effect does not count
    assert schedule(pod_spec(), [node("gpu-0", taints=[{**TAINT, "effect": "PreferNoSchedule"}])], [])[0] == "gpu-0"
    wrong = pod_spec(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}])
    assert schedule(wrong, nodes, [])[0] is None


@pytest.mark.parametrize(("spec", "nodes", "expected"), [
    (pod_spec(5), [node("a", 4), node("b", 2)],
     "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are available: 2 No "
     "preemption victims found for incoming pod."),
    (pod_spec(1, nodeSelector={"models.ome.io/clusterbasemodel.m": "Ready"}),
     [node("a"), node("b", taints=[TAINT]), node("c", unschedulable=True)],
     "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint "
     "{nvidia.com/gpu: present}, 1 node(s) were unschedulable. preemption: 0/3 nodes are available: 3 Preemption "
     "is not helpful for scheduling."),
    (pod_spec(1, affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}}),
     [node("a", labels={"gpu": "a100"})],
     "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are "
     "available: 1 Preemption is not helpful for scheduling."),
])
def test_failed_scheduling_messages(spec: dict[str, Any], nodes: list[dict[str, Any]], expected: str) -> None:
    assert schedule(spec, nodes, []) == (None, expected)


def test_the_scheduler_counts_running_pods_and_init_containers_once() -> None:
    spec = pod_spec(2, initContainers=[{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "3"}}}])
    assert effective_request(spec, "nvidia.com/gpu") == 3   # max(app sum, largest init), not 5
    running = {"spec": {"nodeName": "a", **pod_spec(1)}, "status": {"phase": "Running"}}
    done = {"spec": {"nodeName": "a", **pod_spec(4)}, "status": {"phase": "Succeeded"}}
    assert schedule(spec, [node("a", 4)], [running, done]) == ("a", "")
    assert schedule(spec, [node("a", 3)], [running])[0] is None


def test_model_labels_follow_ome_and_agree_with_the_plugin() -> None:
    assert model_label("qwen3-8b") == "models.ome.io/clusterbasemodel.qwen3-8b"
    assert model_label("m", "team-a") == "models.ome.io/team-a.basemodel.m"
    long = "meta-llama-3-1-405b-instruct-fp8-dynamic-quantized"
    label = model_label(long)
    assert len(label.split("/", 1)[1]) <= 49 and label.endswith(long[-23:])
    for name, ns in ((long, ""), ("qwen3-8b", ""), (long, "a-rather-long-namespace"), ("m", "ns")):
        kind = "BaseModel" if ns else "ClusterBaseModel"
        assert model_ready_label(kind, name, ns) == model_label(name, ns)


# --- admission -------------------------------------------------------------------------------------------------

def isvc(**engine: Any) -> dict[str, Any]:
    return {"apiVersion": "ome.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "x", "namespace": "default"},
            "spec": {"model": {"name": "qwen3-8b"}, "runtime": {"name": "srt-qwen3-8b"},
                     "engine": {"minReplicas": 1, **engine}}}


def post(cluster: FakeCluster, body: dict[str, Any], mode: str | None) -> requests.Response:
    query = f"?fieldValidation={mode}" if mode else ""
    return requests.post(f"{cluster.api.url}/apis/ome.io/v1beta1/namespaces/default/inferenceservices{query}",
                         json=body, timeout=10)


@pytest.mark.skipif(not REFERENCE_CRDS.is_dir(), reason=f"OME CRDs not found at {REFERENCE_CRDS}")
@pytest.mark.parametrize("mode", [None, "Warn", "Ignore", "Strict"])
def test_field_validation_modes(fake_cluster: FakeCluster, mode: str | None) -> None:
    body = isvc(runner={"name": "c", "arg": ["--typo"]})
    resp = post(fake_cluster, body, mode)
    if mode == "Strict":
        assert resp.status_code == 400
        assert resp.json()["reason"] == "BadRequest"
        assert resp.json()["message"] == ('InferenceService in version "v1beta1" cannot be handled as a '
                                          'InferenceService: strict decoding error: unknown field '
                                          '"spec.engine.runner.arg"')
        return
    assert resp.status_code == 201
    assert "arg" not in resp.json()["spec"]["engine"]["runner"]   # pruned
    warning = resp.headers.get("Warning")
    if mode == "Ignore":
        assert warning is None
    else:   # Warn, also when the parameter is absent
        assert warning == '299 - "unknown field \\"spec.engine.runner.arg\\""'


def test_closing_the_cluster_while_a_pod_starts_leaves_no_process(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that creates an InferenceService and ends at once closes the cluster while the kubelet thread is
    between scheduling and starting the server: a process started then ran on, orphaned, after pytest exited."""
    cluster = start_cluster(tmp_path)
    cluster.install()
    kubelet = cluster.controller.kubelet
    reached, release = threading.Event(), threading.Event()
    runnable = kubelet._runnable

    def held(argv: list[str]) -> list[str]:
        reached.set()
        release.wait(10)
        return runnable(argv)

    monkeypatch.setattr(kubelet, "_runnable", held)
    try:
        assert post(cluster, isvc(), "Strict").status_code == 201
        assert reached.wait(10), "the kubelet never got to start the pod"
        cluster.controller.close()
        release.set()
        deadline = time.monotonic() + 2.0
        while not kubelet.procs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p.pid for p in kubelet.procs.values() if p.poll() is None] == []
    finally:
        release.set()
        kubelet.close()
        cluster.api.stop()


@pytest.mark.skipif(not REFERENCE_CRDS.is_dir(), reason=f"OME CRDs not found at {REFERENCE_CRDS}")
def test_schema_violations_are_422(fake_cluster: FakeCluster) -> None:
    resp = post(fake_cluster, isvc(minReplicas="one"), "Strict")
    assert resp.status_code == 422 and resp.json()["reason"] == "Invalid"
    assert resp.json()["message"].startswith('InferenceService.ome.io "x" is invalid: spec.engine.minReplicas: '
                                             "Invalid value: 'one' is not of type 'integer'")


@pytest.mark.skipif(not REFERENCE_CRDS.is_dir(), reason=f"OME CRDs not found at {REFERENCE_CRDS}")
def test_the_fixtures_and_ome_samples_are_valid_against_the_real_crds() -> None:
    import yaml

    for obj in (test_runtime(), test_runtime(tolerations=False), test_runtime(multi_node=True), test_model()):
        assert crd_errors(obj) == "", obj["kind"]
    samples = sorted(Path(REFERENCE_CRDS.parent / "ome-samples").glob("*.yaml"))
    docs = [yaml.safe_load(p.read_text()) for p in samples]
    checked = [d for d in docs if d["kind"] in ("InferenceService", "ClusterServingRuntime", "ClusterBaseModel")]
    assert len(checked) == 3 and all(crd_errors(d) == "" for d in checked)
    bad = test_model()
    bad["spec"]["storage"]["uri"] = "hf://x"   # a typo of storageUri
    assert crd_errors(bad) == ('ClusterBaseModel in version "v1beta1" cannot be handled as a ClusterBaseModel: '
                               'strict decoding error: unknown field "spec.storage.uri"')


# --- selectors, paging, expiry, authorization ------------------------------------------------------------------

@pytest.mark.parametrize(("path", "selector", "ok"), [
    ("/api/v1/pods", "spec.nodeName=gpu-node-0,status.phase!=Failed", True),
    ("/api/v1/namespaces/default/events", "type=Warning,involvedObject.kind=Pod", True),
    ("/api/v1/pods", "spec.containers.image=x", False),
    ("/apis/ome.io/v1beta1/namespaces/default/inferenceservices", "metadata.name=x", True),
    ("/apis/ome.io/v1beta1/namespaces/default/inferenceservices", "spec.runtime.name=x", False),
])
def test_unsupported_field_selectors_are_400(fake_cluster: FakeCluster, path: str, selector: str, ok: bool) -> None:
    resp = requests.get(fake_cluster.api.url + path, params={"fieldSelector": selector}, timeout=10)
    if ok:
        assert resp.status_code == 200
    else:
        assert resp.status_code == 400
        label = selector.split("=")[0]
        assert resp.json()["message"] == f"field label not supported: {label}"


def test_lists_page_with_limit_and_continue(fake_cluster: FakeCluster) -> None:
    for i in range(5):
        fake_cluster.add_node(f"extra-{i}", 0)
    names, token = [], None
    while True:
        params = {"limit": "2", **({"continue": token} if token else {})}
        page = requests.get(f"{fake_cluster.api.url}/api/v1/nodes", params=params, timeout=10).json()
        names += [n["metadata"]["name"] for n in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert sorted(names) == sorted(n["metadata"]["name"] for n in fake_cluster.store.list("nodes"))


def test_an_expired_resource_version_is_410_gone(fake_cluster: FakeCluster) -> None:
    from kubernetes import client, config, watch
    from kubernetes.client.exceptions import ApiException

    fake_cluster.store.history_limit = 3
    old = fake_cluster.store.rv
    for i in range(5):
        fake_cluster.add_node(f"churn-{i}", 0)
    api = config.new_client_from_config(config_file=str(fake_cluster.kubeconfig))
    w = watch.Watch()
    with pytest.raises(ApiException) as info:
        for _ in w.stream(client.CoreV1Api(api).list_node, resource_version=str(old), timeout_seconds=2):
            pass
    assert info.value.status == 410 and f"too old resource version: {old}" in str(info.value.reason)
    resp = requests.get(f"{fake_cluster.api.url}/api/v1/nodes",
                        params={"watch": "true", "resourceVersion": str(old), "timeoutSeconds": "1"}, timeout=10)
    first = json.loads(resp.text.splitlines()[0])
    assert first["type"] == "ERROR" and first["object"]["code"] == 410 and first["object"]["reason"] == "Expired"


def test_denied_and_unauthorized_requests_get_the_real_status_bodies(fake_cluster: FakeCluster) -> None:
    fake_cluster.api.deny("list", "nodes")
    fake_cluster.api.deny("watch", "events", scope="default")
    resp = requests.get(f"{fake_cluster.api.url}/api/v1/nodes", timeout=10)
    assert resp.status_code == 403 and resp.json()["message"] == (
        'nodes is forbidden: User "tester" cannot list resource "nodes" in API group "" at the cluster scope')
    resp = requests.get(f"{fake_cluster.api.url}/api/v1/namespaces/default/events", params={"watch": "true"},
                        timeout=10)
    assert resp.status_code == 403 and 'in the namespace "default"' in resp.json()["message"]
    assert requests.get(f"{fake_cluster.api.url}/api/v1/namespaces/other/events", timeout=10).status_code == 200
    fake_cluster.api.unauthorized = True
    resp = requests.get(f"{fake_cluster.api.url}/version", timeout=10)
    assert resp.status_code == 401 and resp.json()["reason"] == "Unauthorized"


def test_the_fakes_never_import_the_plugin() -> None:
    """A fake that imports the code it checks can only agree with it (it may *run* the sim server, as a pod)."""
    import ast

    for path in sorted(Path(__file__).parent.glob("fake*.py")):
        tree = ast.parse(path.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("pytest_sglang_tune")], path.name
