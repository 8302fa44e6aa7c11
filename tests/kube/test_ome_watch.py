"""What the readiness watch makes of pod, event and InferenceService bodies (tables of real-shaped bodies)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_sglang_tune.backends.ome_watch import event_problem, isvc_problem, isvc_ready, pod_problem

pytestmark = pytest.mark.kube


def pod(*statuses: dict[str, Any], phase: str = "Running", conditions: list[dict[str, Any]] | None = None
        ) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"phase": phase, "containerStatuses": list(statuses),
                                                   "conditions": conditions or []}}


def cs(state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "ome-container", "image": "img", "state": state, "restartCount": 0}
    if last:
        out["lastState"] = last
    return out


@pytest.mark.parametrize(("body", "kind", "text"), [
    (pod(cs({"running": {}})), None, None),
    (pod(cs({"waiting": {"reason": "ContainerCreating"}}), phase="Pending"), None, None),
    (pod(cs({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}})), "image",
     "ImagePullBackOff: Back-off pulling image"),
    (pod(cs({"waiting": {"reason": "ErrImagePull", "message": "not found"}})), "image", "ErrImagePull: not found"),
    (pod(cs({"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"hf\" not found"}})),
     "config", "CreateContainerConfigError: secret \"hf\" not found"),
    (pod(cs({"waiting": {"reason": "CrashLoopBackOff"}}, {"terminated": {"exitCode": 1, "reason": "Error"}})),
     "crash", "CrashLoopBackOff: container ome-container exited with code 1 (Error)"),
    (pod(cs({"waiting": {"reason": "CrashLoopBackOff"}}, {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})),
     "oom", "container ome-container was OOMKilled"),
    (pod(cs({"terminated": {"exitCode": 2, "reason": "Error"}})), "crash",
     "container ome-container exited with code 2 (Error)"),
    (pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                       "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]),
     "unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
    (pod(phase="Failed"), "crash", "pod failed:"),
])
def test_pod_problem(body: dict[str, Any], kind: str | None, text: str | None) -> None:
    problem = pod_problem(body)
    if kind is None:
        assert problem is None
    else:
        assert problem is not None and problem.kind == kind and text in problem.message and problem.pod == "p"


@pytest.mark.parametrize(("reason", "message", "etype", "kind"), [
    ("FailedScheduling", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.", "Warning", "unschedulable"),
    ("Failed", "Failed to pull image \"x\": ErrImagePull", "Warning", "image"),
    ("BackOff", "Back-off pulling image \"x\"", "Warning", "image"),
    ("BackOff", "Back-off restarting failed container ome-container", "Warning", "crash"),
    ("OOMKilling", "Memory cgroup out of memory", "Warning", "oom"),
    ("Pulled", "Successfully pulled image", "Normal", None),
    ("Unhealthy", "Readiness probe failed", "Warning", None),  # a loading model is not a failure
])
def test_event_problem(reason: str, message: str, etype: str, kind: str | None) -> None:
    problem = event_problem({"reason": reason, "message": message, "type": etype,
                             "involvedObject": {"kind": "Pod", "name": "p"}})
    assert (problem.kind if problem else None) == kind


@pytest.mark.parametrize(("status", "ready", "problem"), [
    ({}, False, None),
    ({"conditions": [{"type": "Ready", "status": "False", "reason": "EngineNotReady"}]}, False, None),
    ({"conditions": [{"type": "Ready", "status": "True"}]}, True, None),
    ({"modelStatus": {"lastFailureInfo": {"reason": "ModelLoadFailed", "message": "bad weights", "exitCode": 1}}},
     False, "ModelLoadFailed: bad weights (exit code 1)"),
])
def test_isvc_state(status: dict[str, Any], ready: bool, problem: str | None) -> None:
    body = {"metadata": {"name": "x"}, "status": status}
    assert isvc_ready(body) is ready
    found = isvc_problem(body)
    assert (found.message if found else None) == problem
