"""The ``ome`` backend: one OME ``InferenceService`` per configuration on a Kubernetes cluster.

Pre-flight once per session (``ome_preflight``: API reachable and usable, OME's CRDs, GPUs per node). Per config:
find the runtime and model (refusing multi-node runtimes, whose leader runner would drop the tuned flags; waiting
for a model the run created to be downloaded), check that some GPU node can take the pod at all
(``ome_placement``: taints, node selectors, OME's model-ready label), create the InferenceService with the tuned
flags appended as ``spec.engine.runner.args`` and the deployment mode pinned (``ome_manifest``; sent with
``fieldValidation=Strict``), watch it, its ReplicaSet, pods and their events until Ready (``ome_watch``, failing
fast on what will not heal), reach it (``ome_deployment``) and delete it, waiting for its pods, when the config
is done, fails or is interrupted.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_sglang_tune.backends.base import Backend, BackendContext, Capacity, DeploymentSpec, Endpoint
from pytest_sglang_tune.backends.ome_deployment import OmeDeployment, direct_url, restarts_of
from pytest_sglang_tune.backends.ome_manifest import (
    GPU,
    GROUP,
    POD_LABEL,
    VERSION,
    build_inference_service,
    isvc_name,
    model_ref,
    multi_node,
    pod_placement,
    runtime_ref,
)
from pytest_sglang_tune.backends.ome_merge import effective_argv
from pytest_sglang_tune.backends.ome_placement import Placement, unplaceable
from pytest_sglang_tune.backends.ome_preflight import GpuInventory, in_cluster
from pytest_sglang_tune.errors import BackendError, BackendUnavailable, DeployError
from pytest_sglang_tune.redact import redact_text

PLURAL = "inferenceservices"
DEFAULT_READY_TIMEOUT = 1800.0
DELETE_TIMEOUT = 300.0
MODEL_POLL_S = 2.0
MODEL_BUSY = ("Creating", "Importing", "In_Transit", "In_Training")
TUNNEL_NOTE = ("endpoint reached through a port-forward tunnel: it adds latency and caps throughput; run inside "
               "the cluster (or --sglang-ome-url=direct) for numbers comparable with production")

__all__ = ["OmeBackend", "OmeDeployment", "make_backend"]


class OmeBackend(Backend):
    """Deploys configurations as OME InferenceServices."""

    name = "ome"
    needs_gpus_default = True

    def __init__(self, *, gpus: int | None = None, kubeconfig: str | None = None, namespace: str | None = None,
                 url_mode: str = "auto", sweep: bool = False, run_id: str = "", log_dir: Path | None = None,
                 ready_timeout: float | None = None, port_forward: str | None = None,
                 prometheus_url: str | None = None, deployment_mode: str | None = None) -> None:
        if url_mode not in ("auto", "direct", "tunnel"):
            raise DeployError(f"--sglang-ome-url={url_mode!r} is not valid; use auto, direct or tunnel")
        self.gpus = gpus
        self.kubeconfig = kubeconfig
        self.namespace_option = namespace
        self.url_mode = url_mode
        self.sweep_requested = sweep
        self.run_id = run_id
        self.log_dir = log_dir
        self.ready_timeout = ready_timeout
        self.port_forward = port_forward
        self.prometheus_url = prometheus_url
        self.deployment_mode = deployment_mode
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.session_notes: list[str] = []
        self.config_source = ""
        self._capacity: Capacity | None = None
        self._inventory: GpuInventory | None = None
        self._client: Any = None
        self._context_ns: str | None = None
        self._objects: Any = None
        self._found: dict[tuple[str, str, str | None], dict[str, Any] | None] = {}
        self._live: list[OmeDeployment] = []
        self._closed = False

    # --- session -------------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._client is None:
            from pytest_sglang_tune.backends.ome_objects import Objects
            from pytest_sglang_tune.backends.ome_preflight import api_client

            self._client, self.config_source, self._context_ns = api_client(self.kubeconfig)
            self._objects = Objects(self._client, self.run_id, self.owner)
        return self._client

    def default_namespace(self) -> str:
        return self.namespace_option or self._context_ns or "default"

    def capacity(self) -> Capacity:
        """Computed once. Raises ``BackendUnavailable`` (an error of the session) when the cluster cannot be asked;
        zero free GPUs is an answer (configs are skipped with the numbers)."""
        if self._capacity is None:
            self._capacity = self._compute_capacity()
        return self._capacity

    def _compute_capacity(self) -> Capacity:
        from pytest_sglang_tune.backends import ome_preflight as pf

        api = self._connect()
        pf.check_cluster(api, self.config_source, self.default_namespace())
        try:
            self._inventory = pf.read_inventory(api)
        except Exception as exc:
            raise BackendUnavailable(f"ome: cannot read GPU capacity at {api.configuration.host}: "
                                     f"{type(exc).__name__}: {pf.status_message(exc)}") from exc
        if self.sweep_requested:
            from pytest_sglang_tune.backends.ome_objects import sweep

            self.session_notes.extend(sweep(self._objects, self.default_namespace()))
        inv = self._inventory
        if inv is None:   # a namespaced Role: the degraded pre-flight
            if self.gpus is None:
                raise BackendUnavailable(pf.gpus_required_message(api, self.config_source))
            self.session_notes.append(pf.missing_rights_note(self.gpus))
            return Capacity(self.gpus, f"--gpus={self.gpus} (capacity not checked: no right to list nodes)",
                            checked=False)
        free = inv.total_free()
        if self.gpus is not None and self.gpus < free:
            return Capacity(self.gpus, f"--gpus={self.gpus} of the cluster's free GPUs ({inv.describe()})")
        return Capacity(free, inv.describe())

    def fits(self, gpus: int, settings: Mapping[str, Any] | None = None) -> str | None:
        """None when a node this config's pod can run on has ``gpus`` free; otherwise the reason, with the
        numbers. A config no node can take at all is not a capacity matter: ``start`` fails it with the cause."""
        cap = self.capacity()
        if self._inventory is None:
            return None if gpus <= cap.gpus else f"config needs {gpus} GPU(s) but {cap.gpus} available ({cap.source})"
        placement = self._placement(dict(settings or {}))
        return self._inventory.fits(gpus, placement) if placement is not None else None

    def _lookup(self, ref: Mapping[str, str], namespace: str) -> dict[str, Any] | None:
        from pytest_sglang_tune.backends.ome_objects import CLUSTER_SCOPED

        ns = None if ref["kind"] in CLUSTER_SCOPED else namespace
        key = (ref["kind"], ref["name"], ns)
        if key not in self._found:
            try:
                self._found[key] = self._objects.get(ref["kind"], ref["name"], ns)
            except DeployError:
                self._found[key] = None
        return self._found[key]

    def _placement(self, settings: Mapping[str, Any], runtime: Mapping[str, Any] | None = None) -> Placement | None:
        from pytest_sglang_tune.backends.ome_objects import load_manifest

        namespace = str(settings.get("namespace") or self.default_namespace())
        try:
            rref, mref = runtime_ref(settings), model_ref(settings)
        except Exception:
            return None
        if runtime is None:
            runtime = self._lookup(rref, namespace)
        if runtime is None and settings.get("create_runtime"):
            runtime = load_manifest(settings["create_runtime"], "backends.ome.create_runtime")
        if runtime is None:
            return None   # start() says the runtime is missing
        model = self._lookup(mref, namespace)
        return pod_placement(runtime, settings, namespace, mref if model is not None else None)

    # --- one config ----------------------------------------------------------------------------------------
    def start(self, spec: DeploymentSpec) -> OmeDeployment:
        from pytest_sglang_tune.backends.ome_schema import validate_manifest

        api = self._connect()
        self.capacity()   # the pre-flight (once): its node list lets placement problems fail before deploying
        objects = self._objects
        settings = spec.settings
        namespace = str(settings.get("namespace") or self.default_namespace())
        timeout = float(settings.get("ready_timeout") or self.ready_timeout or DEFAULT_READY_TIMEOUT)
        objects.ensure_namespace(namespace, bool(settings.get("create_namespace")))
        rref, mref = runtime_ref(settings), model_ref(settings)
        runtime = objects.ensure(rref, namespace, settings.get("create_runtime"), "runtime")
        if multi_node(runtime):
            raise DeployError(f"{rref['kind']} {rref['name']!r} is a multi-node runtime (engineConfig.leader/"
                              "worker): OME would run the leader's runner and drop the tuned flags "
                              "(engine.runner.args) and GPU resources; multi-node tuning is not supported yet — use "
                              "a single-node runtime", config_id=spec.config_id)
        model = objects.ensure(mref, namespace, settings.get("create_model"), "model")
        model = self._model_ready(model, mref, namespace, timeout, spec.config_id)
        problem = self._explain(runtime, settings, namespace)
        if problem:   # the node list is the session's snapshot: look again before failing (a model just landed)
            from pytest_sglang_tune.backends.ome_preflight import read_inventory

            self._inventory = read_inventory(api) or self._inventory
            problem = self._explain(runtime, settings, namespace)
        if problem:
            raise DeployError(f"{problem}; nothing was deployed", config_id=spec.config_id)
        name = isvc_name(spec.suite, spec.config_id, spec.run_id or self.run_id)
        body = build_inference_service(spec, name=name, namespace=namespace, runtime=runtime, owner=self.owner,
                                       default_mode=self.deployment_mode)
        crd = objects.isvc_crd()
        if crd is not None:
            validate_manifest(body, crd)
        try:  # Ctrl-C may land while the create request is in flight: clean up in every case
            self._create(body, namespace, name, spec.config_id)
            return self._await(spec, api, name, namespace, body, runtime, timeout)
        except BaseException:
            self._delete_and_wait(name, namespace)
            raise

    def _model_ready(self, model: dict[str, Any], ref: Mapping[str, str], namespace: str, timeout: float,
                     config_id: str) -> dict[str, Any]:
        """The model, once OME has it on some node: a model still downloading (one this run created, or one in
        transit) is waited for; a failed one fails the config at once."""
        from pytest_sglang_tune.backends.ome_objects import CLUSTER_SCOPED

        ns = None if ref["kind"] in CLUSTER_SCOPED else namespace
        created = any(k == ref["kind"] and n == ref["name"] for k, n, _ in self._objects.created)
        deadline = time.monotonic() + timeout
        while True:
            status = model.get("status") or {}
            state = status.get("state")
            what = f"{ref['kind']} {ref['name']!r}"
            if state == "Failed":
                raise DeployError(f"{what} failed to download (status.state=Failed, nodesFailed: "
                                  f"{', '.join(status.get('nodesFailed') or ()) or 'none'}); see OME's model agent "
                                  "logs", config_id=config_id)
            if state == "Ready" or not (state in MODEL_BUSY or (state is None and created)):
                return model
            if time.monotonic() > deadline:
                raise DeployError(f"{what} not Ready after {timeout:.0f}s (status.state={state}); its weights are "
                                  "still being downloaded", config_id=config_id)
            time.sleep(MODEL_POLL_S)
            model = self._objects.get(ref["kind"], ref["name"], ns) or model

    def _create(self, body: dict[str, Any], namespace: str, name: str, config_id: str) -> None:
        from pytest_sglang_tune.backends.ome_objects import api_exception
        from pytest_sglang_tune.backends.ome_preflight import status_message

        for attempt in (1, 2):
            try:
                self._objects.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body,
                                                                     field_validation="Strict")
                return
            except api_exception() as exc:
                if exc.status == 409 and attempt == 1:  # left by an earlier attempt of this run: replace it
                    self._delete_and_wait(name, namespace)
                    continue
                raise DeployError(f"cannot create InferenceService {namespace}/{name}: HTTP {exc.status}: "
                                  f"{status_message(exc)}", config_id=config_id) from exc

    def _await(self, spec: DeploymentSpec, api: Any, name: str, namespace: str, body: dict[str, Any],
               runtime: Mapping[str, Any], timeout: float) -> OmeDeployment:
        from kubernetes import client

        from pytest_sglang_tune.backends.ome_watch import Graces, wait_until_ready

        core: Any = client.CoreV1Api(api)
        settings = spec.settings
        graces = Graces(unschedulable=float(settings.get("unschedulable_grace") or Graces.unschedulable),
                        image_pull=float(settings.get("image_pull_grace") or Graces.image_pull))
        container = str(body["spec"]["engine"]["runner"]["name"])
        streams = self._streams(api, name, namespace, events=True)
        try:
            isvc = wait_until_ready(
                streams, name=name, timeout=timeout, graces=graces, config_id=spec.config_id,
                log_tail=lambda pod: self.pod_logs(namespace, pod, container, 40) if pod else "",
                involved=lambda obj: _ours(obj, name),
                explain=lambda problem: self._explain(runtime, settings, namespace))
        finally:
            streams.stop()
        pod = self._engine_pod(core, name, namespace, spec.config_id)
        cspec = next((c for c in pod["spec"]["containers"] if c["name"] == container), pod["spec"]["containers"][0])
        cstatus: dict[str, Any] = next((s for s in (pod.get("status") or {}).get("containerStatuses") or ()
                                        if s.get("name") == cspec["name"]), {})
        node = pod["spec"].get("nodeName")
        info: dict[str, Any] = {
            "inference_service": name, "namespace": namespace, "pod": pod["metadata"]["name"], "node": node,
            "gpus_used": [f"{node}: {spec.gpus} {GPU}"], "image": cspec.get("image"),
            "image_digest": cstatus.get("imageID") or None, "restarts_at_ready": restarts_of(pod, cspec["name"]),
        }
        api_key = spec.server_args.get("--api-key")
        deployment = OmeDeployment(self, name, namespace, pod["metadata"]["name"], cspec["name"],
                                   Endpoint("http://unset", spec.served_model_name), effective_argv(cspec), info)
        mode = self.url_mode
        if mode == "auto":
            mode = "direct" if in_cluster() else "tunnel"
        if mode == "direct":
            base = direct_url((isvc.get("status") or {}).get("url"), name, namespace,
                              self._engine_service(core, name, namespace))
            if not base:
                raise DeployError(f"InferenceService {namespace}/{name} is Ready but has no status.url and no engine "
                                  "Service; use --sglang-ome-url=tunnel", config_id=spec.config_id)
            info["endpoint_mode"] = "direct (status.url)" if base == (isvc.get("status") or {}).get("url") else \
                "direct (engine Service)"
        else:
            from pytest_sglang_tune.backends.ome_tunnel import open_tunnel

            deployment.tunnel = open_tunnel(api, self.kubeconfig, self.port_forward, pod, cspec,
                                            (isvc.get("status") or {}).get("url"))
            base = f"http://127.0.0.1:{deployment.tunnel.local_port}"
            info["endpoint_mode"] = deployment.tunnel.mode
            if TUNNEL_NOTE not in self.session_notes:
                self.session_notes.append(TUNNEL_NOTE)
        deployment.endpoint = Endpoint(base, spec.served_model_name, api_key=str(api_key) if api_key else None)
        deployment.monitor = self._streams(api, name, namespace, events=False)
        self._live.append(deployment)
        return deployment

    def _streams(self, api: Any, name: str, namespace: str, *, events: bool) -> Any:
        from kubernetes import client

        from pytest_sglang_tune.backends.ome_watch import Streams

        core: Any = client.CoreV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        streams = Streams(api)
        streams.add("isvc", custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                    field_selector=f"metadata.name={name}",
                    rbac=f"list/watch on inferenceservices.{GROUP} in namespace {namespace!r}")
        streams.add("pod", core.list_namespaced_pod, namespace, label_selector=f"{POD_LABEL}={name}",
                    rbac=f"list/watch on pods in namespace {namespace!r}")
        if events:
            streams.add("event", core.list_namespaced_event, namespace, field_selector="type=Warning",
                        rbac=f"list/watch on events in namespace {namespace!r}")
        return streams

    def _explain(self, runtime: Mapping[str, Any], settings: Mapping[str, Any], namespace: str) -> str:
        """Why no node takes the pod, from the pre-flight's node list (empty when it could not be read)."""
        if self._inventory is None:
            return ""
        try:
            return unplaceable(pod_placement(runtime, settings, namespace, model_ref(settings)),
                               self._inventory.nodes) or ""
        except Exception:
            return ""

    def _engine_pod(self, core: Any, name: str, namespace: str, config_id: str) -> dict[str, Any]:
        pods = core.list_namespaced_pod(namespace, label_selector=f"{POD_LABEL}={name}").items
        dicts = [self._client.sanitize_for_serialization(p) for p in pods]
        dicts = [p for p in dicts if not p["metadata"].get("deletionTimestamp")]
        engines = [p for p in dicts if (p["metadata"].get("labels") or {}).get("component", "engine") == "engine"]
        running = [p for p in engines if (p.get("status") or {}).get("phase") == "Running"]
        if not running:
            raise DeployError(f"InferenceService {namespace}/{name} is Ready but no running engine pod has label "
                              f"{POD_LABEL}={name}", config_id=config_id)
        return dict(running[0])

    def _engine_service(self, core: Any, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            svc = core.read_namespaced_service(f"{name}-engine", namespace, _request_timeout=(3, 10))
        except Exception:   # no RBAC for services, or none yet: status.url it is
            return None
        out: dict[str, Any] = self._client.sanitize_for_serialization(svc)
        return out

    def pod_logs(self, namespace: str, pod: str | None, container: str, tail: int) -> str:
        if not pod or self._client is None:
            return ""
        from kubernetes import client

        core = client.CoreV1Api(self._client)
        for previous in (False, True):
            try:
                text = core.read_namespaced_pod_log(pod, namespace, container=container, tail_lines=tail,
                                                    previous=previous, _request_timeout=(3, 10))
            except Exception:
                continue
            if text:
                return redact_text(str(text))
        return ""

    # --- teardown ------------------------------------------------------------------------------------------
    def stop(self, deployment: Any) -> None:
        d: OmeDeployment = deployment
        if d.stopped:
            return
        d.stopped = True
        if d.tunnel is not None:
            d.tunnel.close()
        if d.monitor is not None:
            d.monitor.stop()
        self._keep_log(d)
        try:
            self._delete_and_wait(d.name, d.namespace)
        finally:
            if d in self._live:
                self._live.remove(d)

    def _keep_log(self, d: OmeDeployment) -> None:
        if self.log_dir is None:
            return
        text = self.pod_logs(d.namespace, d.pod, d.container, 5000)
        if text:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / f"{d.name}.log").write_text(text, encoding="utf-8")

    def _delete_and_wait(self, name: str, namespace: str, timeout: float = DELETE_TIMEOUT) -> None:
        """Delete the InferenceService; return when it and its pods are gone (their GPUs are free again)."""
        from kubernetes import client, watch

        from pytest_sglang_tune.backends.ome_objects import api_exception

        if self._client is None:
            return
        custom: Any = client.CustomObjectsApi(self._client)
        core: Any = client.CoreV1Api(self._client)
        try:
            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                   propagation_policy="Foreground")
        except api_exception() as exc:
            if exc.status != 404:
                raise DeployError(f"cannot delete InferenceService {namespace}/{name}: HTTP {exc.status}") from exc
        deadline = time.monotonic() + timeout
        selector = f"{POD_LABEL}={name}"
        while time.monotonic() < deadline:
            pods = core.list_namespaced_pod(namespace, label_selector=selector)
            try:
                custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
                isvc_left = True
            except api_exception():
                isvc_left = False
            if not pods.items and not isvc_left:
                return
            w: Any = watch.Watch()  # type: ignore[no-untyped-call,unused-ignore]
            try:
                for _ in w.stream(core.list_namespaced_pod, namespace, label_selector=selector,
                                  resource_version=pods.metadata.resource_version, timeout_seconds=2,
                                  _request_timeout=10):
                    break  # something changed: look again
            except api_exception() as exc:
                if exc.status != 410:   # expired: list again
                    raise
        raise DeployError(f"InferenceService {namespace}/{name} or its pods still exist {timeout:.0f}s after delete")

    def notes(self) -> list[str]:
        return list(self.session_notes)

    def telemetry_sampler(self, deployment: Any) -> Any:
        """The pod's GPUs as a DCGM exporter reports them to Prometheus (``--sglang-prometheus-url``)."""
        from pytest_sglang_tune.telemetry import dcgm_sampler

        return dcgm_sampler(self.prometheus_url, deployment.info)

    def handoff(self) -> list[tuple[str, str, str | None]]:
        """Give up the runtime/model/namespace this process created, for the xdist controller to remove when the
        last worker is done (other workers may still deploy against them)."""
        if self._objects is None:
            return []
        created = list(self._objects.created)
        self._objects.created.clear()
        return created

    def adopt(self, created: list[tuple[str, str, str | None]]) -> None:
        """Take over objects that workers created (``handoff``); ``close`` removes them."""
        self._connect()
        self._objects.created.extend(tuple(x) for x in created)

    def close(self) -> None:
        """Stop what is still live and delete the runtime/model/namespace we created (at session end/exit)."""
        if self._closed:
            return
        self._closed = True
        for d in list(self._live):
            try:
                self.stop(d)
            except BackendError:
                pass
        if self._objects is not None:
            removed = self._objects.close()
            if removed:
                self.session_notes.append("removed what this run created: " + ", ".join(removed))


def _ours(involved: Mapping[str, Any], name: str) -> bool:
    """Whether an event is about our InferenceService or what OME made of it (``<name>-engine...``)."""
    obj_name = str(involved.get("name") or "")
    if involved.get("kind") == "InferenceService":
        return obj_name == name
    return obj_name.startswith(name + "-")


def make_backend(context: BackendContext) -> OmeBackend:
    """The registry's factory for ``--backend=ome``; under xdist only the first worker sweeps."""
    o = context.options
    sweep = o.sweep and context.worker_id in (None, "gw0")
    return OmeBackend(gpus=context.gpus, kubeconfig=o.kubeconfig, namespace=o.namespace, url_mode=o.ome_url,
                      sweep=sweep, run_id=context.run_id, log_dir=context.log_dir, ready_timeout=o.ready_timeout,
                      prometheus_url=o.prometheus_url)
