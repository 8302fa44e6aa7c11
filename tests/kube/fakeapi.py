"""A fake Kubernetes API server on 127.0.0.1 for the kube tests: real REST paths and verbs, Status bodies,
resourceVersion, label/field selectors (unsupported field labels: ``400``), ``limit``/``continue`` pagination,
merge/strategic/JSON patch, the status subresource, chunked watch streams with timeoutSeconds (an expired
resourceVersion: an ``ERROR`` event with ``410 Gone``), discovery, pod logs and ``pods/portforward``: the websocket
(v4.channel.k8s.io) the kubernetes Python client speaks, and kubectl's SPDY/3.1 upgrade (``fakespdy``).

Custom resources are admitted as the real server admits them (``fakeschema``: pruning, the ``fieldValidation``
parameter, schema validation). Authorization can be narrowed (``deny``) and authentication refused
(``unauthorized``) with the real ``403``/``401`` Status bodies. State is in memory (``fakestore``); test code
plays the controllers. Nothing here imports the plugin.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from fakemerge import patch_object
from fakeschema import MODES, admit
from fakespdy import Front
from fakestore import (
    BadSelector,
    Gone,
    Store,
    field_match,
    json_patch,
    label_match,
    merge_patch,
    now,
    parse_field_selector,
)


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


CORE = [Resource("", "v1", "pods", "Pod", True), Resource("", "v1", "nodes", "Node", False),
        Resource("", "v1", "events", "Event", True), Resource("", "v1", "namespaces", "Namespace", False),
        Resource("", "v1", "services", "Service", True),
        Resource("apps", "v1", "replicasets", "ReplicaSet", True),
        Resource("apps", "v1", "deployments", "Deployment", True)]
OME = [Resource("ome.io", "v1beta1", p, k, n) for p, k, n in (
    ("inferenceservices", "InferenceService", True), ("servingruntimes", "ServingRuntime", True),
    ("clusterservingruntimes", "ClusterServingRuntime", False), ("basemodels", "BaseModel", True),
    ("clusterbasemodels", "ClusterBaseModel", False))]
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)
USER = "tester"   # the kubeconfig's user, as authorization messages name it


def status_body(code: int, reason: str, message: str, *, kind: str = "", name: str = "") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": {"name": name, "kind": kind}, "code": code}


def verb_of(method: str, named: bool, watch: bool) -> str:
    """The RBAC verb of a request (``k8s.io/apiserver/pkg/endpoints/request/requestinfo.go``)."""
    verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(method)
    return verb or ("watch" if watch else "get" if named else "list")


class FakeApiServer:
    """The HTTP side. ``ome_installed=False`` hides ome.io from discovery and its paths (a missing CRD)."""

    def __init__(self, store: Store, crd_dir: Path | None = None) -> None:
        self.store = store
        self.ome_installed = True
        self.unauthorized = False                            # every request: 401
        self.denied: set[tuple[str, str, str]] = set()       # (verb, resource[/sub], scope: * | cluster | <ns>)
        self.logs: dict[tuple[str, str], Path] = {}          # (namespace, pod) -> log file
        self.pod_ports: dict[tuple[str, str], int] = {}      # (namespace, pod) -> local port of the "pod"
        self.requests: list[tuple[str, str]] = []
        self.warnings: list[str] = []                        # Warning headers sent (fieldValidation=Warn)
        self.crds: dict[str, dict[str, Any]] = load_crds(crd_dir) if crd_dir is not None else {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._front_server: asyncio.Server | None = None
        self.front: Front | None = None

    def deny(self, verb: str, resource: str, scope: str = "*") -> None:
        """Refuse ``verb`` on ``resource`` (``pods/log`` for a subresource): everywhere (``*``), for cluster-wide
        requests only (``cluster``), or in one namespace."""
        self.denied.add((verb, resource, scope))

    def _forbidden(self, verb: str, res: Resource, sub: str, ns: str, name: str) -> web.Response | None:
        resource = res.plural + (f"/{sub}" if sub else "")
        scope = ns if (res.namespaced and ns) else "cluster"
        if not any(v == verb and r == resource and s in ("*", scope) for v, r, s in self.denied):
            return None
        where = f'in the namespace "{ns}"' if scope != "cluster" else "at the cluster scope"
        subject = f'{res.plural} "{name}"' if name else res.plural
        return self.error(403, "Forbidden", f'{subject} is forbidden: User "{USER}" cannot {verb} resource '
                                            f'"{resource}" in API group "{res.group}" {where}',
                          kind=res.plural, name=name)

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            internal = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            # the public socket: kubectl's SPDY port-forward upgrades are served there, the rest goes to aiohttp
            self.front = Front(internal, lambda ns, pod: self.pod_ports.get((ns, pod)))
            self._front_server = self.loop.run_until_complete(
                asyncio.start_server(self.front.handle, "127.0.0.1", 0))
            self.port = self._front_server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-kube-api")
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self.loop is not None and self._runner is not None:
            async def shutdown() -> None:
                assert self._runner is not None
                if self._front_server is not None:
                    self._front_server.close()
                await self._runner.cleanup()   # closes watch streams and tunnels; handlers are cancelled
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resources(self) -> list[Resource]:
        return CORE + [CRDS] + (OME if self.ome_installed else [])

    # --- routing -------------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if self.unauthorized:
            return self.error(401, "Unauthorized", "Unauthorized")
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake",
                                      "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": now(),
                                      "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64"})
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]})
        if parts == ["apis"]:
            groups = sorted({(r.group, r.version) for r in self.resources() if r.group})
            return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in groups]})
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return self.error(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        known = [r for r in self.resources() if r.group == group and r.version == version]
        if not known:
            return self.error(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        if not rest:
            return web.json_response({"kind": "APIResourceList", "apiVersion": "v1",
                                      "groupVersion": known[0].api_version, "resources": [
                {"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]} for r in known]})
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
        res = next((r for r in known if r.plural == plural), None)
        if res is None:
            return self.error(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        watch = request.query.get("watch") in ("true", "1")
        refused = self._forbidden(verb_of(request.method, bool(name), watch), res, sub, ns, name)
        if refused is not None:
            return refused
        if res.plural == "customresourcedefinitions":
            return self.crd(name)
        if sub == "log":
            return self.pod_log(request, ns, name)
        if sub == "portforward":
            return await self.portforward(request, ns, name)
        if not name:
            if request.method == "GET":
                try:
                    fsel = parse_field_selector(res.plural, request.query.get("fieldSelector", ""))
                except BadSelector as exc:
                    return self.error(400, "BadRequest", str(exc))
                return await self.watch(request, res, ns, fsel) if watch else self.list(request, res, ns, fsel)
            if request.method == "POST":
                return await self.create(request, res, ns)
        else:
            if request.method == "GET":
                obj = self.store.get(res.plural, ns, name)
                return web.json_response(obj) if obj else self.not_found(res, name)
            if request.method in ("PUT", "PATCH"):
                return await self.modify(request, res, ns, name, status_only=sub == "status")
            if request.method == "DELETE":
                obj = self.store.delete(res.plural, ns, name)
                return web.json_response(obj) if obj else self.not_found(res, name)
        return self.error(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")

    def error(self, code: int, reason: str, message: str, **kw: str) -> web.Response:
        return web.json_response(status_body(code, reason, message, **kw), status=code)

    def not_found(self, res: Resource, name: str) -> web.Response:
        return self.error(404, "NotFound", f'{res.plural}.{res.group or "core"} "{name}" not found',
                          kind=res.plural, name=name)

    def crd(self, name: str) -> web.Response:
        crd = self.crds.get(name) if self.ome_installed else None
        if crd is None:
            return self.not_found(CRDS, name)
        return web.json_response(crd)

    # --- verbs ---------------------------------------------------------------------------------------------
    def list(self, request: web.Request, res: Resource, ns: str, fsel: list[tuple[str, bool, str]]
             ) -> web.Response:
        lsel = request.query.get("labelSelector", "")
        items = [o for o in self.store.list(res.plural, ns if res.namespaced and ns else None)
                 if label_match(o["metadata"].get("labels") or {}, lsel) and field_match(o, fsel)]
        for o in items:
            o.setdefault("apiVersion", res.api_version)
            o.setdefault("kind", res.kind)
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        limit = int(request.query.get("limit") or 0)
        offset = int(request.query.get("continue") or 0)
        if limit:
            if offset + limit < len(items):
                meta["continue"] = str(offset + limit)
                meta["remainingItemCount"] = len(items) - offset - limit
            items = items[offset:offset + limit]
        return web.json_response({"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta,
                                  "items": items})

    async def watch(self, request: web.Request, res: Resource, ns: str, fsel: list[tuple[str, bool, str]]
                    ) -> web.StreamResponse:
        q: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        lsel = request.query.get("labelSelector", "")
        since = request.query.get("resourceVersion", "")
        gone: str | None = None
        with self.store.lock:
            self.store.watchers.append((res.plural, loop, q))
            backlog: list[tuple[str, dict[str, Any]]] = []
            if since and since != "0":
                try:
                    backlog = self.store.since(res.plural, int(since))
                except Gone as exc:
                    gone = str(exc)
            else:
                backlog = [("ADDED", o) for o in self.store.list(res.plural)]
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        deadline = loop.time() + float(request.query.get("timeoutSeconds") or 1800)

        def wanted(obj: dict[str, Any]) -> bool:
            return ((not res.namespaced or not ns or obj["metadata"].get("namespace") == ns)
                    and label_match(obj["metadata"].get("labels") or {}, lsel) and field_match(obj, fsel))
        try:
            if gone is not None:   # what the API server streams for an expired resourceVersion
                await resp.write((json.dumps({"type": "ERROR", "object": status_body(
                    410, "Expired", gone)}) + "\n").encode())
                deadline = loop.time()
            for etype, obj in backlog:
                if wanted(obj):
                    await resp.write((json.dumps({"type": etype, "object": obj}) + "\n").encode())
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    etype, obj = await asyncio.wait_for(q.get(), left)
                except TimeoutError:
                    break
                if wanted(obj):
                    await resp.write((json.dumps({"type": etype, "object": obj}) + "\n").encode())
        except ConnectionResetError:
            pass
        finally:
            with self.store.lock:
                self.store.watchers.remove((res.plural, loop, q))
        try:
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp

    def _admit(self, request: web.Request, res: Resource, body: dict[str, Any]
               ) -> tuple[web.Response | None, dict[str, Any], list[str]]:
        """CRD pruning and validation with the request's ``fieldValidation`` (custom resources only)."""
        crd = self.crds.get(f"{res.plural}.{res.group}") if res.group == "ome.io" else None
        if crd is None:
            return None, body, []
        mode = request.query.get("fieldValidation") or "Warn"
        if mode not in MODES:
            return self.error(400, "BadRequest", f'fieldValidation {mode!r} is invalid: valid values are: '
                                                 f'{", ".join(MODES)}'), body, []
        code, message, kept, warnings = admit(body, crd, mode)
        if code:
            reason = "BadRequest" if code == 400 else "Invalid"
            return self.error(code, reason, message, kind=res.kind,
                              name=(body.get("metadata") or {}).get("name", "")), body, []
        self.warnings += warnings
        return None, kept, warnings

    @staticmethod
    def _respond(obj: dict[str, Any], status: int, warnings: list[str]) -> web.Response:
        headers = {"Warning": ", ".join('299 - "' + w.replace('"', '\\"') + '"' for w in warnings)} \
            if warnings else None
        return web.json_response(obj, status=status, headers=headers)

    async def create(self, request: web.Request, res: Resource, ns: str) -> web.Response:
        body = await request.json()
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        if not name:
            return self.error(422, "Invalid", f"{res.kind}.{res.group} is invalid: metadata.name: Required value")
        if res.namespaced:
            if not self.store.get("namespaces", "", ns):
                return self.error(404, "NotFound", f'namespaces "{ns}" not found', kind="namespaces", name=ns)
            meta["namespace"] = ns
        if self.store.get(res.plural, ns if res.namespaced else "", name):
            return self.error(409, "AlreadyExists", f'{res.plural}.{res.group or "core"} "{name}" already exists',
                              kind=res.plural, name=name)
        body.setdefault("apiVersion", res.api_version)
        body.setdefault("kind", res.kind)
        refused, body, warnings = self._admit(request, res, body)
        if refused is not None:
            return refused
        body["metadata"]["generation"] = 1
        if res.kind == "Namespace":
            body.setdefault("status", {"phase": "Active"})
        return self._respond(self.store.put(res.plural, body), 201, warnings)

    async def modify(self, request: web.Request, res: Resource, ns: str, name: str, *, status_only: bool
                     ) -> web.Response:
        cur = self.store.get(res.plural, ns if res.namespaced else "", name)
        if cur is None:
            return self.not_found(res, name)
        body = await request.json()
        ctype = request.content_type
        try:
            if request.method == "PUT":
                given = body.get("metadata", {}).get("resourceVersion")
                if given and given != cur["metadata"]["resourceVersion"]:
                    return self.error(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{name}": '
                                      "the object has been modified; please apply your changes to the latest "
                                      "version and try again", kind=res.plural, name=name)
                new = body
            elif ctype == "application/json-patch+json":
                new = json_patch(cur, body)
            elif ctype == "application/strategic-merge-patch+json":
                if res.group == "ome.io":
                    return self.error(415, "UnsupportedMediaType", "strategic merge patch is not supported for "
                                                                   "custom resources; use merge or JSON patch")
                new = patch_object(cur, body, None)
            else:
                new = merge_patch(cur, body)
        except (ValueError, KeyError, IndexError) as exc:
            return self.error(422, "Invalid", f"patch failed: {exc}")
        if status_only:
            cur["status"] = new.get("status")
            new = cur
        else:
            new["status"] = cur.get("status")
            if new.get("spec") != cur.get("spec"):
                new.setdefault("metadata", {})["generation"] = int(cur["metadata"].get("generation", 1)) + 1
        new["metadata"] = {**cur["metadata"], **{k: v for k, v in new.get("metadata", {}).items()
                                                  if k in ("labels", "annotations", "generation", "finalizers")}}
        warnings: list[str] = []
        if not status_only:
            refused, new, warnings = self._admit(request, res, new)
            if refused is not None:
                return refused
        return self._respond(self.store.put(res.plural, new), 200, warnings)

    # --- subresources --------------------------------------------------------------------------------------
    def pod_log(self, request: web.Request, ns: str, name: str) -> web.Response:
        if not self.store.get("pods", ns, name):
            return self.not_found(CORE[0], name)
        path = self.logs.get((ns, name))
        text = path.read_text(errors="replace") if path and path.is_file() else ""
        tail = request.query.get("tailLines")
        if tail:
            text = "".join(text.splitlines(keepends=True)[-int(tail):])
        return web.Response(text=text, content_type="text/plain")

    async def portforward(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        ports = [int(p) for p in request.query.getall("ports", []) for p in str(p).split(",")]
        target = self.pod_ports.get((ns, name))
        if not ports or target is None:
            return self.error(404, "NotFound", f'pod "{name}" has no forwardable port')
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io", "channel.k8s.io"))
        await ws.prepare(request)
        for i, port in enumerate(ports):
            for ch in (2 * i, 2 * i + 1):
                await ws.send_bytes(bytes([ch]) + port.to_bytes(2, "little"))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError as exc:
            await ws.send_bytes(bytes([1]) + f"connection refused: {exc}".encode())
            await ws.close()
            return ws

        async def upstream() -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await ws.send_bytes(bytes([0]) + data)
            await ws.close()

        task = asyncio.ensure_future(upstream())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    writer.write(msg.data[1:])
                    await writer.drain()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            task.cancel()
            writer.close()
        return ws


_CRDS: dict[Path, dict[str, dict[str, Any]]] = {}


def load_crds(crd_dir: Path) -> dict[str, dict[str, Any]]:
    """The CRDs of ``crd_dir`` by name (parsed once per process: they are 100k lines of YAML)."""
    if crd_dir not in _CRDS:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        crds = {}
        for path in sorted(crd_dir.glob("*.yaml")):
            crd = yaml.load(path.read_text(), Loader=loader)  # a safe loader (CSafeLoader)
            crds[crd["metadata"]["name"]] = crd
        _CRDS[crd_dir] = crds
    return _CRDS[crd_dir]


def write_kubeconfig(path: Path, server: str, namespace: str = "default") -> Path:
    import yaml

    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
    }))
    return path
