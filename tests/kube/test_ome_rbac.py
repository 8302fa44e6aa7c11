"""deploy/ome-rbac.yaml grants every request the backend makes (recorded by the fake API server) — no more."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from fakecluster import FakeCluster
from test_ome_backend import backend, spec

pytestmark = pytest.mark.kube
RBAC = Path(__file__).resolve().parents[2] / "deploy" / "ome-rbac.yaml"


def verb_of(method: str, path_qs: str) -> tuple[str, str, str, bool] | None:
    """(apiGroup, resource[/sub], verb, cluster-wide) of one request; None for discovery."""
    url = urlparse(path_qs)
    parts = [p for p in url.path.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None  # /version, /api, /apis, /apis/<group>/<version>: discovery, allowed to every user
    if not rest:
        return None
    namespaced = rest[0] == "namespaces" and len(rest) >= 3
    if namespaced:
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    watch = parse_qs(url.query).get("watch") == ["true"]
    verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(method)
    if verb is None:
        verb = "watch" if watch else ("get" if named else "list")
    if resource == "namespaces" and named:
        namespaced = True
    return group, resource, verb, not namespaced


def allowed(rules: list[dict], group: str, resource: str, verb: str) -> bool:  # type: ignore[type-arg]
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


@pytest.mark.parametrize("mode", ["tunnel", "direct"])
def test_rbac_covers_what_the_backend_does(fake_cluster: FakeCluster, mode: str) -> None:
    docs = list(yaml.safe_load_all(RBAC.read_text()))
    cluster_rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    ns_rules = next(d for d in docs if d["kind"] == "Role")["rules"]
    b = backend(fake_cluster, url_mode=mode)
    assert b.capacity().gpus == 4
    d = b.start(spec())
    b.stop(d)
    seen = {v for m, p in fake_cluster.api.requests if (v := verb_of(m, p))}
    missing = []
    for group, resource, verb, cluster_wide in sorted(seen):
        if resource == "namespaces":
            continue  # read_namespace: a 403 is tolerated (a namespaced Role cannot read namespaces)
        rules = cluster_rules if cluster_wide else ns_rules + cluster_rules
        if not allowed(rules, group, resource, verb):
            missing.append((group, resource, verb, cluster_wide))
    assert missing == []
    assert ("ome.io", "inferenceservices", "create", False) in seen and ("", "events", "watch", False) in seen
    assert (("", "pods/portforward", "get", False) in seen) is (mode == "tunnel")
    assert (("", "services", "get", False) in seen) is (mode == "direct")


def test_the_optional_rules_are_documented() -> None:
    text = RBAC.read_text()
    for needed in ('resources: ["namespaces"]', 'verbs: ["get", "create", "delete"]',
                   "backends.ome.create_namespace", "the pre-flight is degraded"):
        assert needed in text, needed
