"""The fake API server's storage: objects, resourceVersions, the watch history (with expiry, so a too-old
resourceVersion gets ``410 Gone`` as from a real API server whose etcd compacted it), selectors and patches.

Field selectors follow the API server: each resource supports a fixed set of field labels
(``pkg/registry/core/pod/strategy.go`` ``ToSelectableFields``, ``.../event/strategy.go``, ``.../node/strategy.go``;
custom resources only ``metadata.name`` and ``metadata.namespace``, apiextensions-apiserver
``customresource_handler.go``); any other label is refused with ``400 BadRequest: field label not supported``.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

META_FIELDS = ("metadata.name", "metadata.namespace")
SELECTABLE: dict[str, tuple[str, ...]] = {
    "pods": (*META_FIELDS, "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs", "status.nominatedNodeName"),
    "events": (*META_FIELDS, "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
               "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
               "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"),
    "nodes": (*META_FIELDS, "spec.unschedulable"),
    "namespaces": (*META_FIELDS, "status.phase"),
    "replicasets": (*META_FIELDS, "status.replicas"),
    "services": META_FIELDS,
}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Gone(Exception):
    """The resourceVersion asked for is older than the history kept (``410 Gone``)."""


class BadSelector(Exception):
    """A field selector the resource does not support (``400 BadRequest``)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
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
    """RFC 6902 JSON patch (add, replace, remove, test)."""
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


def _split_top(selector: str) -> list[str]:
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
    return [r.strip() for r in reqs if r.strip()]


def label_match(labels: dict[str, str], selector: str) -> bool:
    for req in _split_top(selector or ""):
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
    if isinstance(cur, bool):
        return str(cur).lower()
    return "" if cur is None else str(cur)


def parse_field_selector(plural: str, selector: str) -> list[tuple[str, bool, str]]:
    """``[(field, equal?, value)]``; ``BadSelector`` for a field the resource cannot be selected by."""
    allowed = SELECTABLE.get(plural, META_FIELDS)
    out = []
    for req in (r.strip() for r in (selector or "").split(",") if r.strip()):
        neg = "!=" in req
        k, v = req.split("!=", 1) if neg else req.replace("==", "=").split("=", 1)
        if k.strip() not in allowed:
            raise BadSelector(f'field label not supported: {k.strip()}')
        out.append((k.strip(), not neg, v.strip()))
    return out


def field_match(obj: dict[str, Any], reqs: list[tuple[str, bool, str]]) -> bool:
    return all((field_value(obj, k) == v) == eq for k, eq, v in reqs)


class Store:
    """Objects by (plural, namespace, name); every change gets a resourceVersion and reaches watchers.

    ``history_limit`` events are kept for watches that resume from a resourceVersion; an older one is Gone."""

    def __init__(self, history_limit: int = 5000) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = 100
        self.history_limit = history_limit
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.compacted = 100   # the newest resourceVersion no longer in the history
        self.watchers: list[tuple[str, asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = []
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []

    def _emit(self, etype: str, plural: str, obj: dict[str, Any]) -> None:
        snap = copy.deepcopy(obj)
        self.history.append((int(obj["metadata"]["resourceVersion"]), etype, plural, snap))
        if len(self.history) > self.history_limit:
            dropped = self.history[: len(self.history) - self.history_limit]
            self.compacted = dropped[-1][0]
            del self.history[: len(dropped)]
        for wplural, loop, q in list(self.watchers):
            if wplural == plural:
                loop.call_soon_threadsafe(q.put_nowait, (etype, snap))
        for fn in list(self.listeners):
            fn(etype, plural, snap)

    def since(self, plural: str, rv: int) -> list[tuple[str, dict[str, Any]]]:
        """Events of ``plural`` after ``rv``; ``Gone`` when the history no longer reaches back that far."""
        with self.lock:
            if rv < self.compacted:
                raise Gone(f"too old resource version: {rv} ({self.compacted + 1})")
            return [(t, o) for r, t, p, o in self.history if p == plural and r > rv]

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
