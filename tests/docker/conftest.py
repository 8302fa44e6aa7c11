"""Fixtures of the Docker tests: a real dockerd and the sim test image in the registry on 127.0.0.1:5000.

``.ci/setup-docker.sh`` provides both. Without an engine these tests skip locally, and fail under ``CI=true``
(a CI run that cannot reach its engine must not pass).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from dockerkit import IMAGE, ours, registry_digest, wait_none_left


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {reason}; .ci/run must call .ci/setup-docker.sh first", pytrace=False)
    pytest.skip(f"{reason} (run .ci/setup-docker.sh as root to install and start it)")


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """A connected Docker SDK client (skip, or fail under CI=true, when there is no engine)."""
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        _unavailable(f"no Docker Engine: {exc}")
    return client


@pytest.fixture(scope="session")
def test_image(docker_client: Any) -> str:
    """The sim test image's name in the local registry."""
    if registry_digest() is None:
        _unavailable(f"the test image {IMAGE} is not in the registry")
    return IMAGE


@pytest.fixture(autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every docker test ends with no container of our label (``docker ps -a --filter label=org.sglang-tune``)."""
    yield
    if "docker_client" not in request.fixturenames:
        return
    client = request.getfixturevalue("docker_client")
    left = wait_none_left(client)
    for c in ours(client):
        c.remove(force=True)
    assert not left, f"containers of ours left behind: {left}"
