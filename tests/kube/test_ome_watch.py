"""What the readiness watch makes of pod, event and InferenceService bodies (tables of real-shaped bodies)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pytest_sglang_tune.backends.ome_watch import (
    Graces,
    Problem,
    event_problem,
    isvc_problem,
    isvc_ready,
    pod_problem,
    to_error,
    wait_until_ready,
)
from pytest_sglang_tune.errors import CapacityError, DeployError

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
    (pod(cs({"waiting": {"reason": "ErrImagePull", "message": "429 Too Many Requests"}})), "image_transient",
     "ErrImagePull: 429 Too Many Requests"),
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
    ("Failed", "Failed to pull image \"x\": ErrImagePull", "Warning", "image_transient"),
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


@pytest.mark.parametrize(("kind", "reason", "message", "expected"), [
    ("InferenceService", "RuntimeValidationError", "Runtime srt does not support model m: ...", "ome"),
    ("InferenceService", "ServerlessModeRejected", "It is not possible to use Serverless ...", "ome"),
    ("InferenceService", "InternalError", "Operation cannot be fulfilled: the object has been modified", None),
    ("InferenceService", "InferenceServiceNotReady", "InferenceService [x] is no longer Ready", None),
    ("ReplicaSet", "FailedCreate", 'Error creating: pods "x" is forbidden: exceeded quota: gpu-quota, ...', "quota"),
    ("ReplicaSet", "FailedCreate", 'Error creating: pods "x" is forbidden: violates PodSecurity ...', "create"),
    ("Pod", "FailedMount", 'MountVolume.SetUp failed for volume "t" : secret "t" not found', "mount"),
    ("Pod", "FailedMount", "Unable to attach or mount volumes: timed out waiting for the condition",
     "mount_transient"),
    ("Pod", "ErrImagePull", "failed to pull image: 429 Too Many Requests", "image_transient"),
])
def test_event_problem_by_involved_kind(kind: str, reason: str, message: str, expected: str | None) -> None:
    problem = event_problem({"reason": reason, "message": message, "type": "Warning",
                             "involvedObject": {"kind": kind, "name": "x-engine-abc"}})
    assert (problem.kind if problem else None) == expected
    if expected == "ome":
        assert problem is not None and problem.message == f"OME: {reason}: {message}"


@pytest.mark.parametrize(("message", "verdict"), [
    ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
     "3 No preemption victims found for incoming pod.", "capacity"),
    ("0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint "
     "{nvidia.com/gpu: present}. preemption: ...", "capacity"),   # one node would do once its GPUs are free
    ("0/2 nodes are available: 2 node(s) had untolerated taint {nvidia.com/gpu: present}. preemption: 0/2 nodes "
     "are available: 2 Preemption is not helpful for scheduling.", "placement"),
    ("0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) were "
     "unschedulable. preemption: ...", "placement"),
])
def test_failed_scheduling_is_capacity_only_when_resources_are_short(message: str, verdict: str) -> None:
    from pytest_sglang_tune.backends.ome_placement import classify_unschedulable

    assert classify_unschedulable(message) == verdict
    err = to_error(Problem("unschedulable", message, "p"), name="x", config_id=None, log_tail="", waited_s=5,
                   explain=lambda p: "")
    if verdict == "capacity":
        assert isinstance(err, CapacityError) and err.bare_message.startswith("cluster has no room")
    else:
        assert type(err) is DeployError and "cannot be scheduled" in err.bare_message
    # with the node list, a pod no GPU node can take is never "no room", whatever the scheduler counted
    err = to_error(Problem("unschedulable", message, "p"), name="x", config_id=None, log_tail="", waited_s=5,
                   explain=lambda p: "no GPU node can run this config: ...")
    assert type(err) is DeployError and err.bare_message.endswith(" — no GPU node can run this config: ...")


class Script:
    """A stand-in for ``Streams``: hands out scripted (delay, item) pairs."""

    def __init__(self, *items: tuple[float, tuple[str, str, dict[str, Any]]]) -> None:
        self.start = time.monotonic()
        self.items = list(items)

    def get(self, timeout: float) -> tuple[str, str, dict[str, Any]] | None:
        if self.items and time.monotonic() - self.start >= self.items[0][0]:
            return self.items.pop(0)[1]
        time.sleep(min(timeout, 0.02))
        return None


def _wait(script: Script, timeout: float = 5.0) -> dict[str, Any]:
    return wait_until_ready(script, name="x", timeout=timeout,  # type: ignore[arg-type]
                            graces=Graces(unschedulable=0.5, image_pull=0.6, mount=0.6), config_id=None,
                            log_tail=lambda pod: "", involved=lambda obj: True)


READY = ("isvc", "MODIFIED", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
PULLING = ("pod", "MODIFIED", pod(cs({"waiting": {"reason": "ErrImagePull", "message": "429"}})))
RUNNING = ("pod", "MODIFIED", pod(cs({"running": {}})))


def test_a_first_err_image_pull_gets_a_grace_and_clears_when_the_pull_succeeds() -> None:
    assert _wait(Script((0, PULLING), (0.3, RUNNING), (0.8, READY))) == READY[2]


def test_an_err_image_pull_that_lasts_past_the_grace_fails() -> None:
    start = time.monotonic()
    with pytest.raises(DeployError, match="ErrImagePull: 429"):
        _wait(Script((0, PULLING)))
    assert 0.6 <= time.monotonic() - start < 2


def test_image_pull_backoff_is_the_verdict_at_once() -> None:
    backoff = ("pod", "MODIFIED", pod(cs({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}})))
    start = time.monotonic()
    with pytest.raises(DeployError, match="ImagePullBackOff: Back-off"):
        _wait(Script((0, PULLING), (0.1, backoff)))
    assert time.monotonic() - start < 0.5


def test_a_refused_watch_fails_the_wait_naming_the_rule() -> None:
    refused = ("refused", "403", {"stream": "event", "rbac": "list/watch on events in namespace 'tune'",
                                  "message": 'events is forbidden: User "u" cannot watch resource "events"'})
    with pytest.raises(DeployError, match=r"cannot watch event: HTTP 403 \(events is forbidden.*grant list/watch "
                                          r"on events in namespace 'tune' \(deploy/ome-rbac.yaml\)"):
        _wait(Script((0, refused)))
