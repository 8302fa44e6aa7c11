"""The fake OME controller, kube-scheduler and kubelet of the kube tests.

On an InferenceService it merges the engine runner over the runtime's as OME does (``ome_merge``), schedules the
pod on a node with enough free ``nvidia.com/gpu``, and "runs" the container: the sim server with exactly the
merged ``command + args`` (``$(MODEL_PATH)`` expanded), the only rewrites being pod networking (``--host`` →
127.0.0.1, ``--port`` → a free local port, reachable through the API server's port-forward) and
``python3 -m sglang.launch_server`` → ``python -m pytest_sglang_tune.sim``. Faults are injected by name.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from fakeapi import FakeApiServer, Store, now

from pytest_sglang_tune.backends.local import free_port
from pytest_sglang_tune.backends.ome_manifest import GPU, POD_LABEL
from pytest_sglang_tune.backends.ome_merge import container_env, effective_argv, merge_engine

SGLANG = ["python3", "-m", "sglang.launch_server"]
FAULTS = ("drop_args", "tp_override", "unschedulable", "image_pull", "crash", "never_ready", "model_failure",
          "oom")


class FakeOmeController:
    def __init__(self, store: Store, api: FakeApiServer, workdir: Path) -> None:
        self.store = store
        self.api = api
        self.workdir = workdir
        self.fault: str | None = None
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.argv_seen: dict[str, list[str]] = {}      # isvc name -> argv the "container" ran (after rewrites)
        self.merged_seen: dict[str, list[str]] = {}    # isvc name -> command + args after OME's merge
        self._q: queue.Queue[tuple[str, str, dict[str, Any]] | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fake-ome-controller")
        store.listeners.append(self._on_change)
        self._thread.start()

    def _on_change(self, etype: str, plural: str, obj: dict[str, Any]) -> None:
        if plural == "inferenceservices" and etype in ("ADDED", "DELETED"):
            self._q.put((etype, plural, obj))

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            etype, _, obj = item
            try:
                if etype == "ADDED":
                    self.reconcile(obj)
                else:
                    self.teardown(obj)
            except Exception as exc:  # a controller bug must show in the test, not hang it
                print(f"fake controller error: {exc!r}", file=sys.stderr)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(5)
        self._stop.set()
        for proc in list(self.procs.values()):
            self._kill(proc)

    # --- helpers -------------------------------------------------------------------------------------------
    def event(self, ns: str, pod: str, reason: str, message: str, etype: str = "Warning") -> None:
        name = f"{pod}.{uuid.uuid4().hex[:10]}"
        self.store.put("events", {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": ns, "apiVersion": "v1"},
            "reason": reason, "message": message, "type": etype, "count": 1,
            "firstTimestamp": now(), "lastTimestamp": now(), "source": {"component": "kubelet"}})

    def set_isvc_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        def apply(o: dict[str, Any]) -> None:
            o["status"] = {**(o.get("status") or {}), **status}
        self.store.update("inferenceservices", ns, name, apply)

    def update_pod(self, ns: str, pod: str, status: Mapping[str, Any], node: str | None = None) -> None:
        def apply(o: dict[str, Any]) -> None:
            o["status"] = {**(o.get("status") or {}), **status}
            if node:
                o["spec"]["nodeName"] = node
        self.store.update("pods", ns, pod, apply)

    def free_gpus(self) -> dict[str, int]:
        free = {}
        for n in self.store.list("nodes"):
            free[n["metadata"]["name"]] = int((n.get("status") or {}).get("allocatable", {}).get(GPU, 0))
        for p in self.store.list("pods"):
            node = p["spec"].get("nodeName")
            if node in free and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                for c in p["spec"]["containers"]:
                    free[node] -= int((c.get("resources") or {}).get("limits", {}).get(GPU, 0))
        return free

    # --- reconcile -----------------------------------------------------------------------------------------
    def reconcile(self, isvc: dict[str, Any]) -> None:
        ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
        spec = isvc["spec"]
        rref, mref = spec["runtime"], spec["model"]
        if rref.get("kind", "ClusterServingRuntime") == "ClusterServingRuntime":
            runtime = self.store.get("clusterservingruntimes", "", rref["name"])
        else:
            runtime = self.store.get("servingruntimes", ns, rref["name"])
        if mref.get("kind", "ClusterBaseModel") == "ClusterBaseModel":
            model = self.store.get("clusterbasemodels", "", mref["name"])
        else:
            model = self.store.get("basemodels", ns, mref["name"])
        if runtime is None or model is None:
            missing = "BaseModelNotFound" if model is None else "NoSupportingRuntime"
            self.set_isvc_status(ns, name, {"modelStatus": {"lastFailureInfo": {
                "reason": missing, "message": "not found"}}})
            return
        engine = merge_engine(runtime["spec"].get("engineConfig"), spec.get("engine"))
        assert engine is not None
        runner = dict(engine["runner"])
        if self.fault == "drop_args":
            runner.pop("args", None)           # the old autotuner's bug: the tuned flags never reach the pod
        if self.fault == "tp_override":        # an AcceleratorClass runtimeArgsOverride rewriting --tp-size
            runner["args"] = [*(runner.get("args") or ()), "--tp-size", "2"]
        model_path = str(model["spec"].get("storage", {}).get("path") or "/mnt/models")
        runner["env"] = [*(runner.get("env") or ()), {"name": "MODEL_PATH", "value": model_path}]
        pod_name = f"{name}-engine-{uuid.uuid4().hex[:5]}"
        container = {k: v for k, v in runner.items() if k in (
            "name", "image", "command", "args", "env", "ports", "resources", "volumeMounts")}
        container.setdefault("image", "docker.io/lmsysorg/sglang:fake")
        container["resources"] = {part: {k: str(v) for k, v in values.items()}  # the API server's canonical form
                                  for part, values in (container.get("resources") or {}).items()}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod_name, "namespace": ns, "labels": {POD_LABEL: name, "component": "engine"},
            "ownerReferences": [{"apiVersion": "ome.io/v1beta1", "kind": "InferenceService", "name": name,
                                 "uid": isvc["metadata"]["uid"], "controller": True}]},
            "spec": {"containers": [container], "nodeSelector": engine.get("nodeSelector"),
                     "tolerations": engine.get("tolerations")},
            "status": {"phase": "Pending", "conditions": []}}
        self.store.put("pods", pod)
        merged = effective_argv(container)
        self.merged_seen[name] = merged
        need = int((container.get("resources") or {}).get("limits", {}).get(GPU, 0))
        free = self.free_gpus()
        node = next((n for n, f in sorted(free.items()) if f >= need), None)
        if self.fault == "unschedulable" or node is None:
            msg = f"0/{len(free)} nodes are available: {len(free)} Insufficient {GPU}. preemption: 0/{len(free)} " \
                  "nodes are available: no preemption victims found for incoming pod."
            self.update_pod(ns, pod_name, {"conditions": [{"type": "PodScheduled", "status": "False",
                                                           "reason": "Unschedulable", "message": msg}]})
            self.event(ns, pod_name, "FailedScheduling", msg)
            return
        cname = container["name"]
        scheduled = [{"type": "PodScheduled", "status": "True"}]
        if self.fault == "image_pull":
            msg = f'Back-off pulling image "{container["image"]}"'
            self.update_pod(ns, pod_name, {"conditions": scheduled, "containerStatuses": [{
                "name": cname, "image": container["image"], "imageID": "", "ready": False, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": msg}}}]}, node=node)
            self.event(ns, pod_name, "Failed", f"Failed to pull image {container['image']!r}: ErrImagePull")
            return
        if self.fault == "never_ready":
            self.update_pod(ns, pod_name, {"phase": "Running", "conditions": scheduled, "containerStatuses": [
                self._cstatus(container, ready=False)]}, node=node)
            return
        if self.fault == "model_failure":
            self.update_pod(ns, pod_name, {"phase": "Running", "conditions": scheduled, "containerStatuses": [
                self._cstatus(container, ready=False)]}, node=node)
            self.set_isvc_status(ns, name, {"modelStatus": {"lastFailureInfo": {
                "reason": "ModelLoadFailed", "message": "weights for the model could not be loaded",
                "exitCode": 1}}})
            return
        argv = self._runnable(merged)
        if self.fault == "crash":
            argv = [sys.executable, "-c", "import sys; print('Traceback: RuntimeError: CUDA error: an illegal "
                    "memory access was encountered', flush=True); sys.exit(3)"]
        if self.fault == "oom":
            argv = [sys.executable, "-c", "import sys; print('Killed', flush=True); sys.exit(137)"]
        self.argv_seen[name] = argv
        log = self.workdir / f"{ns}-{pod_name}.log"
        env = dict(os.environ)
        env.update(container_env(container))
        env["SGLANG_SIM_NUM_GPUS"] = "8"  # virtual GPUs; the pod's request is bookkeeping
        with log.open("wb") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        self.procs[(ns, pod_name)] = proc
        self.api.logs[(ns, pod_name)] = log
        self.update_pod(ns, pod_name, {"phase": "Running", "conditions": scheduled, "podIP": "127.0.0.1",
                                       "containerStatuses": [self._cstatus(container, ready=False)]}, node=node)
        threading.Thread(target=self._kubelet, args=(ns, name, pod_name, container, proc), daemon=True).start()

    def _cstatus(self, container: Mapping[str, Any], *, ready: bool, restarts: int = 0,
                 state: Mapping[str, Any] | None = None, last: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out = {"name": container["name"], "image": container["image"], "imageID":
               "docker.io/lmsysorg/sglang@sha256:" + "ab" * 32, "ready": ready, "restartCount": restarts,
               "state": state or {"running": {"startedAt": now()}}}
        if last:
            out["lastState"] = last
        return out

    def _runnable(self, argv: list[str]) -> list[str]:
        out = list(argv)
        if out[:3] == SGLANG:
            out = [sys.executable, "-m", "pytest_sglang_tune.sim", *out[3:]]
        port = free_port()
        self._port = port
        for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
            if flag in out:
                out[out.index(flag) + 1] = value
            else:
                out += [flag, value]
        return out

    def _kubelet(self, ns: str, name: str, pod: str, container: dict[str, Any], proc: subprocess.Popen[bytes]
                 ) -> None:
        port = int(self.argv_seen[name][self.argv_seen[name].index("--port") + 1]) \
            if "--port" in self.argv_seen[name] else 0
        self.api.pod_ports[(ns, pod)] = port
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not self._stop.is_set():
            try:
                if requests.get(f"http://127.0.0.1:{port}/health_generate", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        if proc.poll() is None:
            self.update_pod(ns, pod, {"containerStatuses": [self._cstatus(container, ready=True)],
                                      "conditions": [{"type": "PodScheduled", "status": "True"},
                                                     {"type": "Ready", "status": "True"}]})
            self.set_isvc_status(ns, name, {"url": f"http://127.0.0.1:{port}", "conditions": [
                {"type": "EngineReady", "status": "True", "lastTransitionTime": now()},
                {"type": "Ready", "status": "True", "lastTransitionTime": now()}]})
            proc.wait()
        if self.store.get("pods", ns, pod) is None or self._stop.is_set():
            return
        code = proc.returncode
        reason = "OOMKilled" if code == 137 else "Error"
        self.update_pod(ns, pod, {"containerStatuses": [self._cstatus(
            container, ready=False, restarts=1,
            state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}},
            last={"terminated": {"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()}})]})
        self.event(ns, pod, "BackOff", "Back-off restarting failed container " + container["name"])

    # --- teardown ------------------------------------------------------------------------------------------
    def teardown(self, isvc: dict[str, Any]) -> None:
        ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
        for pod in self.store.list("pods", ns):
            if (pod["metadata"].get("labels") or {}).get(POD_LABEL) != name:
                continue
            pname = pod["metadata"]["name"]
            self.store.update("pods", ns, pname, lambda o: o["metadata"].__setitem__("deletionTimestamp", now()))
            proc = self.procs.pop((ns, pname), None)
            if proc is not None:
                self._kill(proc)
            self.store.delete("pods", ns, pname)

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
