"""A Ready InferenceService of ours: how to reach it, and how to tell that it died.

Reaching it: ``direct`` uses a cluster-internal address: ``status.url`` when it is one (by default OME sets
``http://<isvc>.<ns>.svc.cluster.local``, ``controller.go`` ``setExternalServiceURL``); when ``status.url`` is an
ingress host (``raw_ingress_strategy.go``), the engine Service ``<isvc>-engine`` (its cluster DNS name and port)
instead, so the numbers do not include an ingress hop. ``tunnel`` forwards a local port to the engine pod.
"""

from __future__ import annotations

import ipaddress
import queue
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from pytest_sglang_tune.backends.base import Endpoint


def _cluster_internal(host: str) -> bool:
    if host.endswith((".svc", ".svc.cluster.local", ".cluster.local")) or "." not in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def direct_url(status_url: str | None, name: str, namespace: str, service: Mapping[str, Any] | None) -> str | None:
    """The base URL of the direct mode: a cluster-internal ``status.url`` as it is, else the engine Service's
    DNS name (``service`` is the ``<isvc>-engine`` Service, when it could be read), else ``status.url``."""
    url = str(status_url or "")
    host = urlparse(url).hostname or ""
    if url and _cluster_internal(host):
        return url
    ports = ((service or {}).get("spec") or {}).get("ports") or ()
    if service is not None and ports:
        port = int(ports[0].get("port") or 80)
        svc = (service.get("metadata") or {}).get("name") or f"{name}-engine"
        return f"http://{svc}.{namespace}.svc.cluster.local" + ("" if port == 80 else f":{port}")
    return url or None


def restarts_of(pod: Mapping[str, Any], container: str) -> int:
    """Restarts of one named container (a sidecar's restarts are not the server's)."""
    for st in (pod.get("status") or {}).get("containerStatuses") or ():
        if st.get("name") == container:
            return int(st.get("restartCount") or 0)
    return 0


class OmeDeployment:
    """A Ready InferenceService and how to reach it."""

    def __init__(self, backend: Any, name: str, namespace: str, pod: str, container: str,
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
        self.blind: str | None = None   # why the monitor cannot see the pod any more (a refused watch)

    def poll(self) -> str | None:
        """Cheap: drains what the pod watch has seen since the last call."""
        if self.died is None and self.monitor is not None:
            from pytest_sglang_tune.backends.ome_watch import pod_problem, refused_message

            while True:
                try:
                    tag, etype, obj = self.monitor.events.get_nowait()
                except queue.Empty:
                    break
                if tag == "refused" and self.blind is None:
                    self.blind = refused_message(etype, obj)
                    self.backend.session_notes.append(f"InferenceService {self.name}: {self.blind}")
                elif tag == "isvc" and etype == "DELETED":
                    self.died = f"InferenceService {self.name} was deleted"
                elif tag == "pod" and obj.get("metadata", {}).get("name") == self.pod:
                    self._check_pod(etype, obj, pod_problem)
        if self.died is None and self.tunnel is not None:
            self.died = self.tunnel.poll()
        return self.died

    def _check_pod(self, etype: str, obj: dict[str, Any], pod_problem: Any) -> None:
        if etype == "DELETED":
            self.died = f"pod {self.pod} was deleted"
            return
        problem = pod_problem(obj, self.container)
        restarts = restarts_of(obj, self.container)
        if problem is not None and problem.kind not in ("image_transient", "unschedulable"):
            self.died = f"pod {self.pod}: {problem.message}"
        elif restarts > int(self.info.get("restarts_at_ready", 0)):
            self.died = f"pod {self.pod}: the server container {self.container} restarted ({restarts} restarts)"

    def logs(self, tail: int = 50) -> str:
        text: str = self.backend.pod_logs(self.namespace, self.pod, self.container, tail)
        return text
