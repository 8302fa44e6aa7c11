"""A fake Kubernetes API server on 127.0.0.1 for the kube tests: real REST paths and verbs, Status bodies,
resourceVersion, label/field selectors, merge/strategic/JSON patch, the status subresource, chunked watch
streams with timeoutSeconds, discovery, pod logs and ``pods/portforward``: the websocket (v4.channel.k8s.io)
the kubernetes Python client speaks, and kubectl's SPDY/3.1 upgrade (``fakespdy``). State is in memory; test
code plays the controllers.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from fakespdy import Front

from pytest_sglang_tune.backends.ome_merge import strategic_merge


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
        Resource("", "v1", "events", "Event", True), Resource("", "v1", "namespaces", "Namespace", False)]
OME = [Resource("ome.io", "v1beta1", p, k, n) for p, k, n in (
    ("inferenceservices", "InferenceService", True), ("servingruntimes", "ServingRuntime", True),
    ("clusterservingruntimes", "ClusterServingRuntime", False), ("basemodels", "BaseModel", True),
    ("clusterbasemodels", "ClusterBaseModel", False))]
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status_body(code: int, reason: str, message: str, *, kind: str = "", name: str = "") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": {"name": name, "kind": kind}, "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif op["op"] == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op["op"] == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
    return doc


def label_match(labels: dict[str, str], selector: str) -> bool:
    if not selector:
        return True
    reqs, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            reqs.append(cur)
            cur = ""
        else:
            cur += ch
    reqs.append(cur)
    for req in (r.strip() for r in reqs if r.strip()):
        if " notin " in req:
            k, vals = req.split(" notin ")
            if labels.get(k.strip()) in {v.strip() for v in vals.strip("() ").split(",")}:
                return False
        elif " in " in req:
            k, vals = req.split(" in ")
            if labels.get(k.strip()) not in {v.strip() for v in vals.strip("() ").split(",")}:
                return False
        elif "!=" in req:
            k, v = req.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in req:
            k, v = req.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif req.startswith("!"):
            if req[1:] in labels:
                return False
        elif req not in labels:
            return False
    return True


def field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for p in path.split("."):
        cur = cur.get(p) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def field_match(obj: dict[str, Any], selector: str) -> bool:
    for req in (r.strip() for r in selector.split(",") if r.strip()):
        if "!=" in req:
            k, v = req.split("!=", 1)
            if field_value(obj, k) == v:
                return False
        else:
            k, v = req.replace("==", "=").split("=", 1)
            if field_value(obj, k) != v:
                return False
    return True


class Store:
    """Objects by (plural, namespace, name); every change gets a resourceVersion and reaches watchers."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = 100
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.watchers: list[tuple[str, asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = []
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []

    def _emit(self, etype: str, plural: str, obj: dict[str, Any]) -> None:
        snap = copy.deepcopy(obj)
        self.history.append((int(obj["metadata"]["resourceVersion"]), etype, plural, snap))
        del self.history[:-5000]
        for wplural, loop, q in list(self.watchers):
            if wplural == plural:
                loop.call_soon_threadsafe(q.put_nowait, (etype, snap))
        for fn in list(self.listeners):
            fn(etype, plural, snap)

    def put(self, plural: str, obj: dict[str, Any], etype: str | None = None) -> dict[str, Any]:
        with self.lock:
            meta = obj.setdefault("metadata", {})
            key = (plural, meta.get("namespace", ""), meta["name"])
            existed = key in self.objects
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            self.objects[key] = obj
            self._emit(etype or ("MODIFIED" if existed else "ADDED"), plural, obj)
            return copy.deepcopy(obj)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def delete(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.objects.pop((plural, namespace, name), None)
            if obj is None:
                return None
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._emit("DELETED", plural, obj)
            return copy.deepcopy(obj)

    def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(o) for (p, ns, _), o in sorted(self.objects.items())
                    if p == plural and (namespace is None or ns == namespace)]

    def update(self, plural: str, namespace: str, name: str, fn: Callable[[dict[str, Any]], None]) -> bool:
        with self.lock:
            obj = self.objects.get((plural, namespace, name))
            if obj is None:
                return False
            fn(obj)
            self.put(plural, obj)
            return True


class FakeApiServer:
    """The HTTP side. ``ome_installed=False`` hides ome.io from discovery and its paths (a missing CRD)."""

    def __init__(self, store: Store, crd_dir: Path | None = None) -> None:
        self.store = store
        self.ome_installed = True
        self.logs: dict[tuple[str, str], Path] = {}          # (namespace, pod) -> log file
        self.pod_ports: dict[tuple[str, str], int] = {}      # (namespace, pod) -> local port of the "pod"
        self.requests: list[tuple[str, str]] = []
        self.crds: dict[str, dict[str, Any]] = load_crds(crd_dir) if crd_dir is not None else {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._front_server: asyncio.Server | None = None
        self.front: Front | None = None

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
        if res.plural == "customresourcedefinitions":
            return self.crd(name)
        if sub == "log":
            return self.pod_log(request, ns, name)
        if sub == "portforward":
            return await self.portforward(request, ns, name)
        if not name:
            if request.method == "GET":
                if request.query.get("watch") in ("true", "1"):
                    return await self.watch(request, res, ns)
                return self.list(request, res, ns)
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
    def _select(self, request: web.Request, res: Resource, ns: str) -> list[dict[str, Any]]:
        items = self.store.list(res.plural, ns if res.namespaced and ns else None)
        lsel, fsel = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        return [o for o in items if label_match(o["metadata"].get("labels") or {}, lsel) and field_match(o, fsel)]

    def list(self, request: web.Request, res: Resource, ns: str) -> web.Response:
        items = self._select(request, res, ns)
        for o in items:
            o.setdefault("apiVersion", res.api_version)
            o.setdefault("kind", res.kind)
        return web.json_response({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                  "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})

    async def watch(self, request: web.Request, res: Resource, ns: str) -> web.StreamResponse:
        q: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        lsel, fsel = request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
        since = request.query.get("resourceVersion", "")
        with self.store.lock:
            self.store.watchers.append((res.plural, loop, q))
            if since and since != "0":
                backlog = [(t, o) for rv, t, p, o in self.store.history if p == res.plural and rv > int(since)]
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
        meta["generation"] = 1
        if res.kind == "Namespace":
            body.setdefault("status", {"phase": "Active"})
        return web.json_response(self.store.put(res.plural, body), status=201)

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
                new = strategic_merge(cur, body)
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
                                                  if k in ("labels", "annotations", "generation")}}
        return web.json_response(self.store.put(res.plural, new))

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
