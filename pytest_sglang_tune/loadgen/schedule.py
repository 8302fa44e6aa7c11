"""What a point sends and when: a workload's requests (synthetic, dataset, or a trace's) and the open-loop
arrival offsets of its units (gamma/Poisson at a rate, or a trace's own times). The runner asks only this."""

from __future__ import annotations

import random

from pytest_sglang_tune.loadgen.arrivals import arrival_offsets
from pytest_sglang_tune.loadgen.prompts import ChatCalibration, PreparedRequest, build_requests
from pytest_sglang_tune.loadgen.trace import build_trace_requests, trace_offsets
from pytest_sglang_tune.loadgen.workload import Workload


def requests_of(workload: Workload, model: str, *, warmup: bool,
                calibration: ChatCalibration | None) -> list[PreparedRequest]:
    """The workload's warmup or measured requests, in send order (deterministic)."""
    if workload.trace is not None:
        return build_trace_requests(workload, model, warmup=warmup, calibration=calibration)
    return build_requests(workload, model, warmup=warmup, calibration=calibration)


def open_loop_offsets(workload: Workload, rate: float | None) -> list[float]:
    """Seconds from the start at which each unit (request, or session with ``turns > 1``) is released."""
    if workload.trace is not None:  # the trace's own arrival times (its gaps × time_scale)
        return trace_offsets(workload)
    if rate is None:
        raise ValueError(f"workload {workload.name!r}: an open-loop point needs a request rate or a trace")
    total = workload.sessions if workload.turns > 1 else workload.num_requests
    return arrival_offsets(rate / workload.turns, total, random.Random(f"{workload.seed}:arrivals"),
                           burstiness=workload.burstiness, exact=True)
