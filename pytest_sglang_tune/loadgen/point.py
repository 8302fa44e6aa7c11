"""The load generator's entry point: one point, in this process or spread over several (merged exactly)."""

from __future__ import annotations

from collections.abc import Callable

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.loadgen.multiproc import run_point_procs
from pytest_sglang_tune.loadgen.runner import run_point_single
from pytest_sglang_tune.loadgen.samples import PointResult, RequestCounter
from pytest_sglang_tune.loadgen.workload import Load, Workload


def run_point(endpoint: Endpoint, workload: Workload, load: Load, *, watchdog: Callable[[], None] | None = None,
              scrape_metrics: bool = False, timeout_s: float = 600.0, transport: str = "auto",
              procs: int = 1, counter: RequestCounter | None = None) -> PointResult:
    """Measure one point on a fresh event loop (not inside a running loop); ``procs > 1`` spreads it over that
    many processes (``loadgen.multiproc``). ``counter`` counts finished requests for progress (one process only:
    the processes of a spread point do not report until they are done)."""
    kwargs = {"watchdog": watchdog, "scrape_metrics": scrape_metrics, "timeout_s": timeout_s,
              "transport": transport}
    if procs > 1:
        return run_point_procs(endpoint, workload, load, procs=procs, **kwargs)  # type: ignore[arg-type]
    return run_point_single(endpoint, workload, load, counter=counter, **kwargs)  # type: ignore[arg-type]
