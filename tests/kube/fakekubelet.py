"""The fake cluster's ReplicaSet controller, scheduler glue and kubelet (what OME's Deployment leads to).

- ReplicaSet controller: ``<isvc>-engine-<hash>`` creates its pod unless admission forbids it — a ResourceQuota
  on ``requests.nvidia.com/gpu`` (``quota``) or PodSecurity (``fault="podsecurity"``) — and then only a
  ``FailedCreate`` event says so (``pkg/controller/replicaset``: ``Error creating: pods "<name>" is forbidden: ...``).
- scheduler: ``fakesched``; a pod that does not fit gets ``PodScheduled=False/Unschedulable`` and a
  ``FailedScheduling`` event, and is retried when a pod goes away.
- kubelet: "runs" the engine container as the sim server with exactly its merged ``command + args``
  (``$(VAR)`` expanded from its env), the only rewrites being pod networking (``--host`` → 127.0.0.1, ``--port`` →
  a free local port, reached through the API server's port-forward) and ``python3 -m sglang.launch_server`` →
  ``python -m pytest_sglang_tune.sim``; image pulls, mounts, crashes and OOM kills are injected by fault name.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from fakeapi import FakeApiServer
from fakesched import GPU, effective_request, schedule
from fakestore import Store, now

SGLANG = ["python3", "-m", "sglang.launch_server"]
POD_LABEL = "ome.io/inferenceservice"
FAULTS = ("drop_args", "tp_override", "unschedulable", "image_pull", "errimagepull_transient", "crash",
          "never_ready", "model_failure", "oom", "failed_mount", "podsecurity", "sidecar_restart")
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (``$$`` is a literal ``$``; unknown variables stay as written)."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeKubelet:
    def __init__(self, store: Store, api: FakeApiServer, workdir: Path) -> None:
        self.store = store
        self.api = api
        self.workdir = workdir
        self.fault: str | None = None
        self.gpu_quota: dict[str, int] = {}         # namespace -> ResourceQuota hard requests.nvidia.com/gpu
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.argv_seen: dict[str, list[str]] = {}   # isvc name -> argv the "container" ran (after rewrites)
        self.pending: list[tuple[str, str, str]] = []   # unschedulable pods: (namespace, pod, isvc)
        self._stop = threading.Event()
        self._lock = threading.Lock()   # no process starts once close() has begun

    # --- helpers -------------------------------------------------------------------------------------------
    def event(self, ns: str, kind: str, name: str, reason: str, message: str, etype: str = "Warning",
              component: str = "kubelet") -> None:
        self.store.put("events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:10]}", "namespace": ns},
            "involvedObject": {"kind": kind, "name": name, "namespace": ns,
                               "apiVersion": "apps/v1" if kind == "ReplicaSet" else "v1"},
            "reason": reason, "message": message, "type": etype, "count": 1, "firstTimestamp": now(),
            "lastTimestamp": now(), "source": {"component": component}})

    def update_pod(self, ns: str, pod: str, status: Mapping[str, Any], node: str | None = None) -> None:
        def apply(o: dict[str, Any]) -> None:
            o["status"] = {**(o.get("status") or {}), **status}
            if node:
                o["spec"]["nodeName"] = node
        self.store.update("pods", ns, pod, apply)

    def set_isvc_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        def apply(o: dict[str, Any]) -> None:
            o["status"] = {**(o.get("status") or {}), **status}
        self.store.update("inferenceservices", ns, name, apply)

    def _cstatus(self, container: Mapping[str, Any], *, ready: bool, restarts: int = 0,
                 state: Mapping[str, Any] | None = None, last: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out = {"name": container["name"], "image": container.get("image", ""), "imageID":
               "docker.io/lmsysorg/sglang@sha256:" + "ab" * 32, "ready": ready, "restartCount": restarts,
               "state": state or {"running": {"startedAt": now()}}}
        if last:
            out["lastState"] = last
        return out

    # --- ReplicaSet controller and scheduler ---------------------------------------------------------------
    def deploy(self, isvc: dict[str, Any], pod_spec: dict[str, Any], container: str, labels: dict[str, str]) -> None:
        ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
        rs = f"{name}-engine-{uuid.uuid4().hex[:9]}"
        rs_uid = self.store.put("replicasets", {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                "metadata": {"name": rs, "namespace": ns, "labels": dict(labels)},
                                                "spec": {"replicas": 1, "template": {"spec": pod_spec}}}
                                )["metadata"]["uid"]
        pod_name = f"{rs}-{uuid.uuid4().hex[:5]}"
        forbidden = self._admission(ns, pod_name, pod_spec)
        if forbidden:
            self.event(ns, "ReplicaSet", rs, "FailedCreate", f'Error creating: pods "{pod_name}" is forbidden: '
                                                             f"{forbidden}", component="replicaset-controller")
            return
        if self.fault == "sidecar_restart":
            pod_spec["containers"].append({"name": "log-shipper", "image": "busybox", "command": ["sleep", "inf"]})
        self.store.put("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod_name, "namespace": ns, "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": rs_uid,
                                 "controller": True}],
            "annotations": {"fake/container": container}},
            "spec": pod_spec, "status": {"phase": "Pending", "conditions": []}})
        self._schedule(ns, pod_name, name)

    def _admission(self, ns: str, pod: str, spec: dict[str, Any]) -> str:
        if self.fault == "podsecurity":
            c = spec["containers"][0]["name"]
            return (f'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "{c}" '
                    f'must set securityContext.allowPrivilegeEscalation=false), runAsNonRoot != true (pod or '
                    f'container "{c}" must set securityContext.runAsNonRoot=true)')
        hard = self.gpu_quota.get(ns)
        if hard is None:
            return ""
        used = sum(effective_request(p["spec"], GPU) for p in self.store.list("pods", ns)
                   if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        want = effective_request(spec, GPU)
        if used + want <= hard:
            return ""
        return (f"exceeded quota: gpu-quota, requested: requests.{GPU}={want:g}, used: requests.{GPU}={used:g}, "
                f"limited: requests.{GPU}={hard}")

    def _schedule(self, ns: str, pod_name: str, isvc: str) -> None:
        pod = self.store.get("pods", ns, pod_name)
        if pod is None:
            return
        node, why = schedule(pod["spec"], self.store.list("nodes"), self.store.list("pods"))
        if self.fault == "unschedulable":
            node, why = None, why or f"0/1 nodes are available: 1 Insufficient {GPU}."
        if node is None:
            self.update_pod(ns, pod_name, {"conditions": [{"type": "PodScheduled", "status": "False",
                                                           "reason": "Unschedulable", "message": why}]})
            self.event(ns, "Pod", pod_name, "FailedScheduling", why, component="default-scheduler")
            if (ns, pod_name, isvc) not in self.pending:
                self.pending.append((ns, pod_name, isvc))
            return
        self.update_pod(ns, pod_name, {"conditions": [{"type": "PodScheduled", "status": "True"}]}, node=node)
        threading.Thread(target=self._kubelet, args=(ns, isvc, pod_name, node), daemon=True).start()

    def retry_pending(self) -> None:
        """A pod went away: the scheduler tries the pods it could not place again."""
        waiting, self.pending = self.pending, []
        for ns, pod, isvc in waiting:
            self._schedule(ns, pod, isvc)

    # --- kubelet -------------------------------------------------------------------------------------------
    def _kubelet(self, ns: str, name: str, pod_name: str, node: str) -> None:
        pod = self.store.get("pods", ns, pod_name)
        if pod is None:
            return
        cname = pod["metadata"]["annotations"]["fake/container"]
        container = next(c for c in pod["spec"]["containers"] if c["name"] == cname)
        image = container.get("image", "docker.io/lmsysorg/sglang:fake")
        if self.fault in ("image_pull", "errimagepull_transient"):
            msg = f'failed to pull and unpack image "{image}": 429 Too Many Requests'
            self.update_pod(ns, pod_name, {"containerStatuses": [self._cstatus(container, ready=False, state={
                "waiting": {"reason": "ErrImagePull", "message": msg}})]})
            self.event(ns, "Pod", pod_name, "Failed", f'Failed to pull image "{image}": {msg}')
            time.sleep(1.0)
            if self.fault == "image_pull":
                back = f'Back-off pulling image "{image}"'
                self.update_pod(ns, pod_name, {"containerStatuses": [self._cstatus(container, ready=False, state={
                    "waiting": {"reason": "ImagePullBackOff", "message": back}})]})
                self.event(ns, "Pod", pod_name, "BackOff", back)
                return
        if self.fault == "failed_mount":
            self.update_pod(ns, pod_name, {"containerStatuses": [self._cstatus(container, ready=False, state={
                "waiting": {"reason": "ContainerCreating"}})]})
            self.event(ns, "Pod", pod_name, "FailedMount",
                       'MountVolume.SetUp failed for volume "hf-token" : secret "hf-token" not found')
            return
        if self.fault in ("never_ready", "model_failure"):
            self.update_pod(ns, pod_name, {"phase": "Running", "containerStatuses": [
                self._cstatus(container, ready=False)]})
            if self.fault == "model_failure":
                self.set_isvc_status(ns, name, {"modelStatus": {"lastFailureInfo": {
                    "reason": "ModelLoadFailed", "message": "weights for the model could not be loaded",
                    "exitCode": 1}}})
            return
        self._run(ns, name, pod_name, container)

    def _run(self, ns: str, name: str, pod_name: str, container: dict[str, Any]) -> None:
        env = {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}
        argv = [expand(str(a), env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if self.fault == "drop_args":      # the old autotuner's bug: the tuned flags never reach the server
            argv = [expand(str(a), env) for a in container.get("command") or []]
        if self.fault == "tp_override":    # an AcceleratorClass runtimeArgsOverride rewriting --tp-size
            argv += ["--tp-size", "2"]
        argv = self._runnable(argv)
        if self.fault == "crash":
            argv = [sys.executable, "-c", "import sys; print('Traceback: RuntimeError: CUDA error: an illegal "
                    "memory access was encountered', flush=True); sys.exit(3)"]
        if self.fault == "oom":
            argv = [sys.executable, "-c", "import sys; print('Killed', flush=True); sys.exit(137)"]
        self.argv_seen[name] = argv
        log = self.workdir / f"{ns}-{pod_name}.log"
        proc_env = {**os.environ, **env, "SGLANG_SIM_NUM_GPUS": "8"}   # virtual GPUs; the request is bookkeeping
        with self._lock:
            if self._stop.is_set():   # the cluster is closing: a process started now would outlive it
                return
            with log.open("wb") as fh:
                proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=proc_env, start_new_session=True)
            self.procs[(ns, pod_name)] = proc
        self.api.logs[(ns, pod_name)] = log
        port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
        self.api.pod_ports[(ns, pod_name)] = port
        statuses = [self._cstatus(c, ready=False) for c in self._containers(ns, pod_name)]
        self.update_pod(ns, pod_name, {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": statuses})
        self._watch_process(ns, name, pod_name, container, proc, port)

    def _containers(self, ns: str, pod_name: str) -> list[dict[str, Any]]:
        pod = self.store.get("pods", ns, pod_name)
        return list(pod["spec"]["containers"]) if pod else []

    def _runnable(self, argv: list[str]) -> list[str]:
        out = list(argv)
        if out[:3] == SGLANG:
            out = [sys.executable, "-m", "pytest_sglang_tune.sim", *out[3:]]
        for flag, value in (("--host", "127.0.0.1"), ("--port", str(_free_port()))):
            if flag in out:
                out[out.index(flag) + 1] = value
            else:
                out += [flag, value]
        return out

    def _watch_process(self, ns: str, name: str, pod: str, container: dict[str, Any],
                       proc: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not self._stop.is_set():
            try:
                if requests.get(f"http://127.0.0.1:{port}/health_generate", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        if proc.poll() is None:
            statuses = [self._cstatus(c, ready=True) for c in self._containers(ns, pod)]
            self.update_pod(ns, pod, {"containerStatuses": statuses, "conditions": [
                {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]})
            self.set_isvc_status(ns, name, {"url": f"http://127.0.0.1:{port}", "conditions": [
                {"type": "EngineReady", "status": "True", "lastTransitionTime": now()},
                {"type": "Ready", "status": "True", "lastTransitionTime": now()}]})
            if self.fault == "sidecar_restart":   # the sidecar restarts; the server keeps running
                time.sleep(0.5)
                statuses = [self._cstatus(c, ready=True, restarts=1 if c["name"] == "log-shipper" else 0)
                            for c in self._containers(ns, pod)]
                self.update_pod(ns, pod, {"containerStatuses": statuses})
            proc.wait()
        if self.store.get("pods", ns, pod) is None or self._stop.is_set():
            return
        code = proc.returncode
        reason = "OOMKilled" if code == 137 else "Error"
        self.update_pod(ns, pod, {"containerStatuses": [self._cstatus(
            container, ready=False, restarts=1,
            state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}},
            last={"terminated": {"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()}})]})
        self.event(ns, "Pod", pod, "BackOff", "Back-off restarting failed container " + container["name"])

    # --- teardown ------------------------------------------------------------------------------------------
    def teardown(self, isvc: dict[str, Any]) -> None:
        ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
        self.pending = [p for p in self.pending if p[2] != name]
        for plural in ("replicasets", "services"):
            for obj in self.store.list(plural, ns):
                if obj["metadata"]["name"] in (name, f"{name}-engine") or \
                        obj["metadata"]["name"].startswith(f"{name}-engine-"):
                    self.store.delete(plural, ns, obj["metadata"]["name"])
        for pod in self.store.list("pods", ns):
            if (pod["metadata"].get("labels") or {}).get(POD_LABEL) != name:
                continue
            pname = pod["metadata"]["name"]
            self.store.update("pods", ns, pname, lambda o: o["metadata"].__setitem__("deletionTimestamp", now()))
            proc = self.procs.pop((ns, pname), None)
            if proc is not None:
                self._kill(proc)
            self.store.delete("pods", ns, pname)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
        for proc in list(self.procs.values()):
            self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
