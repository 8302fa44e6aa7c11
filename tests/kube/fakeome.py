"""The fake OME controller and model agent of the kube tests (the kubelet side is ``fakekubelet``).

Written from sgl-project/ome at the CRDs' commit (17b77edad23bae262e0c9adb7f12039397a5d33d), never from the
plugin: ``pkg/controller/v1beta1/inferenceservice/controller.go`` ``Reconcile`` — the deployment mode from the
InferenceService's ``ome.io/deploymentMode`` annotation or the cluster default (a Serverless mode without Knative:
Warning ``ServerlessModeRejected`` and nothing else); the base model (``utils/reconciliation.go``
``GetBaseModel``: a namespaced BaseModel first, then the ClusterBaseModel; a disabled one is refused) else Warning
``ModelReconcileError``; the named runtime validated (``pkg/runtimeselector``: model format required, runtime found
namespaced-first, not disabled, a supported format matching name, framework, architecture and quantization) else
Warning ``RuntimeValidationError``; the specs merged (``fakemerge``) and the engine's pod built; then the node
selector OME adds so the pod lands where the model is (``utils/utils.go`` ``AddNodeSelectorForModelReadyNode``,
``components/base.go`` ``UpdatePodSpecNodeSelector``/``MergeNodeSelector``), the ``MODEL_PATH`` env
(``UpdateEnvVariables``), the ``<isvc>-engine`` and ``<isvc>`` Services and ``status.url``
(``setExternalServiceURL``: ``http://<isvc>.<ns>.svc.cluster.local``; here the pod's loopback address, which is
this fake cluster's network). All failures are events on the InferenceService, with no status written.

The model agent (``pkg/modelagent``) downloads a new base model and labels the nodes it is on
``models.ome.io/clusterbasemodel.<name>=Ready`` (``pkg/constants/constants.go`` ``GetClusterBaseModelLabel``; long
names hashed); the model's ``status`` gets ``state`` and ``nodesReady``.
"""

from __future__ import annotations

import hashlib
import queue
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fakeapi import FakeApiServer
from fakekubelet import FakeKubelet
from fakemerge import DEPLOYMENT_MODE, VALID_MODES, engine_deployment_mode, engine_pod_spec, merge_engine_spec
from fakestore import Store, now

POD_LABEL = "ome.io/inferenceservice"
ISVC_WARNINGS = ("AcceleratorClassError", "DeploymentModeError", "RuntimeFetchError", "MergeSpecsError")


def model_label(name: str, namespace: str = "") -> str:
    """``GetClusterBaseModelLabel`` / ``GetBaseModelLabel`` (``MaxLabelNameLength`` 49, 8-hex-digit hash)."""
    def cut(text: str, room: int) -> str:
        if len(text) <= room:
            return text
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        keep = room - 9
        return digest[:room] if keep <= 0 else digest + "-" + text[-keep:]
    if not namespace:
        return "models.ome.io/clusterbasemodel." + cut(name, 49 - len("clusterbasemodel."))
    space = 49 - len("basemodel.") - 1
    if len(namespace) + len(name) <= space:
        return f"models.ome.io/{namespace}.basemodel.{name}"
    ns_room = space // 2 if space < 16 else min(len(namespace), 8)
    return f"models.ome.io/{cut(namespace, ns_room)}.basemodel.{cut(name, space - ns_room)}"


def _format_matches(model: dict[str, Any], fmt: dict[str, Any]) -> bool:
    """``compareSupportedModelFormats`` (versions compared only when both sides give one)."""
    for key in ("modelArchitecture", "quantization"):
        if (model.get(key) is None) != (fmt.get(key) is None) or model.get(key) != fmt.get(key):
            return False
    want = fmt.get("modelFormat")
    if want is None or want.get("name") != (model.get("modelFormat") or {}).get("name"):
        return False
    mf, ff = model.get("modelFramework"), fmt.get("modelFramework")
    if (mf is None) != (ff is None):
        return False
    return mf is None or mf.get("name") == ff.get("name")


class FakeOmeController:
    """Reconciles InferenceServices (one thread) and plays the model agent; faults are injected by name."""

    def __init__(self, store: Store, api: FakeApiServer, workdir: Path) -> None:
        self.store = store
        self.api = api
        self.kubelet = FakeKubelet(store, api, workdir)
        self.default_deployment_mode = "RawDeployment"   # the cluster's inferenceservice config
        self.knative = False
        self.isvc_warning: tuple[str, str] | None = None   # inject a Warning event on the InferenceService
        self.model_nodes: list[str] | None = None   # where the model agent puts new models (None: every GPU node)
        self.download_s = 0.3
        self.merged_seen: dict[str, list[str]] = {}   # isvc name -> the engine container's command + args
        self.modes_seen: dict[str, str] = {}          # isvc name -> the engine's deployment mode
        self._q: queue.Queue[tuple[str, str, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fake-ome-controller")
        store.listeners.append(self._on_change)
        self._thread.start()

    # the kubelet's knobs, kept reachable where the tests always found them
    @property
    def fault(self) -> str | None:
        return self.kubelet.fault

    @fault.setter
    def fault(self, value: str | None) -> None:
        self.kubelet.fault = value

    @property
    def procs(self) -> dict[tuple[str, str], Any]:
        return self.kubelet.procs

    @property
    def argv_seen(self) -> dict[str, list[str]]:
        return self.kubelet.argv_seen

    def _on_change(self, etype: str, plural: str, obj: dict[str, Any]) -> None:
        if plural == "inferenceservices" and etype in ("ADDED", "DELETED"):
            self._q.put((etype, plural, obj))
        elif plural in ("clusterbasemodels", "basemodels") and etype == "ADDED" and not obj.get("status"):
            self._q.put((etype, plural, obj))
        elif plural == "pods" and etype == "DELETED":
            self._q.put((etype, plural, obj))

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            etype, plural, obj = item
            try:
                if plural == "inferenceservices" and etype == "ADDED":
                    self.reconcile(obj)
                elif plural == "inferenceservices":
                    self.kubelet.teardown(obj)
                elif plural == "pods":
                    self.kubelet.retry_pending()
                else:
                    self.download(plural, obj)
            except Exception as exc:  # a controller bug must show in the test, not hang it
                print(f"fake controller error: {exc!r}", file=sys.stderr)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(5)
        self.kubelet.close()

    # --- the model agent -----------------------------------------------------------------------------------
    def download(self, plural: str, model: dict[str, Any]) -> None:
        name, ns = model["metadata"]["name"], model["metadata"].get("namespace", "")
        self.store.update(plural, ns, name, lambda o: o.__setitem__("status", {"state": "In_Transit"}))
        time.sleep(self.download_s)
        gpu_nodes = [n["metadata"]["name"] for n in self.store.list("nodes")
                     if float(((n.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu", 0)) > 0]
        ready = self.model_nodes if self.model_nodes is not None else gpu_nodes
        self.label_nodes(model_label(name, ns), ready)
        self.store.update(plural, ns, name, lambda o: o.__setitem__(
            "status", {"state": "Ready", "nodesReady": list(ready), "lifecycle": "Ready"}))

    def label_nodes(self, label: str, nodes: list[str]) -> None:
        for node in nodes:
            self.store.update("nodes", "", node, lambda o: o["metadata"].setdefault("labels", {}).__setitem__(
                label, "Ready"))

    # --- reconcile -----------------------------------------------------------------------------------------
    def warn(self, isvc: dict[str, Any], reason: str, message: str) -> None:
        """``Recorder.Eventf(isvc, Warning, reason, message)``."""
        meta = isvc["metadata"]
        self.store.put("events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:10]}", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "InferenceService", "name": meta["name"], "namespace": meta["namespace"],
                               "apiVersion": "ome.io/v1beta1", "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": "Warning", "count": 1, "firstTimestamp": now(),
            "lastTimestamp": now(), "source": {"component": "inferenceservice-controller"}})

    def _base_model(self, isvc: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        name, ns = isvc["spec"]["model"]["name"], isvc["metadata"]["namespace"]
        model = self.store.get("basemodels", ns, name) or self.store.get("clusterbasemodels", "", name)
        if model is None:
            return None, f"No BaseModel or ClusterBaseModel with the name: {name}"
        if model["spec"].get("disabled"):
            return None, f"specified base model {name} is disabled"
        return model, ""

    def _runtime(self, isvc: dict[str, Any], model: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        rname, ns = isvc["spec"]["runtime"]["name"], isvc["metadata"]["namespace"]
        spec = model["spec"]
        if not (spec.get("modelFormat") or {}).get("name"):
            return None, "invalid model specification: modelFormat.name: model format name is required"
        ns_rt = self.store.get("servingruntimes", ns, rname)
        runtime = ns_rt or self.store.get("clusterservingruntimes", "", rname)
        if runtime is None:
            return None, f"runtime {rname} not found in namespace {ns} or at cluster scope"
        if runtime["spec"].get("disabled"):
            return None, f"{'namespace' if ns_rt else 'cluster'}-scoped runtime {rname} is disabled"
        if not any(_format_matches(spec, f) for f in runtime["spec"].get("supportedModelFormats") or []):
            return None, (f"runtime {rname} does not support model {spec['modelFormat']['name']}: "
                          "incompatible model format")
        return runtime, ""

    def reconcile(self, isvc: dict[str, Any]) -> None:
        meta, spec = isvc["metadata"], isvc["spec"]
        ns, name = meta["namespace"], meta["name"]
        mode = (meta.get("annotations") or {}).get(DEPLOYMENT_MODE)
        mode = mode if mode in VALID_MODES else self.default_deployment_mode
        if mode == "Serverless" and not self.knative:
            return self.warn(isvc, "ServerlessModeRejected", "It is not possible to use Serverless deployment "
                                                             "mode when Knative Services are not available")
        model, why = self._base_model(isvc)
        if model is None:
            return self.warn(isvc, "ModelReconcileError", why)
        runtime, why = self._runtime(isvc, model)
        if runtime is None:
            rname, mname = spec["runtime"]["name"], spec["model"]["name"]
            return self.warn(isvc, "RuntimeValidationError", f"Runtime {rname} does not support model {mname}: "
                                                             f"{why}")
        if self.isvc_warning is not None:
            return self.warn(isvc, *self.isvc_warning)
        engine = merge_engine_spec(runtime["spec"].get("engineConfig"), spec.get("engine"))
        if engine is None:
            return self.warn(isvc, "MergeSpecsError", "engine component is required")
        pod_spec, container_name = engine_pod_spec(engine)
        container = next(c for c in pod_spec["containers"] if c.get("name") == container_name)
        env = container.setdefault("env", [])
        path = (model["spec"].get("storage") or {}).get("path")
        if path and not any(e.get("name") == "MODEL_PATH" for e in env):
            env.append({"name": "MODEL_PATH", "value": path})
        selector = {**(runtime["spec"].get("nodeSelector") or {}), **((spec.get("engine") or {})
                                                                       .get("nodeSelector") or {})}
        pod_spec["nodeSelector"] = {model_label(model["metadata"]["name"], model["metadata"].get("namespace", "")):
                                    "Ready", **(pod_spec.get("nodeSelector") or {}), **selector}
        self.merged_seen[name] = [*(container.get("command") or []), *(container.get("args") or [])]
        self.modes_seen[name] = engine_deployment_mode(engine)
        port = next((int(p["containerPort"]) for p in container.get("ports") or [] if p.get("containerPort")), 8080)
        for svc in (f"{name}-engine", name):
            self.store.put("services", {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": ns,
                                                                    "labels": {POD_LABEL: name}},
                "spec": {"ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
                         "selector": {POD_LABEL: name, "component": "engine"}, "clusterIP": "127.0.0.1"}})
        labels = {POD_LABEL: name, "component": "engine", "serving-runtime": runtime["metadata"]["name"],
                  "app": f"{name}-engine"}
        self.kubelet.deploy(isvc, pod_spec, container_name, labels)
        return None
