"""What every finished point gets before it is reported: the client's CPU utilisation (and a warning when the
load generator was busy enough to be the bottleneck), the warm-up and cool-down windows, and the self-check's
warnings (served lengths that differ from the requested ones)."""

from __future__ import annotations

from pytest_sglang_tune.loadgen.samples import PointResult
from pytest_sglang_tune.loadgen.workload import Workload
from pytest_sglang_tune.metrics import self_check, self_check_warnings

CLIENT_BUSY = 0.9  # client CPU utilisation above which a point's latencies may be the client's


def finish_point(point: PointResult, workload: Workload) -> PointResult:
    """What every finished point gets: the client's CPU utilisation over the whole point (and a warning when
    the load generator was busy enough to delay its own reads), then the warm-up/cool-down windows, then the
    self-check of the completed requests in the window."""
    span = point.finished - point.started
    if point.client_cpu_s > 0 and span > 0:
        util = point.client_cpu_s / (span * max(point.client_procs, 1))
        point.client_cpu_util = util
        if util >= CLIENT_BUSY and span >= 1.0:
            point.warnings.append(
                f"the load generator was busy {util:.0%} of the point (CPU per process per second): it may have "
                "been the bottleneck and delayed its own reads, inflating latencies; spread it over more "
                "processes (--sglang-loadgen-procs, or --procs for sglang-tune bench)")
    point = apply_windows(point, workload.warmup_s, workload.cooldown_s)
    check = self_check([s for s in point.samples if s.ok and not s.warmup])
    point.warnings += self_check_warnings(check, exact_input=workload.dataset is None and workload.turns == 1)
    return point


def apply_windows(point: PointResult, warmup_s: float, cooldown_s: float) -> PointResult:
    """Leave out (mark ``warmup``) measured requests sent in the first ``warmup_s`` seconds of the point or
    ending in its last ``cooldown_s``; the point's duration becomes the window between. A window that would
    be empty is not applied (with a warning)."""
    if not (warmup_s or cooldown_s):
        return point
    measured = [s for s in point.samples if not s.warmup]
    lo, hi = point.started + warmup_s, point.finished - cooldown_s
    if not measured or hi <= lo:
        point.warnings.append(f"warmup_s={warmup_s:g}/cooldown_s={cooldown_s:g} leave no measurement window "
                              f"in a {point.duration_s:.3g} s point; all its requests are kept")
        return point
    out = 0
    for s in measured:
        end = s.done if s.done is not None else s.sent
        if s.sent < lo or end > hi:
            s.warmup = True
            out += 1
    point.started, point.finished = lo, hi
    point.warnings.append(f"{out} of {len(measured)} requests fell outside the measurement window "
                          f"(warmup_s={warmup_s:g}, cooldown_s={cooldown_s:g}) and were left out")
    return point
