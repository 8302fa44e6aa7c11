"""Where the engine pod can run, predicted by the plugin before deploying (pure functions, tables of cases)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_sglang_tune.backends.ome_placement import (
    NodeGpus,
    Placement,
    classify_unschedulable,
    pod_request,
    scheduling_reasons,
    tolerates,
    union_tolerations,
    unplaceable,
    untolerated,
)

pytestmark = pytest.mark.kube

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
EXISTS = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.mark.parametrize(("toleration", "taint", "ok"), [
    (EXISTS, GPU_TAINT, True),
    ({"operator": "Exists"}, GPU_TAINT, True),                                       # tolerates everything
    ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, GPU_TAINT, False),
    ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, GPU_TAINT, True),   # Equal default
    ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "other"}, GPU_TAINT, False),
    ({"key": "other", "operator": "Exists"}, GPU_TAINT, False),
])
def test_tolerates(toleration: dict[str, Any], taint: dict[str, Any], ok: bool) -> None:
    assert tolerates(toleration, taint) is ok


def test_only_blocking_taints_count() -> None:
    taints = [GPU_TAINT, {"key": "soft", "effect": "PreferNoSchedule"}, {"key": "evict", "effect": "NoExecute"}]
    assert untolerated(taints, [EXISTS]) == ["evict:NoExecute"]
    assert untolerated(taints, []) == ["nvidia.com/gpu=present:NoSchedule", "evict:NoExecute"]


def test_union_keeps_the_runtime_toleration_first_and_drops_duplicates() -> None:
    own = {"key": "team", "operator": "Exists"}
    assert union_tolerations([EXISTS], [own, EXISTS]) == [EXISTS, own]
    assert union_tolerations(None, []) == []


@pytest.mark.parametrize(("spec", "gpus"), [
    ({"containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}]}, 2),
    ({"containers": [{"resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}},
                     {"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}, 2),
    ({"containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}],
      "initContainers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}},
                         {"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}, 4),      # init: max, not sum
    ({"containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}],
      "initContainers": [{"restartPolicy": "Always", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}, 3),
    ({"containers": [{"name": "cpu-only"}]}, 0),
])
def test_pod_request(spec: dict[str, Any], gpus: int) -> None:
    assert pod_request(spec) == gpus


def nodes(*specs: tuple[str, dict[str, str], tuple[Any, ...]]) -> list[NodeGpus]:
    return [NodeGpus(name, labels, 4, 0, True, taints) for name, labels, taints in specs]


MODEL = "models.ome.io/clusterbasemodel.m"


@pytest.mark.parametrize(("placement", "cluster", "expected"), [
    (Placement(tolerations=(EXISTS,), model_label=MODEL, model="ClusterBaseModel m"),
     nodes(("a", {MODEL: "Ready"}, (GPU_TAINT,))), None),
    (Placement(model_label=MODEL, model="ClusterBaseModel m"), nodes(("a", {MODEL: "Ready"}, (GPU_TAINT,))),
     "no GPU node can run this config: 1 GPU node with untolerated taint nvidia.com/gpu=present:NoSchedule (the "
     "pod tolerates: none; add the toleration to backends.ome.tolerations or the runtime's "
     "engineConfig.tolerations)"),
    (Placement(model_label=MODEL, model="ClusterBaseModel m"), nodes(("a", {MODEL: "Updating"}, ())),
     "no GPU node can run this config: 1 GPU node without the model: ClusterBaseModel m is Ready on no "
     "schedulable GPU node (OME requires node label models.ome.io/clusterbasemodel.m=Ready, set by its model agent "
     "once the weights are on the node)"),
    (Placement(node_selector={"gpu": "h100"}), nodes(("a", {"gpu": "a100"}, ()), ("b", {}, (GPU_TAINT,))),
     "no GPU node can run this config: 1 GPU node with untolerated taint nvidia.com/gpu=present:NoSchedule (the "
     "pod tolerates: none; add the toleration to backends.ome.tolerations or the runtime's "
     "engineConfig.tolerations); 1 GPU node not matching the pod's node selector {'gpu': 'h100'}"),
    (Placement(), [NodeGpus("a", {}, 0, 0, True)], None),   # no GPUs at all: a capacity matter, with the numbers
])
def test_unplaceable_names_the_cause(placement: Placement, cluster: list[NodeGpus], expected: str | None) -> None:
    assert unplaceable(placement, cluster) == expected


def test_scheduler_messages_are_parsed_into_reasons() -> None:
    msg = ("0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint "
           "{nvidia.com/gpu: present}. preemption: 0/3 nodes are available: 1 No preemption victims found for "
           "incoming pod, 2 Preemption is not helpful for scheduling.")
    assert scheduling_reasons(msg) == {"Insufficient nvidia.com/gpu": 1,
                                       "node(s) had untolerated taint {nvidia.com/gpu: present}": 2}
    assert classify_unschedulable(msg) == "capacity"
    assert classify_unschedulable("Unschedulable") == "capacity"   # unparsable: give it the grace, as before
