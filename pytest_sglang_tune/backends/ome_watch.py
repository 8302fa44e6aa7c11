"""Watch an InferenceService, its pods and their events until Ready, and fail fast on what will never heal.

Classification works on plain camelCase dicts (what the API sends), so it is tested with tables of bodies.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_sglang_tune.errors import BackendError, CapacityError, DeployError, InfeasibleConfig, NotReady

IMAGE_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
IMAGE_WORDS = ("ImagePullBackOff", "ErrImagePull", "pull image", "pulling image")
CONFIG_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
MODEL_SETUP_REASONS = {"BaseModelNotFound", "RuntimeDisabled", "NoSupportingRuntime", "RuntimeNotRecognized",
                       "InvalidPredictorSpec"}
EVENT_HOLD_S = 1.0  # the pod's status says more (exit code, OOMKilled) than the event that races it
WATCH_S = 5  # server-side timeoutSeconds of each watch request; streams are reopened until stopped


@dataclass(frozen=True)
class Problem:
    kind: str      # unschedulable | image | config | oom | crash | model | gone
    message: str
    pod: str | None = None


def pod_problem(pod: Mapping[str, Any]) -> Problem | None:
    """What is wrong with a pod, if anything will not heal by waiting (unschedulable may, within a grace)."""
    name = pod.get("metadata", {}).get("name")
    status = pod.get("status") or {}
    for st in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
        state = st.get("state") or {}
        waiting = state.get("waiting") or {}
        last = (st.get("lastState") or {}).get("terminated") or {}
        term = state.get("terminated") or {}
        reason = waiting.get("reason")
        if reason in IMAGE_REASONS:
            return Problem("image", f"{reason}: {waiting.get('message') or st.get('image', '')}".strip(), name)
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
    reason = event.get("reason") or ""
    message = event.get("message") or ""
    pod = (event.get("involvedObject") or {}).get("name")
    if event.get("type") != "Warning":
        return None
    if reason == "FailedScheduling":
        return Problem("unschedulable", message, pod)
    if reason in IMAGE_REASONS or (reason in ("Failed", "BackOff") and
                                   any(k in message for k in IMAGE_WORDS)):
        return Problem("image", f"{reason}: {message}", pod)
    if reason == "OOMKilling":
        return Problem("oom", message, pod)
    if reason == "BackOff" and "restarting failed container" in message:
        return Problem("crash", f"CrashLoopBackOff: {message}", pod)
    return None


def event_time(event: Mapping[str, Any]) -> float:
    """When an event last happened (epoch seconds; 0 when it carries no time), to ignore stale ones."""
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


def to_error(problem: Problem, *, name: str, config_id: str | None, log_tail: str, waited_s: float = 0.0
             ) -> BackendError:
    where = f"InferenceService {name}" + (f", pod {problem.pod}" if problem.pod else "")
    if problem.kind == "unschedulable":
        return CapacityError(f"cluster has no room: {where} unschedulable for {waited_s:.0f}s: {problem.message}",
                             config_id=config_id)
    if problem.kind in ("image", "config"):
        return DeployError(f"{where}: {problem.message}", config_id=config_id, log_tail=log_tail)
    if problem.kind == "oom":
        return InfeasibleConfig(f"out of memory: {where}: {problem.message}", config_id=config_id,
                                log_tail=log_tail)
    if problem.kind == "model" and problem.message.split(":")[0] in MODEL_SETUP_REASONS:
        return DeployError(f"{where}: {problem.message}", config_id=config_id, log_tail=log_tail)
    return NotReady(f"config crashed: {where}: {problem.message}", config_id=config_id, log_tail=log_tail)


class Streams:
    """Watch streams in daemon threads, feeding one queue of (tag, event type, camelCase object)."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
        self.events: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, tag: str, list_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        t = threading.Thread(target=self._run, args=(tag, list_fn, args, kwargs), daemon=True,
                             name=f"sglang-tune-watch-{tag}")
        self._threads.append(t)
        t.start()

    def _run(self, tag: str, list_fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            w: Any = watch.Watch()  # type: ignore[no-untyped-call,unused-ignore]
            try:
                for ev in w.stream(list_fn, *args, timeout_seconds=WATCH_S, _request_timeout=WATCH_S + 5,
                                   **kwargs):
                    obj = ev.get("object")
                    if not isinstance(obj, dict):
                        obj = self.api_client.sanitize_for_serialization(obj)
                    self.events.put((tag, str(ev.get("type")), obj))
                    if self._stop.is_set():
                        w.stop()
                        return
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


def wait_until_ready(streams: Streams, *, name: str, timeout: float, grace: float, config_id: str | None,
                     log_tail: Callable[[str | None], str], pod_filter: Callable[[str], bool],
                     initial: Iterable[tuple[str, str, dict[str, Any]]] = ()) -> dict[str, Any]:
    """Consume ``streams`` until the InferenceService is Ready; raise the first problem that will not heal."""
    start = time.monotonic()
    started_wall = time.time()
    deadline = start + timeout
    unschedulable_since: float | None = None
    unschedulable: Problem | None = None
    last_state = "no status yet"
    pending = list(initial)
    deferred: tuple[Problem, float] | None = None  # an event's problem, held briefly for the pod's own detail
    while True:
        now = time.monotonic()
        if deferred is not None and now - deferred[1] > EVENT_HOLD_S:
            raise to_error(deferred[0], name=name, config_id=config_id, log_tail=log_tail(deferred[0].pod))
        if unschedulable is not None and unschedulable_since is not None and now - unschedulable_since > grace:
            raise to_error(unschedulable, name=name, config_id=config_id, log_tail="",
                           waited_s=now - unschedulable_since)
        if now > deadline:
            raise NotReady(f"InferenceService {name} not Ready after {timeout:.0f}s (last: {last_state}); raise "
                           "backends.ome.ready_timeout or --sglang-ready-timeout if the model needs longer",
                           config_id=config_id, log_tail=log_tail(None))
        item = pending.pop(0) if pending else streams.get(min(0.25, deadline - now))
        if item is None:
            continue
        tag, etype, obj = item
        problem: Problem | None = None
        if tag == "isvc":
            if etype == "DELETED":
                raise DeployError(f"InferenceService {name} was deleted while starting", config_id=config_id)
            last_state = isvc_state(obj)
            if isvc_ready(obj):
                return obj
            problem = isvc_problem(obj)
        elif tag == "pod" and etype != "DELETED":
            problem = pod_problem(obj)
            if problem is None and unschedulable is not None and unschedulable.pod == obj["metadata"]["name"]:
                unschedulable = unschedulable_since = None  # scheduled after all
        elif tag == "event" and pod_filter((obj.get("involvedObject") or {}).get("name") or "") and \
                event_time(obj) >= started_wall - 5:
            problem = event_problem(obj)
        if problem is None:
            continue
        if problem.kind == "unschedulable":
            if unschedulable is None:
                unschedulable_since = time.monotonic()
            unschedulable = problem
            continue
        if tag == "event":
            deferred = deferred or (problem, time.monotonic())
            continue
        raise to_error(problem, name=name, config_id=config_id, log_tail=log_tail(problem.pod))
