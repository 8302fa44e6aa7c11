"""A local port forwarded to the engine pod: ``kubectl port-forward`` when kubectl is on the PATH, else the
kubernetes client's port-forward (one websocket per accepted connection). One tunnel per config, closed on
teardown. A tunnel adds latency and caps throughput: the report says which endpoint mode was used.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

from pytest_sglang_tune.backends.local import free_port
from pytest_sglang_tune.errors import DeployError

PORT_FORWARD_ENV = "SGLANG_TUNE_PORT_FORWARD"  # auto | kubectl | client


def choose(kind: str | None = None) -> str:
    kind = (kind or os.environ.get(PORT_FORWARD_ENV) or "auto").strip().lower()
    if kind not in ("auto", "kubectl", "client"):
        raise DeployError(f"{PORT_FORWARD_ENV}={kind!r} is not valid; use auto, kubectl or client")
    if kind == "auto":
        return "kubectl" if shutil.which("kubectl") else "client"
    return kind


class ClientTunnel:
    """127.0.0.1:<free port> → pod:<port> through the API server's ``pods/portforward`` subresource."""

    mode = "tunnel (kubernetes client port-forward)"

    def __init__(self, api_client: Any, namespace: str, pod: str, remote_port: int) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.pod = pod
        self.remote_port = remote_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.local_port = int(self.listener.getsockname()[1])
        self.error: str | None = None
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name=f"sglang-tune-pf-{self.local_port}").start()

    def _open(self) -> Any:
        from kubernetes import client
        from kubernetes.stream import portforward

        # kubernetes.stream swaps ApiClient.request for a websocket call while it runs: not thread-safe, so each
        # forward gets its own client (sharing one broke concurrent watches and deletes)
        own = client.ApiClient(configuration=self.api_client.configuration)
        core = client.CoreV1Api(own)
        return portforward(core.connect_get_namespaced_pod_portforward, self.pod, self.namespace,
                           ports=str(self.remote_port))

    def check(self) -> None:
        """Open one forward and close it again: fail at start, not at the first request."""
        pf = self._open()
        pf.socket(self.remote_port).close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        try:
            pf = self._open()
            remote = pf.socket(self.remote_port)
        except Exception as exc:
            self.error = f"port-forward to pod {self.pod} failed: {exc}"
            conn.close()
            return
        remote.setblocking(True)
        try:
            socks = [conn, remote]
            while not self._closed.is_set():
                readable, _, _ = select.select(socks, [], [], 0.5)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (remote if s is conn else conn).sendall(data)
        except OSError:
            return
        finally:
            for s in (conn, remote):
                try:
                    s.close()
                except OSError:
                    pass
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    def poll(self) -> str | None:
        return self.error

    def close(self) -> None:
        self._closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self._lock:
            for c in self._conns:
                try:
                    c.close()
                except OSError:
                    pass


class KubectlTunnel:
    """``kubectl port-forward pod/<pod> <local>:<remote>`` as a child process."""

    mode = "tunnel (kubectl port-forward)"

    def __init__(self, kubeconfig: str | None, namespace: str, pod: str, remote_port: int,
                 start_timeout: float = 20.0) -> None:
        self.local_port = free_port()
        cmd = ["kubectl"]
        if kubeconfig:
            cmd += ["--kubeconfig", kubeconfig]
        cmd += ["-n", namespace, "port-forward", f"pod/{pod}", f"{self.local_port}:{remote_port}",
                "--address", "127.0.0.1"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + start_timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline().decode("utf-8", "replace")
                if not line:
                    break
                lines.append(line)
                if line.startswith("Forwarding from"):
                    threading.Thread(target=self._drain, daemon=True).start()
                    return
            if self.proc.poll() is not None:
                break
        self.close()
        raise DeployError(f"kubectl port-forward to pod {pod} did not start: {''.join(lines)[-500:]}")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in iter(self.proc.stdout.readline, b""):
            pass

    def check(self) -> None:
        return None

    def poll(self) -> str | None:
        rc = self.proc.poll()
        return None if rc is None else f"kubectl port-forward exited with code {rc}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def open_tunnel(api_client: Any, kubeconfig: str | None, kind: str | None, pod: dict[str, Any],
                container: dict[str, Any], status_url: str | None) -> ClientTunnel | KubectlTunnel:
    """A checked tunnel to the engine container's first port (else ``status.url``'s, else 8080)."""
    from urllib.parse import urlparse

    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    port = next((int(p["containerPort"]) for p in container.get("ports") or () if p.get("containerPort")), 0)
    if not port:
        port = urlparse(status_url or "").port or 8080
    if choose(kind) == "kubectl":
        return KubectlTunnel(kubeconfig or os.environ.get("KUBECONFIG"), namespace, name, port)
    tunnel = ClientTunnel(api_client, namespace, name, port)
    try:
        tunnel.check()
    except Exception as exc:
        tunnel.close()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise DeployError(f"port-forward to pod {namespace}/{name}:{port} failed: {type(exc).__name__}: "
                          f"{first}") from exc
    return tunnel
