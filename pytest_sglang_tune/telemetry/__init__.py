"""GPU telemetry per point: sample the leased GPUs while a point runs, outside the load generator's process.

Sources: NVML (``nvidia-ml-py``; a probe process, ``telemetry.probe``), ``nvidia-smi --query-gpu -lms`` when NVML
is not there, and for ``ome`` the DCGM exporter through Prometheus (``telemetry.dcgm``). Every sampler has
``start()`` (before the point) and ``stop()`` (after it) → a summary (``telemetry.summary.summarize``)::

    {"source": "nvml", "interval_s": 0.5, "samples": 41, "duration_s": 20.0,
     "gpus": [{"uuid": "GPU-…", "name": "NVIDIA H200", "samples": 41,
               "util_pct": {"mean": 93.1, "max": 100.0}, "mem_used_mib": {...}, "mem_total_mib": 143771,
               "power_w": {...}, "sm_clock_mhz": {...}, "temp_c": {...},
               "throttle": ["sw_power_cap"], "throttle_samples": {"sw_power_cap": 12}}],
     "warnings": ["GPU GPU-… (NVIDIA H200) was power capped during the point (...)"],
     "series": {"GPU-…": {"t": [0.0, 0.5, …], "util_pct": [...], "mem_used_mib": [...], "power_w": [...],
                          "sm_clock_mhz": [...], "temp_c": [...]}}}

Samplers never raise: what went wrong is a warning in the summary. ``make_sampler`` picks one for a deployment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pytest_sglang_tune.telemetry.summary import THROTTLE_BITS, summarize, throttle_names

__all__ = ["THROTTLE_BITS", "Sampler", "make_sampler", "summarize", "throttle_names"]


class Sampler(Protocol):
    """Samples GPUs between ``start()`` and ``stop()``; ``stop()`` returns the summary."""

    def start(self) -> None: ...

    def stop(self) -> dict[str, Any]: ...


def make_sampler(backend: str, info: Mapping[str, Any], *, gpu_uuids: Sequence[str] = (),
                 prometheus_url: str | None = None, interval_s: float = 0.5) -> Sampler | None:
    """The sampler for a deployment, or None when there is nothing to sample.

    ``ome`` with ``prometheus_url``: DCGM through Prometheus for ``info["pod"]``/``info["namespace"]``; ``local``
    and ``docker``: the leased GPUs (``gpu_uuids``: the ``GPU-…`` ids the backend handed on) on this host; the
    ``sim`` and GPU-less runs: None."""
    if backend == "ome":
        if not prometheus_url or not info.get("pod"):
            return None
        from pytest_sglang_tune.telemetry.dcgm import DcgmSampler

        return DcgmSampler(prometheus_url, pod=str(info["pod"]), namespace=info.get("namespace"))
    uuids = [u for u in gpu_uuids if isinstance(u, str) and u.startswith("GPU-")]
    if backend not in ("local", "docker") or not uuids:
        return None
    from pytest_sglang_tune.telemetry.sampler import GpuSampler

    return GpuSampler(uuids, interval_s=interval_s)
