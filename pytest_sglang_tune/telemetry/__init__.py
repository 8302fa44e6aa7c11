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

Samplers never raise: what went wrong is a warning in the summary. A backend picks one for a deployment
(``Backend.telemetry_sampler``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pytest_sglang_tune.telemetry.summary import THROTTLE_BITS, summarize, throttle_names

__all__ = ["THROTTLE_BITS", "Sampler", "dcgm_sampler", "gpu_sampler", "summarize", "throttle_names"]


class Sampler(Protocol):
    """Samples GPUs between ``start()`` and ``stop()``; ``stop()`` returns the summary."""

    def start(self) -> None: ...

    def stop(self) -> dict[str, Any]: ...


def gpu_sampler(gpu_uuids: Sequence[Any], *, interval_s: float = 0.5) -> Sampler | None:
    """A sampler of this host's GPUs ``gpu_uuids`` (the ``GPU-…`` ids a backend handed on); None when there is no
    real GPU among them (the sim, or positions of a run without GPUs)."""
    uuids = [u for u in gpu_uuids if isinstance(u, str) and u.startswith("GPU-")]
    if not uuids:
        return None
    from pytest_sglang_tune.telemetry.sampler import GpuSampler

    return GpuSampler(uuids, interval_s=interval_s)


def dcgm_sampler(prometheus_url: str | None, info: Mapping[str, Any]) -> Sampler | None:
    """A sampler of a pod's GPUs through a DCGM exporter's series in Prometheus (``info``: the deployment's
    ``pod`` and ``namespace``); None without a Prometheus URL or a pod."""
    if not prometheus_url or not info.get("pod"):
        return None
    from pytest_sglang_tune.telemetry.dcgm import DcgmSampler

    return DcgmSampler(prometheus_url, pod=str(info["pod"]), namespace=info.get("namespace"))
