"""The backend seam: the ``Backend`` base class and the plain values that cross it.

A backend turns a ``DeploymentSpec`` (model, flags, GPUs) into a running ``Deployment`` with an ``Endpoint``;
the engine waits for readiness, checks ``/server_info``, runs load, and stops it. Like httpx's transports, what a
backend must implement is small on purpose — ``name``, ``capacity``, ``start``, ``stop`` — and everything else a
caller may touch is a method of ``Backend`` with a default (``fits``, ``busy_devices``, ``image_needs_gpus``,
``server_facts``, ``telemetry_sampler``, ``notes``, ``handoff``/``adopt``, ``close``): no caller probes with
``getattr``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pytest_sglang_tune.options import Options
from pytest_sglang_tune.results import perf_model_of


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
    gpu_ids: tuple[Any, ...] = ()        # leased devices (docker/local): indices, or UUIDs from a GPU mask


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


@dataclass(frozen=True)
class BackendContext:
    """What a backend factory gets from the run: the parsed options (never ``config.getoption``), the run id,
    where server logs go, the xdist worker id (None outside xdist) and a progress callback for long steps."""

    options: Options
    run_id: str
    log_dir: Path
    worker_id: str | None = None
    progress: Callable[[str], None] = field(default=lambda message: None)

    @property
    def gpus(self) -> int | None:
        return self.options.gpus


@dataclass(frozen=True)
class ServerFacts:
    """What a backend reads off a ready server's ``/server_info`` for each result: the perf model (a simulated
    server's), facts to record (``sim``), and warnings of the point (e.g. the sim fell behind its clock)."""

    perf_model: dict[str, Any] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    startup_s: float | None = None  # a simulated server: how long a real one would take to start (virtual)


class Backend:
    """Deploys configurations. Subclass it and implement the four required members — ``name``, ``capacity``,
    ``start`` and ``stop`` (the Protocol of the guide); every other member has a default that does nothing, and
    the engine, the items and the session call only what is defined here. Built-in: sim, local, docker, ome
    (:mod:`pytest_sglang_tune.backends.registry`); a conftest adds its own through the
    ``pytest_sglang_tune_make_backend`` hook.
    """

    name: str = ""
    needs_gpus_default: bool = True       # does what it runs need real GPUs (an image's label can say otherwise)
    default_ready_timeout: float = 1800.0  # seconds, when neither the suite nor --sglang-ready-timeout says

    # --- required ----------------------------------------------------------------------------------------------
    def capacity(self) -> Capacity:
        """GPUs available to this run (checked before anything deploys; zero means skip)."""
        raise NotImplementedError(f"{type(self).__name__}.capacity")

    def start(self, spec: DeploymentSpec) -> Deployment:
        """Start a server for ``spec``; raise DeployError (with log tail) when it cannot start."""
        raise NotImplementedError(f"{type(self).__name__}.start")

    def stop(self, deployment: Deployment) -> None:
        """Stop and remove everything ``start`` created. Idempotent."""
        raise NotImplementedError(f"{type(self).__name__}.stop")

    # --- optional, with defaults ------------------------------------------------------------------------------
    def fits(self, gpus: int, settings: Mapping[str, Any]) -> str | None:
        """Why a config of ``gpus`` GPUs cannot be placed (e.g. no node has that many free), or None."""
        return None

    def busy_devices(self) -> set[int]:
        """Device ids held by something the leases cannot see (e.g. a container of a dead worker)."""
        return set()

    def image_needs_gpus(self, settings: Mapping[str, Any]) -> bool | None:
        """Whether what ``settings`` runs needs GPUs, when the backend can tell (docker: an image label)."""
        return None

    def server_facts(self, server_info: Mapping[str, Any]) -> ServerFacts:
        """Facts of a ready server for its results. A simulated server (under any backend: the sim, a local
        launcher or a test image) describes itself in a ``sim`` block; a real SGLang has none."""
        return sim_facts(server_info)

    def telemetry_sampler(self, deployment: Deployment) -> Any:
        """A GPU telemetry sampler for ``deployment`` while a point runs (``telemetry.Sampler``), or None (the
        default: nothing to sample). local and docker sample the GPUs they handed on; ome reads DCGM."""
        return None

    def notes(self) -> list[str]:
        """Lines for the session summary (pulls, sweeps, degraded checks)."""
        return []

    def handoff(self) -> list[Any]:
        """xdist worker: the run-wide objects this worker created, for the controller to remove at the end."""
        return []

    def adopt(self, created: list[Any]) -> None:
        """Controller: take over objects workers created (removed by ``close``)."""

    def close(self) -> None:
        """The run is over: remove run-wide objects (e.g. an OME runtime this run created). Idempotent."""


class _Adapted(Backend):
    """A backend object that implements only the four required members, with the defaults of ``Backend``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = str(inner.name)

    def capacity(self) -> Capacity:
        cap: Capacity = self.inner.capacity()
        return cap

    def start(self, spec: DeploymentSpec) -> Deployment:
        dep: Deployment = self.inner.start(spec)
        return dep

    def stop(self, deployment: Deployment) -> None:
        self.inner.stop(deployment)


REQUIRED = ("name", "capacity", "start", "stop")


def as_backend(obj: Any) -> Backend:
    """``obj`` as a ``Backend``: subclasses as they are; an object with just the four required members gets the
    defaults. Anything else is a ``TypeError`` naming what is missing."""
    if isinstance(obj, Backend):
        return obj
    missing = [m for m in REQUIRED if not hasattr(obj, m)]
    if missing:
        raise TypeError(f"{type(obj).__name__} is not a backend: it lacks {', '.join(missing)} "
                        f"(a backend has {', '.join(REQUIRED)}; subclass pytest_sglang_tune.backends.base.Backend)")
    return _Adapted(obj)


def sim_facts(server_info: Mapping[str, Any]) -> ServerFacts:
    """The ``sim`` block of a simulated server's ``/server_info``: its perf model, what it does not model, and
    whether it fell behind its own clock (a warning of the point)."""
    sim = server_info.get("sim")
    if not isinstance(sim, Mapping):
        return ServerFacts()
    keep = ("perf_model", "gpu", "not_modelled", "lag", "physics_version", "prefill_mode", "prefill_mode_source",
            "front_end", "weights")
    warnings = []
    lag = sim.get("lag")
    if isinstance(lag, Mapping) and lag.get("warning"):
        text = str(lag["warning"])
        warnings.append(text if "behind" in text else f"the simulated server fell behind: {text}")
    flags = sim.get("not_modelled_flags", sim.get("not_modelled"))  # the flags only, not the sim's general limits
    if flags:
        warnings.append("flags not modelled by the sim (accepted, no effect): " + ", ".join(map(str, flags)))
    startup = sim.get("startup_s_predicted")
    return ServerFacts(perf_model=perf_model_of(sim.get("perf_model")),
                       facts={"sim": {k: sim[k] for k in keep if k in sim}}, warnings=tuple(warnings),
                       startup_s=float(startup) if isinstance(startup, int | float) else None)
