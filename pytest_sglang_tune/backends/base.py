"""The Backend protocol and the plain values that cross it.

A backend turns a ``DeploymentSpec`` (model, flags, GPUs) into a running ``Deployment`` with an ``Endpoint``;
the plugin waits for readiness, checks ``/server_info``, runs load, and stops it. Like httpx's transports, the
protocol is small on purpose: ``capacity``, ``start``, ``stop``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Endpoint:
    """Where a deployed server answers: base URL, served model name, and the API key to send (if any)."""

    base_url: str
    model: str
    api_key: str | None = None

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class Capacity:
    """How many GPUs the backend can use at once, and why (shown in skip reasons)."""

    gpus: int
    source: str  # e.g. "--gpus=4", "sim virtual GPUs (default 8)", "cluster nodes: 0 nvidia.com/gpu allocatable"
    checked: bool = True  # False: the backend could not count (e.g. no right to list nodes) and trusts --gpus


@dataclass(frozen=True)
class DeploymentSpec:
    """Everything a backend needs to start one configuration."""

    suite: str
    config_id: str
    model_path: str
    served_model_name: str
    server_args: Mapping[str, Any]       # canonical flag name ("--tp-size") -> value; booleans for store_true
    argv: tuple[str, ...]                # the flags rendered as command-line arguments
    gpus: int                            # tp × dp × pp
    settings: Mapping[str, Any] = field(default_factory=dict)  # the suite's per-backend section
    run_id: str = ""
    gpu_ids: tuple[int, ...] = ()        # leased device ids (docker/local)


@runtime_checkable
class Deployment(Protocol):
    """A running (or starting) server."""

    endpoint: Endpoint
    launch_command: list[str]
    info: dict[str, Any]   # image, image_digest, perf_model, gpus_used ... merged into each result

    def poll(self) -> str | None:
        """None while the server process/container lives; otherwise a description of how it died."""

    def logs(self, tail: int = 50) -> str:
        """The last lines of the server's log."""


class Backend(Protocol):
    """Deploys configurations. Implementations: sim, local (this package), docker, ome."""

    name: str

    def capacity(self) -> Capacity:
        """GPUs available to this run (checked before anything deploys; zero means skip)."""

    def start(self, spec: DeploymentSpec) -> Deployment:
        """Start a server for ``spec``; raise DeployError (with log tail) when it cannot start."""

    def stop(self, deployment: Deployment) -> None:
        """Stop and remove everything ``start`` created. Idempotent."""
