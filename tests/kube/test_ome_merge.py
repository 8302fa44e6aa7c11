"""OME's merge of an InferenceService over its runtime, pinned by OME's own test cases, against both merges.

The golden cases are ``TestMergeEngineSpec`` of sgl-project/ome
``pkg/controller/v1beta1/inferenceservice/utils/utils_test.go`` @ 17b77edad23bae262e0c9adb7f12039397a5d33d, the Go
structs written as the JSON they marshal to (``omitempty`` fields left out). Each is checked against the plugin's
merge (``ome_merge``) and the fake controller's (``fakemerge``), written apart: if either drifts from OME, a case
fails. The MergeRuntimeContainers and leader/worker tests below use the fake cluster only.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fakecluster import FakeCluster, test_runtime
from fakemerge import engine_deployment_mode, engine_pod_spec, merge_engine_spec, merge_runtime_containers

from pytest_sglang_tune.backends.ome_merge import effective_argv, expand, merge_engine, merge_runtime_container
from pytest_sglang_tune.flags import load_flag_table

pytestmark = pytest.mark.kube

C = "ome-container"
GOLDEN: list[tuple[str, Any, Any, Any]] = [
    ("both nil", None, None, None),
    ("runtime nil, isvc not nil", None,
     {"minReplicas": 2, "maxReplicas": 5, "containers": [{"name": C, "image": "engine:latest"}]},
     {"minReplicas": 2, "maxReplicas": 5, "containers": [{"name": C, "image": "engine:latest"}]}),
    ("runtime not nil, isvc nil",
     {"minReplicas": 1, "maxReplicas": 3, "containers": [{"name": C, "image": "runtime-engine:v1"}]}, None, None),
    ("merge min/max replicas - isvc overrides", {"minReplicas": 1, "maxReplicas": 3},
     {"minReplicas": 2, "maxReplicas": 10}, {"minReplicas": 2, "maxReplicas": 10}),
    ("merge containers - isvc overrides",
     {"containers": [{"name": C, "image": "runtime:v1", "env": [{"name": "ENV1", "value": "runtime-value"},
                                                              {"name": "ENV2", "value": "runtime-value2"}]},
                     {"name": "sidecar", "image": "sidecar:v1"}]},
     {"containers": [{"name": C, "image": "isvc:v2", "env": [{"name": "ENV1", "value": "isvc-value"},
                                                           {"name": "ENV3", "value": "isvc-value3"}]}]},
     {"containers": [{"name": C, "image": "isvc:v2", "env": [{"name": "ENV1", "value": "isvc-value"},
                                                           {"name": "ENV3", "value": "isvc-value3"},
                                                           {"name": "ENV2", "value": "runtime-value2"}]},
                     {"name": "sidecar", "image": "sidecar:v1"}]}),
    ("merge runner spec",
     {"runner": {"name": "runtime-runner", "image": "runtime-runner:v1", "args": ["--arg1", "runtime"]}},
     {"runner": {"name": "isvc-runner", "image": "isvc-runner:v2", "args": ["--arg1", "isvc", "--arg2", "new"]}},
     {"runner": {"name": "isvc-runner", "image": "isvc-runner:v2", "args": ["--arg1", "isvc", "--arg2", "new"]}}),
    ("merge leader and worker specs",
     {"leader": {"containers": [{"name": "leader", "image": "runtime-leader:v1"}]},
      "worker": {"size": 2, "containers": [{"name": "worker", "image": "runtime-worker:v1"}]}},
     {"leader": {"containers": [{"name": "leader", "image": "isvc-leader:v2"}]},
      "worker": {"size": 4, "containers": [{"name": "worker", "image": "isvc-worker:v2"}]}},
     {"leader": {"containers": [{"name": "leader", "image": "isvc-leader:v2"}]},
      "worker": {"size": 4, "containers": [{"name": "worker", "image": "isvc-worker:v2"}]}}),
    ("merge pod spec fields - volumes, nodeSelector, tolerations",
     {"volumes": [{"name": "model-volume", "hostPath": {"path": "/models"}}],
      "nodeSelector": {"gpu": "true", "zone": "us-west-1a"},
      "tolerations": [{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]},
     {"volumes": [{"name": "cache-volume", "emptyDir": {}}],
      "nodeSelector": {"zone": "us-west-1b", "type": "inference"},
      "tolerations": [{"key": "inference", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]},
     {"volumes": [{"name": "cache-volume", "emptyDir": {}}, {"name": "model-volume", "hostPath": {"path": "/models"}}],
      "nodeSelector": {"gpu": "true", "zone": "us-west-1b", "type": "inference"},
      "tolerations": [{"key": "inference", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]}),
    ("complex merge scenario - partial overrides",
     {"minReplicas": 1, "maxReplicas": 5, "scaleTarget": 50, "scaleMetric": "concurrency",
      "serviceAccountName": "runtime-sa",
      "containers": [{"name": C, "image": "runtime:v1", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}],
      "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
          {"matchExpressions": [{"key": "node-type", "operator": "In", "values": ["gpu"]}]}]}}}},
     {"maxReplicas": 10, "scaleTarget": 80,
      "containers": [{"name": C, "resources": {"requests": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"},
                                               "limits": {"nvidia.com/gpu": "1"}}}]},
     {"minReplicas": 1, "maxReplicas": 10, "scaleTarget": 80, "scaleMetric": "concurrency",
      "serviceAccountName": "runtime-sa",
      "containers": [{"name": C, "image": "runtime:v1",
                      "resources": {"requests": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"},
                                    "limits": {"nvidia.com/gpu": "1"}}}],
      "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
          {"matchExpressions": [{"key": "node-type", "operator": "In", "values": ["gpu"]}]}]}}}}),
    ("merge with nil fields in runtime", {"minReplicas": 1},
     {"maxReplicas": 5, "runner": {"name": "runner", "image": "runner:latest"}},
     {"minReplicas": 1, "maxReplicas": 5, "runner": {"name": "runner", "image": "runner:latest"}}),
    ("merge with empty containers in isvc overriding runtime",
     {"containers": [{"name": "runtime-container", "image": "runtime:v1"}]}, {"containers": []},
     {"containers": [{"name": "runtime-container", "image": "runtime:v1"}]}),
]


@pytest.mark.parametrize("merge", [merge_engine, merge_engine_spec], ids=["plugin", "fake"])
@pytest.mark.parametrize(("name", "runtime", "isvc", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_merge_engine_spec_golden_cases_of_ome(merge: Any, name: str, runtime: Any, isvc: Any,
                                               expected: Any) -> None:
    given = copy.deepcopy((runtime, isvc))
    assert merge(runtime, isvc) == expected
    assert (runtime, isvc) == given   # inputs untouched


# MergeRuntimeContainers (merging.go): strategic merge, then Args = runtime container args + runner args
CONTAINERS = [
    ({"name": C, "image": "rt:v1", "args": ["--from-pod-spec"]}, {"name": C, "args": ["--tp-size", "2"]},
     {"name": C, "image": "rt:v1", "args": ["--from-pod-spec", "--tp-size", "2"]}),
    ({"name": C, "command": ["python3", "-m", "sglang.launch_server"]}, {"name": C, "args": ["--x", "1"]},
     {"name": C, "command": ["python3", "-m", "sglang.launch_server"], "args": ["--x", "1"]}),
    ({}, {"name": C, "image": "i", "args": ["--a"]}, {"name": C, "image": "i", "args": ["--a"]}),
    ({"name": C, "env": [{"name": "A", "value": "1"}]}, {"name": C, "env": [{"name": "B", "value": "2"}]},
     {"name": C, "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]}),
]


@pytest.mark.parametrize("merge", [merge_runtime_container, merge_runtime_containers], ids=["plugin", "fake"])
@pytest.mark.parametrize(("container", "runner", "expected"), CONTAINERS)
def test_merge_runtime_containers(merge: Any, container: dict[str, Any], runner: dict[str, Any],
                                  expected: dict[str, Any]) -> None:
    assert merge(container, runner) == expected


def test_the_fake_cluster_concatenates_pod_spec_and_runner_args(fake_cluster: FakeCluster) -> None:
    """MergeRuntimeContainers through the fake controller (no plugin code): a runtime whose engine pod spec names
    the runner's container with args of its own runs those args first, then the InferenceService runner's."""
    runtime = test_runtime("srt-podspec")
    runtime["spec"]["engineConfig"]["containers"] = [{"name": C, "args": ["--log-level", "debug"]}]
    fake_cluster.put(runtime)
    fake_cluster.put({"apiVersion": "ome.io/v1beta1", "kind": "InferenceService",
                      "metadata": {"name": "concat", "namespace": "default"},
                      "spec": {"model": {"name": "qwen3-8b"}, "runtime": {"name": "srt-podspec"},
                               "engine": {"runner": {"name": C, "args": ["--schedule-policy", "fcfs"]}}}})
    import time

    deadline = time.monotonic() + 10
    while "concat" not in fake_cluster.controller.merged_seen and time.monotonic() < deadline:
        time.sleep(0.05)
    argv = fake_cluster.controller.merged_seen["concat"]
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    assert argv[-4:] == ["--log-level", "debug", "--schedule-policy", "fcfs"]


def test_a_multi_node_runtime_runs_the_leader_runner_and_drops_the_engine_runner_args() -> None:
    """engine.go reconcilePodSpec: MultiNode takes the leader's runner; ``engine.runner.args`` never reach it."""
    engine = merge_engine_spec(test_runtime(multi_node=True)["spec"]["engineConfig"],
                               {"runner": {"name": C, "args": ["--mem-fraction-static", "0.7"]},
                                "minReplicas": 1, "maxReplicas": 1})
    assert engine is not None and engine_deployment_mode(engine) == "MultiNode"
    pod, _ = engine_pod_spec(engine)
    (container,) = pod["containers"]
    assert container["command"][-2:] == ["--nnodes", "2"] and "--mem-fraction-static" not in container.get("args", [])
    # the engine's own deployment-mode annotation overrides the leader/worker heuristic (deployment.go)
    pinned = {**engine, "annotations": {"ome.io/deploymentMode": "RawDeployment"}}
    assert engine_deployment_mode(pinned) == "RawDeployment"
    assert engine_deployment_mode({"minReplicas": 0}) == "Serverless"


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("$(MODEL_PATH)", {"MODEL_PATH": "/mnt/models"}, "/mnt/models"),
    ("--x=$(A)/$(B)", {"A": "1", "B": "2"}, "--x=1/2"),
    ("$(UNDEFINED)", {}, "$(UNDEFINED)"),
    ("$$(MODEL_PATH)", {"MODEL_PATH": "/m"}, "$(MODEL_PATH)"),
    ("plain", {"A": "1"}, "plain"),
])
def test_var_expansion(text: str, env: dict[str, str], expected: str) -> None:
    assert expand(text, env) == expected


def test_runner_args_are_appended_to_the_runtime_command_and_win() -> None:
    """Why the flags go to ``args``: the runtime's line stays whole and argparse keeps the last value."""
    runtime_engine = test_runtime()["spec"]["engineConfig"]
    isvc_engine = {"runner": {"name": C, "args": ["--tp-size", "2", "--mem-fraction-static", "0.7"],
                              "resources": {"limits": {"nvidia.com/gpu": "2"}}}}
    for merge in (merge_engine, merge_engine_spec):
        merged = merge(runtime_engine, isvc_engine)
        assert merged is not None
        runner = merged["runner"]
        assert runner["resources"]["limits"] == {"cpu": 10, "memory": "30Gi", "nvidia.com/gpu": "2"}
        assert runner["ports"] == runtime_engine["runner"]["ports"]
        assert merged["tolerations"] == runtime_engine["tolerations"]   # not replaced: the isvc sent none
    argv = effective_argv({**runner, "env": [{"name": "MODEL_PATH", "value": "/mnt/models/qwen"}]})
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    assert argv[-4:] == ["--tp-size", "2", "--mem-fraction-static", "0.7"]
    parsed = vars(load_flag_table("0.5.5.post3").build_parser("x").parse_args(argv[3:]))
    assert parsed["tp_size"] == 2 and parsed["mem_fraction_static"] == 0.7  # the runtime's --mem-frac 0.9 lost
    assert parsed["model_path"] == "/mnt/models/qwen"


def test_replacing_the_command_would_lose_the_runtime_launch_line() -> None:
    merged = merge_engine(test_runtime()["spec"]["engineConfig"],
                          {"runner": {"command": ["python3", "-m", "sglang.launch_server", "--tp-size", "2"]}})
    assert merged is not None
    argv = effective_argv(merged["runner"])
    assert "--model-path" not in argv and "--port" not in argv
