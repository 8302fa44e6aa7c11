"""The ``ome`` backend: one OME ``InferenceService`` per configuration on a Kubernetes cluster.

Pre-flight once per session (API reachable, OME's CRDs, GPUs per node), then per config: create the
InferenceService with the tuned flags appended as ``spec.engine.runner.args`` (see ``ome_merge``), watch it,
its pods and their events until Ready (failing fast on what will not heal), reach it at ``status.url`` or
through a port-forward, and delete it (waiting for its pods) when the config is done, fails or is interrupted.
"""

from __future__ import annotations

import os
import queue
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pytest_sglang_tune.backends.base import Backend, BackendContext, Capacity, DeploymentSpec, Endpoint
from pytest_sglang_tune.backends.ome_manifest import (
    GPU,
    GROUP,
    POD_LABEL,
    VERSION,
    build_inference_service,
    isvc_name,
    model_ref,
    runtime_ref,
)
from pytest_sglang_tune.backends.ome_merge import effective_argv
from pytest_sglang_tune.backends.ome_preflight import GpuInventory, in_cluster
from pytest_sglang_tune.errors import BackendError, DeployError
from pytest_sglang_tune.redact import redact_text

PLURAL = "inferenceservices"
DEFAULT_READY_TIMEOUT = 1800.0
DEFAULT_UNSCHEDULABLE_GRACE = 5.0   # seconds a pod may stay unschedulable before "cluster has no room"
DELETE_TIMEOUT = 300.0
TUNNEL_NOTE = ("endpoint reached through a port-forward tunnel: it adds latency and caps throughput; run inside "
               "the cluster (or --sglang-ome-url=direct) for numbers comparable with production")


class OmeDeployment:
    """A Ready InferenceService and how to reach it."""

    def __init__(self, backend: OmeBackend, name: str, namespace: str, pod: str, container: str,
                 endpoint: Endpoint, launch_command: list[str], info: dict[str, Any]) -> None:
        self.backend = backend
        self.name = name
        self.namespace = namespace
        self.pod = pod
        self.container = container
        self.endpoint = endpoint
        self.launch_command = launch_command
        self.info = info
        self.tunnel: Any = None
        self.monitor: Any = None
        self.died: str | None = None
        self.stopped = False

    def poll(self) -> str | None:
        """Cheap: drains what the pod watch has seen since the last call."""
        if self.died is None and self.monitor is not None:
            from pytest_sglang_tune.backends.ome_watch import pod_problem

            while True:
                try:
                    tag, etype, obj = self.monitor.events.get_nowait()
                except queue.Empty:
                    break
                if tag == "isvc" and etype == "DELETED":
                    self.died = f"InferenceService {self.name} was deleted"
                elif tag == "pod" and obj.get("metadata", {}).get("name") == self.pod:
                    if etype == "DELETED":
                        self.died = f"pod {self.pod} was deleted"
                    else:
                        problem = pod_problem(obj)
                        restarts = sum(int(s.get("restartCount") or 0)
                                       for s in (obj.get("status") or {}).get("containerStatuses") or ())
                        if problem is not None:
                            self.died = f"pod {self.pod}: {problem.message}"
                        elif restarts > int(self.info.get("restarts_at_ready", 0)):
                            self.died = f"pod {self.pod}: the server container restarted ({restarts} restarts)"
        if self.died is None and self.tunnel is not None:
            self.died = self.tunnel.poll()
        return self.died

    def logs(self, tail: int = 50) -> str:
        return self.backend.pod_logs(self.namespace, self.pod, self.container, tail)


class OmeBackend(Backend):
    """Deploys configurations as OME InferenceServices."""

    name = "ome"
    needs_gpus_default = True

    def __init__(self, *, gpus: int | None = None, kubeconfig: str | None = None, namespace: str | None = None,
                 url_mode: str = "auto", sweep: bool = False, run_id: str = "", log_dir: Path | None = None,
                 ready_timeout: float | None = None, port_forward: str | None = None,
                 prometheus_url: str | None = None) -> None:
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
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.session_notes: list[str] = []
        self._capacity: Capacity | None = None
        self._inventory: GpuInventory | None = None
        self._client: Any = None
        self._context_ns: str | None = None
        self._objects: Any = None
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
        """Computed once: unreachable API, missing CRDs or no GPUs give zero GPUs and the reason."""
        if self._capacity is None:
            self._capacity = self._compute_capacity()
        return self._capacity

    def _compute_capacity(self) -> Capacity:
        from kubernetes import client

        from pytest_sglang_tune.backends.ome_preflight import PREFLIGHT_TIMEOUT, missing_crds, read_inventory

        try:
            api = self._connect()
            client.VersionApi(api).get_code(_request_timeout=PREFLIGHT_TIMEOUT)
        except DeployError as exc:
            return Capacity(0, f"ome: {exc.bare_message}")
        except Exception as exc:
            return Capacity(0, f"ome: Kubernetes API not reachable ({self.config_source}, "
                               f"{api.configuration.host}): {_short(exc)}")
        try:
            missing = missing_crds(api)
            if missing:
                return Capacity(0, f"ome: OME is not installed in the cluster at {api.configuration.host}: "
                                   f"missing CRDs {', '.join(missing)}")
            self._inventory = read_inventory(client.CoreV1Api(api))
        except Exception as exc:
            return Capacity(0, f"ome: pre-flight failed at {api.configuration.host}: {_short(exc)}")
        if self.sweep_requested:
            from pytest_sglang_tune.backends.ome_objects import sweep

            self.session_notes.extend(sweep(self._objects, self.default_namespace()))
        inv = self._inventory
        free = inv.total_free()
        if self.gpus is not None and self.gpus < free:
            return Capacity(self.gpus, f"--gpus={self.gpus} of the cluster's free GPUs ({inv.describe()})")
        return Capacity(free, inv.describe())

    def fits(self, gpus: int, settings: Mapping[str, Any] | None = None) -> str | None:
        """None when one eligible node has ``gpus`` free; otherwise the reason, with the numbers."""
        cap = self.capacity()
        if self._inventory is None:
            return f"config needs {gpus} GPU(s) but {cap.gpus} available ({cap.source})"
        settings = settings or {}
        return self._inventory.fits(gpus, settings.get("node_selector") or None,
                                    list(settings.get("tolerations") or ()))

    # --- one config ----------------------------------------------------------------------------------------
    def start(self, spec: DeploymentSpec) -> OmeDeployment:
        from pytest_sglang_tune.backends.ome_schema import validate_manifest

        api = self._connect()
        objects = self._objects
        settings = spec.settings
        namespace = str(settings.get("namespace") or self.default_namespace())
        objects.ensure_namespace(namespace, bool(settings.get("create_namespace")))
        runtime = objects.ensure(runtime_ref(settings), namespace, settings.get("create_runtime"), "runtime")
        objects.ensure(model_ref(settings), namespace, settings.get("create_model"), "model")
        name = isvc_name(spec.suite, spec.config_id, spec.run_id or self.run_id)
        body = build_inference_service(spec, name=name, namespace=namespace, runtime=runtime, owner=self.owner)
        crd = objects.isvc_crd()
        if crd is not None:
            validate_manifest(body, crd)
        timeout = float(settings.get("ready_timeout") or self.ready_timeout or DEFAULT_READY_TIMEOUT)
        grace = float(settings.get("unschedulable_grace") or DEFAULT_UNSCHEDULABLE_GRACE)
        try:  # Ctrl-C may land while the create request is in flight: clean up in every case
            self._create(body, namespace, name, spec.config_id)
            return self._await(spec, api, name, namespace, body, timeout, grace)
        except BaseException:
            self._delete_and_wait(name, namespace)
            raise

    def _create(self, body: dict[str, Any], namespace: str, name: str, config_id: str) -> None:
        from pytest_sglang_tune.backends.ome_objects import api_exception

        for attempt in (1, 2):
            try:
                objects = self._objects
                objects.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
                return
            except api_exception() as exc:
                if exc.status == 409 and attempt == 1:  # left by an earlier attempt of this run: replace it
                    self._delete_and_wait(name, namespace)
                    continue
                raise DeployError(f"cannot create InferenceService {namespace}/{name}: HTTP {exc.status}: "
                                  f"{_status_message(exc)}", config_id=config_id) from exc

    def _await(self, spec: DeploymentSpec, api: Any, name: str, namespace: str, body: dict[str, Any],
               timeout: float, grace: float) -> OmeDeployment:
        from kubernetes import client

        from pytest_sglang_tune.backends.ome_watch import Streams, wait_until_ready

        core: Any = client.CoreV1Api(api)
        custom: Any = client.CustomObjectsApi(api)
        streams = Streams(api)
        streams.add("isvc", custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                    field_selector=f"metadata.name={name}")
        streams.add("pod", core.list_namespaced_pod, namespace, label_selector=f"{POD_LABEL}={name}")
        streams.add("event", core.list_namespaced_event, namespace)
        container = str(body["spec"]["engine"]["runner"]["name"])
        try:
            isvc = wait_until_ready(
                streams, name=name, timeout=timeout, grace=grace, config_id=spec.config_id,
                log_tail=lambda pod: self.pod_logs(namespace, pod, container, 40) if pod else "",
                pod_filter=lambda pod: pod.startswith(name + "-"))
        finally:
            streams.stop()
        pod = self._engine_pod(core, name, namespace, spec.config_id)
        cspec = next((c for c in pod["spec"]["containers"] if c["name"] == container), pod["spec"]["containers"][0])
        cstatus: dict[str, Any] = next((s for s in (pod.get("status") or {}).get("containerStatuses") or ()
                        if s.get("name") == cspec["name"]), {})
        info: dict[str, Any] = {
            "inference_service": name, "namespace": namespace, "pod": pod["metadata"]["name"],
            "node": pod["spec"].get("nodeName"), "gpus_used": [f"{pod['spec'].get('nodeName')}: {spec.gpus} {GPU}"],
            "image": cspec.get("image"), "image_digest": cstatus.get("imageID") or None,
            "restarts_at_ready": int(cstatus.get("restartCount") or 0),
        }
        api_key = spec.server_args.get("--api-key")
        deployment = OmeDeployment(self, name, namespace, pod["metadata"]["name"], cspec["name"],
                                   Endpoint("http://unset", spec.served_model_name), effective_argv(cspec), info)
        mode = self.url_mode
        if mode == "auto":
            mode = "direct" if in_cluster() else "tunnel"
        if mode == "direct":
            url = (isvc.get("status") or {}).get("url")
            if not url:
                raise DeployError(f"InferenceService {namespace}/{name} is Ready but has no status.url; use "
                                  "--sglang-ome-url=tunnel", config_id=spec.config_id)
            base = str(url)
            info["endpoint_mode"] = "direct (status.url)"
        else:
            deployment.tunnel = self._tunnel(api, namespace, pod, cspec, isvc)
            base = f"http://127.0.0.1:{deployment.tunnel.local_port}"
            info["endpoint_mode"] = deployment.tunnel.mode
            if TUNNEL_NOTE not in self.session_notes:
                self.session_notes.append(TUNNEL_NOTE)
        deployment.endpoint = Endpoint(base, spec.served_model_name, api_key=str(api_key) if api_key else None)
        monitor = Streams(api)
        monitor.add("pod", core.list_namespaced_pod, namespace, label_selector=f"{POD_LABEL}={name}")
        monitor.add("isvc", custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                    field_selector=f"metadata.name={name}")
        deployment.monitor = monitor
        self._live.append(deployment)
        return deployment

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

    def _tunnel(self, api: Any, namespace: str, pod: dict[str, Any], container: dict[str, Any],
                isvc: dict[str, Any]) -> Any:
        from pytest_sglang_tune.backends.ome_tunnel import ClientTunnel, KubectlTunnel, choose

        port = next((int(p["containerPort"]) for p in container.get("ports") or () if p.get("containerPort")), 0)
        if not port:
            url = (isvc.get("status") or {}).get("url") or ""
            port = urlparse(url).port or 8080
        if choose(self.port_forward) == "kubectl":
            return KubectlTunnel(self.kubeconfig or os.environ.get("KUBECONFIG"), namespace,
                                 pod["metadata"]["name"], port)
        tunnel = ClientTunnel(api, namespace, pod["metadata"]["name"], port)
        try:
            tunnel.check()
        except Exception as exc:
            tunnel.close()
            raise DeployError(f"port-forward to pod {namespace}/{pod['metadata']['name']}:{port} failed: "
                              f"{_short(exc)}") from exc
        return tunnel

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
            for _ in w.stream(core.list_namespaced_pod, namespace, label_selector=selector,
                              resource_version=pods.metadata.resource_version, timeout_seconds=2,
                              _request_timeout=10):
                break  # something changed: look again
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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}"


def _status_message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message"))
    except Exception:
        return str(getattr(exc, "body", ""))[:300]


def make_backend(context: BackendContext) -> OmeBackend:
    """The registry's factory for ``--backend=ome``; under xdist only the first worker sweeps."""
    o = context.options
    sweep = o.sweep and context.worker_id in (None, "gw0")
    return OmeBackend(gpus=context.gpus, kubeconfig=o.kubeconfig, namespace=o.namespace, url_mode=o.ome_url,
                      sweep=sweep, run_id=context.run_id, log_dir=context.log_dir, ready_timeout=o.ready_timeout,
                      prometheus_url=o.prometheus_url)
