"""Watch an InferenceService, what OME makes of it and their events until Ready, and fail fast on what will
never heal, with the cause as Kubernetes or OME stated it.

Where failures show (see ``docs/ome.md``, "Failures and their messages"):

- OME reports runtime, model, accelerator and deployment-mode problems only as Warning events on the
  InferenceService itself (``pkg/controller/v1beta1/inferenceservice/controller.go``: ``Recorder.Eventf(isvc,
  Warning, reason, ...)`` and no status), so those reasons end the wait at once;
- a ReplicaSet that cannot create its pod (ResourceQuota, PodSecurity, LimitRange) says so only in a
  ``FailedCreate`` event: no pod ever appears;
- pods: ``FailedScheduling`` (capacity only when some node lacks free resources; an untolerated taint, a node
  selector or the model-ready label are placement problems), ``ErrImagePull`` (often a rate limit: a grace, then
  ``ImagePullBackOff`` is the verdict), ``FailedMount``, CrashLoopBackOff, OOMKilled, failed config;
- a watch the user may not open (401/403/404) would silently blind all of this: after a few consecutive
  refusals the wait fails, naming the RBAC rule that is missing.

Classification works on plain camelCase dicts (what the API sends), so it is tested with tables of bodies.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_sglang_tune.backends.ome_placement import classify_unschedulable
from pytest_sglang_tune.errors import BackendError, CapacityError, DeployError, InfeasibleConfig, NotReady

IMAGE_FINAL = {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
IMAGE_WORDS = ("ImagePullBackOff", "ErrImagePull", "pull image", "pulling image")
CONFIG_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
MODEL_SETUP_REASONS = {"BaseModelNotFound", "RuntimeDisabled", "NoSupportingRuntime", "RuntimeNotRecognized",
                       "InvalidPredictorSpec"}
# Warning reasons OME records on the InferenceService when reconciling stops (controller.go); InternalError and
# UpdateFailed are status-update conflicts that the next reconcile fixes, InferenceServiceNotReady a later drop
ISVC_FATAL = {"ModelReconcileError", "RuntimeValidationError", "RuntimeFetchError", "RuntimeSelectionError",
              "MergeSpecsError", "DeploymentModeError", "AcceleratorClassError", "ServerlessModeRejected",
              "PredictorMigrationError"}
EVENT_HOLD_S = 1.0  # the pod's status says more (exit code, OOMKilled) than the event that races it
WATCH_S = 5  # server-side timeoutSeconds of each watch request; streams are reopened until stopped
WATCH_REFUSALS = 3  # consecutive 401/403/404 answers before a watch counts as impossible


@dataclass(frozen=True)
class Problem:
    kind: str      # unschedulable | image | image_transient | config | oom | crash | model | ome | quota | create
    message: str   # | mount | mount_transient | watch
    pod: str | None = None


def pod_problem(pod: Mapping[str, Any], container: str | None = None) -> Problem | None:
    """What is wrong with a pod, if anything will not heal by waiting (some may, within a grace); with
    ``container``, only that container's state counts (a sidecar's restarts are not the server's)."""
    name = pod.get("metadata", {}).get("name")
    status = pod.get("status") or {}
    for st in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
        if container is not None and st.get("name") != container:
            continue
        state = st.get("state") or {}
        waiting = state.get("waiting") or {}
        last = (st.get("lastState") or {}).get("terminated") or {}
        term = state.get("terminated") or {}
        reason = waiting.get("reason")
        if reason in IMAGE_FINAL:
            return Problem("image", f"{reason}: {waiting.get('message') or st.get('image', '')}".strip(), name)
        if reason == "ErrImagePull":
            return Problem("image_transient", f"{reason}: {waiting.get('message') or st.get('image', '')}", name)
        if reason in CONFIG_REASONS:
            return Problem("config", f"{reason}: {waiting.get('message', '')}", name)
        if "OOMKilled" in (term.get("reason"), last.get("reason")):
            return Problem("oom", f"container {st.get('name')} was OOMKilled (memory limit too small for this "
                                  "config)", name)
        if reason == "CrashLoopBackOff":
            code = last.get("exitCode")
            return Problem("crash", f"CrashLoopBackOff: container {st.get('name')} exited with code {code}"
                                    f"{' (' + last['reason'] + ')' if last.get('reason') else ''}", name)
        if term and (term.get("exitCode") or 0) != 0:
            return Problem("crash", f"container {st.get('name')} exited with code {term.get('exitCode')}"
                                    f"{' (' + term['reason'] + ')' if term.get('reason') else ''}", name)
    if status.get("phase") == "Failed":
        return Problem("crash", f"pod failed: {status.get('reason', '')} {status.get('message', '')}".strip(), name)
    for cond in status.get("conditions") or ():
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and \
                cond.get("reason") == "Unschedulable":
            return Problem("unschedulable", cond.get("message") or "Unschedulable", name)
    return None


def event_problem(event: Mapping[str, Any]) -> Problem | None:
    """A Warning event about the InferenceService, its ReplicaSet/Deployment or a pod, as a Problem."""
    if event.get("type") != "Warning":
        return None
    reason = event.get("reason") or ""
    message = event.get("message") or ""
    obj = event.get("involvedObject") or {}
    kind, name = obj.get("kind") or "Pod", obj.get("name")
    if kind == "InferenceService":
        return Problem("ome", f"OME: {reason}: {message}") if reason in ISVC_FATAL else None
    if kind in ("ReplicaSet", "Deployment", "LeaderWorkerSet", "StatefulSet"):
        if reason != "FailedCreate":
            return None
        what = "quota" if "exceeded quota" in message else "create"
        return Problem(what, f"{kind} {name}: FailedCreate: {message}")
    if kind != "Pod":
        return None
    if reason == "FailedScheduling":
        return Problem("unschedulable", message, name)
    if reason == "FailedMount":
        final = "not found" in message or "type check failed" in message
        return Problem("mount" if final else "mount_transient", f"FailedMount: {message}", name)
    if reason in IMAGE_FINAL or (reason == "BackOff" and "pulling image" in message.lower()):
        return Problem("image", f"{reason}: {message}", name)
    if reason in ("ErrImagePull", "Failed") and any(k in message for k in IMAGE_WORDS):
        return Problem("image_transient", f"{reason}: {message}", name)
    if reason == "OOMKilling":
        return Problem("oom", message, name)
    if reason == "BackOff" and "restarting failed container" in message:
        return Problem("crash", f"CrashLoopBackOff: {message}", name)
    return None


def event_time(event: Mapping[str, Any]) -> float:
    """When an event last happened (epoch seconds; inf when it carries no time), to ignore stale ones."""
    from datetime import datetime

    stamp = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or \
        (event.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return float("inf")
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")


def isvc_ready(isvc: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (isvc.get("status") or {}).get("conditions") or ())


def isvc_problem(isvc: Mapping[str, Any]) -> Problem | None:
    info = ((isvc.get("status") or {}).get("modelStatus") or {}).get("lastFailureInfo") or {}
    if info.get("reason") or info.get("message"):
        code = f" (exit code {info['exitCode']})" if info.get("exitCode") is not None else ""
        return Problem("model", f"{info.get('reason', 'failure')}: {info.get('message', '')}{code}")
    return None


def isvc_state(isvc: Mapping[str, Any]) -> str:
    conds = (isvc.get("status") or {}).get("conditions") or ()
    parts = [f"{c.get('type')}={c.get('status')}" + (f" ({c['reason']})" if c.get("reason") else "")
             for c in conds]
    return ", ".join(parts) or "no status yet"


def to_error(problem: Problem, *, name: str, config_id: str | None, log_tail: str, waited_s: float = 0.0,
             explain: Callable[[Problem], str] | None = None) -> BackendError:
    where = f"InferenceService {name}" + (f", pod {problem.pod}" if problem.pod else "")
    if problem.kind == "unschedulable":
        extra = explain(problem) if explain is not None else ""   # no GPU node could ever take it (node list)
        if extra or classify_unschedulable(problem.message) == "placement":
            return DeployError(f"{where} cannot be scheduled: {problem.message}" + (f" — {extra}" if extra else ""),
                               config_id=config_id)
        return CapacityError(f"cluster has no room: {where} unschedulable for {waited_s:.0f}s: {problem.message}",
                             config_id=config_id)
    if problem.kind == "quota":
        return CapacityError(f"namespace quota exhausted: {where}: {problem.message}", config_id=config_id)
    if problem.kind in ("image", "image_transient", "config", "create", "mount", "mount_transient", "ome", "watch"):
        return DeployError(f"{where}: {problem.message}", config_id=config_id, log_tail=log_tail)
    if problem.kind == "oom":
        return InfeasibleConfig(f"out of memory: {where}: {problem.message}", config_id=config_id,
                                log_tail=log_tail)
    if problem.kind == "model" and problem.message.split(":")[0] in MODEL_SETUP_REASONS:
        return DeployError(f"{where}: {problem.message}", config_id=config_id, log_tail=log_tail)
    return NotReady(f"config crashed: {where}: {problem.message}", config_id=config_id, log_tail=log_tail)


class Streams:
    """Watch streams in daemon threads, feeding one queue of (tag, event type, camelCase object).

    Each stream resumes from the last resourceVersion it saw; a ``410 Gone`` (expired) makes it list afresh.
    ``WATCH_REFUSALS`` consecutive 401/403/404 answers put one ``("refused", "<status>", {...})`` item."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
        self.events: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, tag: str, list_fn: Callable[..., Any], *args: Any, rbac: str = "", **kwargs: Any) -> None:
        """Watch ``list_fn(*args, **kwargs)``; ``rbac`` names the rule it needs (for the refusal message)."""
        t = threading.Thread(target=self._run, args=(tag, rbac, list_fn, args, kwargs), daemon=True,
                             name=f"sglang-tune-watch-{tag}")
        self._threads.append(t)
        t.start()

    def _run(self, tag: str, rbac: str, list_fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        version: str | None = None
        refusals = 0
        while not self._stop.is_set():
            w: Any = watch.Watch()  # type: ignore[no-untyped-call,unused-ignore]
            extra = {"resource_version": version} if version else {}
            try:
                for ev in w.stream(list_fn, *args, timeout_seconds=WATCH_S, _request_timeout=WATCH_S + 5,
                                   **extra, **kwargs):
                    refusals = 0
                    obj = ev.get("object")
                    if not isinstance(obj, dict):
                        obj = self.api_client.sanitize_for_serialization(obj)
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    self.events.put((tag, str(ev.get("type")), obj))
                    if self._stop.is_set():
                        w.stop()
                        return
                refusals = 0
            except ApiException as exc:
                if exc.status == 410:   # our resourceVersion expired: start from a fresh list
                    version = None
                    continue
                if exc.status in (401, 403, 404):
                    refusals += 1
                    if refusals == WATCH_REFUSALS:
                        self.events.put(("refused", str(exc.status), {
                            "stream": tag, "rbac": rbac, "message": _status_text(exc)}))
                self.events.put(("error", f"HTTP {exc.status}", {"message": _status_text(exc)}))
                self._stop.wait(0.5)
            except Exception as exc:  # connection trouble: report it, retry shortly
                self.events.put(("error", type(exc).__name__, {"message": str(exc)[:300]}))
                self._stop.wait(0.5)

    def get(self, timeout: float) -> tuple[str, str, dict[str, Any]] | None:
        try:
            return self.events.get(timeout=max(0.01, timeout))
        except queue.Empty:
            return None

    def stop(self) -> None:
        self._stop.set()


def _status_text(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message"))
    except Exception:
        return str(getattr(exc, "reason", "") or exc)[:300]


def refused_message(status: str, info: Mapping[str, Any]) -> str:
    """The message for a watch the cluster keeps refusing."""
    return (f"cannot watch {info.get('stream')}: HTTP {status} ({info.get('message')}): without it failures "
            f"would go unseen until the readiness timeout; grant {info.get('rbac') or 'watch on it'} "
            "(deploy/ome-rbac.yaml)")


@dataclass(frozen=True)
class Graces:
    """Seconds a problem that may heal is given before it counts."""

    unschedulable: float = 5.0
    image_pull: float = 15.0     # a first ErrImagePull is often a registry rate limit
    mount: float = 15.0          # a FailedMount that does not say "not found"


def _progress(pending: dict[str, tuple[Problem, float]], pod: str, kind: str | None) -> None:
    """A pod update: a FailedCreate is over (the pod exists), and this pod's held problems of another kind."""
    pending.pop("quota", None)
    for held_kind, (held, _) in list(pending.items()):
        if held.pod == pod and held_kind != kind:
            pending.pop(held_kind)


def wait_until_ready(streams: Streams, *, name: str, timeout: float, graces: Graces, config_id: str | None,
                     log_tail: Callable[[str | None], str], involved: Callable[[Mapping[str, Any]], bool],
                     explain: Callable[[Problem], str] | None = None,
                     initial: Iterable[tuple[str, str, dict[str, Any]]] = ()) -> dict[str, Any]:
    """Consume ``streams`` until the InferenceService is Ready; raise the first problem that will not heal."""
    start = time.monotonic()
    started_wall = time.time()
    deadline = start + timeout
    pending_since: dict[str, tuple[Problem, float]] = {}   # kind -> (problem, first seen) for those with a grace
    grace_of = {"unschedulable": graces.unschedulable, "quota": graces.unschedulable,
                "image_transient": graces.image_pull, "mount_transient": graces.mount}
    last_state = "no status yet"
    pending = list(initial)
    deferred: tuple[Problem, float] | None = None  # an event's problem, held briefly for the pod's own detail
    while True:
        now = time.monotonic()
        if deferred is not None and now - deferred[1] > EVENT_HOLD_S:
            raise to_error(deferred[0], name=name, config_id=config_id, log_tail=log_tail(deferred[0].pod),
                           explain=explain)
        for held, since in list(pending_since.values()):
            if now - since > grace_of[held.kind]:
                raise to_error(held, name=name, config_id=config_id, log_tail=log_tail(held.pod),
                               waited_s=now - since, explain=explain)
        if now > deadline:
            raise NotReady(f"InferenceService {name} not Ready after {timeout:.0f}s (last: {last_state}); raise "
                           "backends.ome.ready_timeout or --sglang-ready-timeout if the model needs longer",
                           config_id=config_id, log_tail=log_tail(None))
        item = pending.pop(0) if pending else streams.get(min(0.25, deadline - now))
        if item is None:
            continue
        tag, etype, obj = item
        problem: Problem | None = None
        if tag == "refused":
            raise DeployError(f"InferenceService {name}: {refused_message(etype, obj)}", config_id=config_id)
        if tag == "isvc":
            if etype == "DELETED":
                raise DeployError(f"InferenceService {name} was deleted while starting", config_id=config_id)
            last_state = isvc_state(obj)
            if isvc_ready(obj):
                return obj
            problem = isvc_problem(obj)
        elif tag == "pod" and etype != "DELETED":
            problem = pod_problem(obj)
            _progress(pending_since, obj["metadata"]["name"], problem.kind if problem else None)
        elif tag == "event" and involved(obj.get("involvedObject") or {}) and \
                event_time(obj) >= started_wall - 5:
            problem = event_problem(obj)
        if problem is None:
            continue
        if problem.kind in grace_of:   # keep the first sighting's time, the latest detail
            pending_since[problem.kind] = (problem, pending_since.get(problem.kind, (problem, time.monotonic()))[1])
            continue
        if tag == "event":
            deferred = deferred or (problem, time.monotonic())
            continue
        raise to_error(problem, name=name, config_id=config_id, log_tail=log_tail(problem.pod), explain=explain)
