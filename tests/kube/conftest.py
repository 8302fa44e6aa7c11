"""Fixtures of the kube tests: a fake Kubernetes API server on 127.0.0.1, the fake OME controller, a kubeconfig."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakecluster import FakeCluster, start_cluster

import pytest_sglang_tune.backends.ome
import pytest_sglang_tune.backends.ome_objects
import pytest_sglang_tune.backends.ome_preflight
import pytest_sglang_tune.backends.ome_tunnel
import pytest_sglang_tune.backends.ome_watch  # noqa: F401


@pytest.fixture
def fake_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    """A fake cluster with one 4-GPU node, OME's CRDs, the test runtime and model, and $KUBECONFIG set."""
    cluster = start_cluster(tmp_path)
    cluster.install()
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("SGLANG_TUNE_PORT_FORWARD", "client")
    yield cluster
    cluster.controller.close()
    cluster.api.stop()

