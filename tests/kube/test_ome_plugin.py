"""``pytest --backend=ome`` end to end through pytester against the fake cluster (API server + OME controller)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakecluster import MODEL, RUNTIME, FakeCluster

pytestmark = pytest.mark.kube


def suite_text(grid: str = "schedule-policy: [lpm, fcfs]", ome: str = "") -> str:
    return f"""\
name: kube-demo
model: {{path: Qwen/Qwen3-8B, served_name: qwen3-8b}}
backends:
  ome: {{runtime: {RUNTIME}, model: {MODEL}, ready_timeout: 300{ome}}}
server:
  fixed: {{mem-fraction-static: 0.8}}
  grid: {{{grid}}}
workloads:
  - name: chat
    scenario: D(64,16)
    num_requests: [4]
    warmup_requests: 1
    concurrency: [2]
slos: ["ttft_ms.p99 <= 5000"]
objective: {{maximize: output_throughput_per_gpu}}
"""


def report_of(pytester: pytest.Pytester) -> dict:  # type: ignore[type-arg]
    (path,) = (pytester.path / "reports").glob("*/report.json")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_backend_ome_end_to_end_report_with_flags_verified(pytester: pytest.Pytester,
                                                          fake_cluster: FakeCluster) -> None:
    pytester.makefile(".yaml", tune_kube=suite_text())
    result = pytester.runpytest_subprocess("--backend=ome", "--gpus=4", "-p", "no:cacheprovider",
                                           "--sglang-ome-url=tunnel")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*ome: endpoint reached through a port-forward tunnel*"])
    records = report_of(pytester)["results"]
    assert {r["server_args"]["schedule-policy"] for r in records} == {"lpm", "fcfs"}
    for r in records:
        assert r["status"] == "passed", r
        assert r["backend"] == "ome"
        assert r["launch_command"].endswith(f"--schedule-policy {r['server_args']['schedule-policy']} "
                                            "--served-model-name qwen3-8b")
    # the flags that reached the sim are the config's, appended after the runtime's launch line
    seen = list(fake_cluster.controller.argv_seen.values())
    assert len(seen) == 2
    for argv in seen:
        i = argv.index("--mem-fraction-static")
        assert argv[i:i + 2] == ["--mem-fraction-static", "0.8"]
        assert argv[argv.index("--schedule-policy") + 1] in ("lpm", "fcfs")
    assert fake_cluster.ours() == []


@pytest.mark.parametrize(("fault", "expected"), [
    ("drop_args", "*flags not applied: --mem-fraction-static=0.8 (the server runs with 0.9)*"),
    ("tp_override", "*flags not applied: --tp-size=1 (the server runs with 2)*"),
])
def test_flags_dropped_or_rewritten_by_the_cluster_fail(pytester: pytest.Pytester, fake_cluster: FakeCluster,
                                                        fault: str, expected: str) -> None:
    fake_cluster.controller.fault = fault
    pytester.makefile(".yaml", tune_kube=suite_text(grid="tp-size: [1]"))
    result = pytester.runpytest_subprocess("--backend=ome", "-p", "no:cacheprovider", "--sglang-ome-url=direct")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([expected])
    assert fake_cluster.ours() == []


def test_zero_gpus_skips_every_config_at_once(pytester: pytest.Pytester, fake_cluster: FakeCluster) -> None:
    fake_cluster.store.delete("nodes", "", "gpu-node-0")
    fake_cluster.add_node("cpu-node-0", 0)
    pytester.makefile(".yaml", tune_kube=suite_text())
    start = time.monotonic()
    result = pytester.runpytest("--backend=ome", "-p", "no:cacheprovider", "-rs")
    elapsed = time.monotonic() - start
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*0 available (cluster nodes: 1 node(s), 0 with nvidia.com/gpu, 0 allocatable*"])
    # no hang, no timeout: the whole in-process session, pytest's start included; that the capacity check itself
    # answers within a second is asserted in test_ome_backend.py
    assert elapsed < 15.0
    assert fake_cluster.store.list("inferenceservices") == []


def test_sigint_while_starting_leaves_nothing(pytester: pytest.Pytester, fake_cluster: FakeCluster) -> None:
    fake_cluster.controller.fault = "never_ready"
    pytester.makefile(".yaml", tune_kube=suite_text())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "--backend=ome", "-p", "no:cacheprovider",
                             str(pytester.path)], cwd=pytester.path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not fake_cluster.store.list("pods") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fake_cluster.store.list("inferenceservices"), "the run never created an InferenceService"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert fake_cluster.ours() == [], out.decode()[-2000:]


def test_fake_cluster_script_documented(pytester: pytest.Pytester) -> None:
    script = Path(__file__).with_name("fakecluster.py")
    text = script.read_text()
    assert "--backend=ome" in text and "SGLANG_TUNE_PORT_FORWARD=client or =kubectl" in text


def test_two_xdist_workers_deploy_side_by_side_and_leave_nothing(pytester: pytest.Pytester,
                                                                 fake_cluster: FakeCluster) -> None:
    grid = "schedule-policy: [lpm, fcfs], chunked-prefill-size: [512, 1024]"
    pytester.makefile(".yaml", tune_kube=suite_text(grid=grid))
    result = pytester.runpytest_subprocess("--backend=ome", "-n", "2", "-p", "no:cacheprovider",
                                           "--sglang-ome-url=tunnel")
    result.assert_outcomes(passed=4)
    records = report_of(pytester)["results"]  # one report, written by the controller from both workers' results
    assert sorted((r["server_args"]["schedule-policy"], r["server_args"]["chunked-prefill-size"]) for r in records) \
        == [("fcfs", 512), ("fcfs", 1024), ("lpm", 512), ("lpm", 1024)]
    assert all(r["status"] == "passed" for r in records), [r["reason"] for r in records]
    assert len(fake_cluster.controller.argv_seen) == 4  # one InferenceService per config, names never clash
    assert fake_cluster.ours() == []


def test_under_xdist_the_runtime_and_model_the_run_created_live_until_the_last_worker_is_done(
        pytester: pytest.Pytester, fake_cluster: FakeCluster) -> None:
    from fakecluster import test_model, test_runtime

    fake_cluster.store.delete("clusterservingruntimes", "", RUNTIME)
    fake_cluster.store.delete("clusterbasemodels", "", MODEL)
    create = (f", create_runtime: {json.dumps(test_runtime()['spec'])},"
              f" create_model: {json.dumps(test_model()['spec'])}")
    pytester.makefile(".yaml", tune_kube=suite_text(grid="schedule-policy: [lpm, fcfs, random]", ome=create))
    result = pytester.runpytest_subprocess("--backend=ome", "-n", "2", "-p", "no:cacheprovider",
                                           "--sglang-ome-url=tunnel")
    result.assert_outcomes(passed=3)  # every deploy found the runtime and model (none was removed early)
    # one worker created them (the other got 409); the controller removed them after both were done, and said so
    result.stdout.fnmatch_lines(["ome: removed what this run created: ClusterBaseModel qwen3-8b, "
                                 "ClusterServingRuntime srt-qwen3-8b"])
    assert fake_cluster.ours() == []
    assert fake_cluster.store.get("clusterservingruntimes", "", RUNTIME) is None


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on the PATH: the kubectl port-forward "
                    "path cannot run here (the client port-forward is tested above)")
def test_kubectl_port_forward_end_to_end(pytester: pytest.Pytester, fake_cluster: FakeCluster,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # the real kubectl binary against the fake API server's SPDY/3.1 pods/portforward (after its websocket
    # attempt is refused, as by an API server older than 1.30)
    monkeypatch.setenv("SGLANG_TUNE_PORT_FORWARD", "kubectl")
    pytester.makefile(".yaml", tune_kube=suite_text())
    result = pytester.runpytest_subprocess("--backend=ome", "--gpus=4", "-p", "no:cacheprovider",
                                           "--sglang-ome-url=tunnel")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*ome: endpoint reached through a port-forward tunnel*"])
    front = fake_cluster.api.front
    assert front is not None and front.upgrades >= 2  # one kubectl per config, each its SPDY connection
    # the streams kubectl opened, decoded: an error and a data stream per forwarded connection, for port 8080
    types = [h.get("streamtype") for h in front.headers_seen]
    assert types.count("error") == types.count("data") > 0
    assert {h.get("port") for h in front.headers_seen} == {"8080"}
    for r in report_of(pytester)["results"]:
        assert r["status"] == "passed" and r["metrics"]["completed"] == 4, r
    assert fake_cluster.ours() == []
    leftover = subprocess.run(["pgrep", "-f", "kubectl.*port-forward"], capture_output=True, text=True).stdout
    assert not leftover.strip(), f"kubectl port-forward processes left running: {leftover}"


# --- real clusters: tainted GPU nodes, placement, "could not ask", namespaced users -----------------------------

def test_a_cluster_with_tainted_gpu_nodes_runs_and_ranks(pytester: pytest.Pytester, fake_cluster: FakeCluster) -> None:
    fake_cluster.taint_gpu_nodes()   # nvidia.com/gpu=present:NoSchedule, as managed clouds do; the runtime tolerates
    pytester.makefile(".yaml", tune_kube=suite_text())
    result = pytester.runpytest_subprocess("--backend=ome", "--gpus=4", "-p", "no:cacheprovider",
                                           "--sglang-ome-url=direct")
    result.assert_outcomes(passed=2)
    report = report_of(pytester)
    assert [r["status"] for r in report["results"]] == ["passed", "passed"]
    assert report["ranking"], "nothing was ranked"
    assert fake_cluster.ours() == []


@pytest.mark.slow
def test_a_shipped_suite_runs_and_ranks_on_a_tainted_cluster(pytester: pytest.Pytester,
                                                             fake_cluster: FakeCluster) -> None:
    """Issue 13's headline on a suite we ship (the trace suite: the shortest, its replay takes the trace's time;
    it names the same runtime and model as the others), GPU nodes tainted as managed clouds taint them."""
    shipped = Path(__file__).resolve().parents[2] / "suites" / "tune_qwen8b_trace.yaml"
    fake_cluster.taint_gpu_nodes()
    result = pytester.runpytest_subprocess(str(shipped), "--backend=ome", "--gpus=4", "-p", "no:cacheprovider",
                                           "--sglang-ome-url=direct")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 2 and not {"failed", "errors", "skipped"} & set(outcomes), outcomes
    report = report_of(pytester)
    assert {r["backend"] for r in report["results"]} == {"ome"}
    assert {e["suite"] for e in report["ranking"]} == {"qwen8b-trace"}
    assert fake_cluster.ours() == []


@pytest.mark.parametrize(("setup", "expected"), [
    ("runtime_without_toleration", "*no GPU node can run this config: 1 GPU node with untolerated taint "
                                   "nvidia.com/gpu=present:NoSchedule*"),
    ("model_nowhere", "*ClusterBaseModel qwen3-8b is Ready on no schedulable GPU node*"),
])
def test_negative_controls_name_the_cause_not_no_room(pytester: pytest.Pytester, fake_cluster: FakeCluster,
                                                      setup: str, expected: str) -> None:
    from fakecluster import test_runtime

    if setup == "runtime_without_toleration":
        fake_cluster.taint_gpu_nodes()
        fake_cluster.store.delete("clusterservingruntimes", "", RUNTIME)
        fake_cluster.put(test_runtime(tolerations=False))
    else:
        for n in fake_cluster.store.list("nodes"):
            fake_cluster.store.update("nodes", "", n["metadata"]["name"], lambda o: o["metadata"]["labels"].pop(
                f"models.ome.io/clusterbasemodel.{MODEL}", None))
    pytester.makefile(".yaml", tune_kube=suite_text(grid="schedule-policy: [lpm]"))
    result = pytester.runpytest_subprocess("--backend=ome", "--gpus=4", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([expected])
    result.stdout.no_fnmatch_line("*no room*")
    assert fake_cluster.store.list("inferenceservices") == []


@pytest.mark.parametrize(("case", "expected"), [
    ("unreachable", "ERROR: ome: cannot reach the Kubernetes API at http://127.0.0.1:*"),
    ("forbidden", "ERROR: ome: not allowed to list inferenceservices.ome.io in namespace 'default' *"
                  "(HTTP 403 Forbidden: *); bind the roles of deploy/ome-rbac.yaml*"),
    ("missing_crds", "ERROR: ome: OME is not installed in the cluster at http://127.0.0.1:*: missing CRDs "
                     "inferenceservices.ome.io, clusterservingruntimes.ome.io*"),
    ("namespaced_without_gpus", "ERROR: ome: cannot list nodes at * (HTTP 403 Forbidden), so the GPUs free in the "
                                "cluster cannot be counted: pass --gpus=N*"),
])
def test_could_not_ask_fails_the_session_with_one_message(pytester: pytest.Pytester, fake_cluster: FakeCluster,
                                                          monkeypatch: pytest.MonkeyPatch, case: str,
                                                          expected: str) -> None:
    from fakeapi import write_kubeconfig

    from pytest_sglang_tune.backends.local import free_port

    if case == "unreachable":
        dead = write_kubeconfig(pytester.path / "dead-kubeconfig", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("KUBECONFIG", str(dead))
    fake_cluster.api.ome_installed = case != "missing_crds"
    if case == "forbidden":
        fake_cluster.api.deny("list", "inferenceservices")
    if case == "namespaced_without_gpus":
        fake_cluster.api.deny("list", "nodes")
    pytester.makefile(".yaml", tune_kube=suite_text())
    start = time.monotonic()
    result = pytester.runpytest_subprocess("--backend=ome", "-p", "no:cacheprovider")
    assert time.monotonic() - start < 30
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert len([line for line in result.stderr.lines if line.startswith("ERROR:")]) == 1
    result.stdout.no_fnmatch_line("*skipped*")
    assert fake_cluster.store.list("inferenceservices") == []


def test_a_namespaced_user_runs_with_gpus_and_is_told_capacity_was_not_checked(pytester: pytest.Pytester,
                                                                              fake_cluster: FakeCluster) -> None:
    fake_cluster.api.deny("list", "nodes")
    fake_cluster.api.deny("list", "pods", scope="cluster")
    pytester.makefile(".yaml", tune_kube=suite_text(grid="schedule-policy: [lpm]"))
    result = pytester.runpytest_subprocess("--backend=ome", "--gpus=4", "-p", "no:cacheprovider",
                                           "--sglang-ome-url=direct")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["ome: capacity not checked: this user may not list nodes/pods cluster-wide*"])
    run = report_of(pytester)["run"]
    assert run["gpus"] == 4 and "capacity not checked" in run["gpus_source"]
    assert run["machine"]["gpus"] == "unknown"


def test_could_not_ask_under_xdist_is_one_message_from_the_controller(pytester: pytest.Pytester,
                                                                      fake_cluster: FakeCluster) -> None:
    fake_cluster.api.ome_installed = False
    pytester.makefile(".yaml", tune_kube=suite_text())
    result = pytester.runpytest_subprocess("--backend=ome", "-n", "2", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ome: OME is not installed in the cluster at *"])
    assert not any("INTERNALERROR" in line for line in result.stdout.lines + result.stderr.lines)
