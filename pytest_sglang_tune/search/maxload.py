"""The highest load a config sustains within every SLO (``load: {search: max_within_slo, concurrency: [1, 256]}``),
by bisection on real measurements — what vLLM's ``auto_tune`` and Triton Model Analyzer answer first.

Rule: measure the lower bound (a miss there ends the search: nothing in the range is sustained); then the upper
bound (a pass ends it: the range's top is sustained); then probe geometrically between the highest level that
passed and the lowest that missed, until they are within the stated tolerance (``high ≤ low × (1 + tolerance)``;
neighbours for concurrency). Each probe is a full measurement at its level, recorded with ``fidelity: probe``
(shown, never ranked, matched or resumed); the search ends in one summary result at the load label ``max``
whose ``max_load`` metric is the highest level that passed (0 when none did) and whose other metrics are that
level's. Assumes, as every such tool does, that meeting the SLOs is monotone in load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pytest_sglang_tune.loadgen.workload import Load, MaxLoadSearch
from pytest_sglang_tune.results import Result, load_label

SEARCH = "max_within_slo"


def sustained(result: Result) -> bool:
    """A probe passes when requests completed and every SLO held."""
    return result.status == "passed" and result.slo_pass is not False and bool((result.metrics or {}).get("completed"))


def bisect_max_load(search: MaxLoadSearch, probe: Callable[[Load], Result]) -> tuple[list[Result], Result | None]:
    """Run the search with ``probe`` (measures one level); returns every probe, in order, and the highest one that
    was sustained (None when even the lower bound missed)."""
    probes: list[Result] = []

    def run(value: float) -> Result:
        r = probe(search.load(value))
        probes.append(r)
        return r

    low = run(search.low)
    if not sustained(low):
        return probes, None
    high = run(search.high)
    if sustained(high):
        return probes, high
    lo, hi, best = search.low, search.high, low
    while (mid := search.middle(lo, hi)) is not None:
        r = run(mid)
        if sustained(r):
            lo, best = mid, r
        else:
            hi = mid
    return probes, best


def summary_point(result: Result) -> Any:
    """The summary's point: the workload's, at no level of its own (label ``max``)."""
    return replace(result.point, concurrency=None, request_rate=None, time_scale=None, search=SEARCH)


def summary_of(result: Result, cfg: Any) -> Result:
    """``result`` (a new point of the workload) moved to the summary point, named ``chat[mem0.85-max]``."""
    from pytest_sglang_tune.points import point_name

    return result.with_(point=summary_point(result), display_id=point_name(result.point.workload, cfg, "max"))


def summarize_max_load(search: MaxLoadSearch, base: Result, probes: list[Result], best: Result | None) -> Result:
    """The one result a load search ranks by: ``base`` (the item's result, at the summary point) with the best
    probe's metrics and ``max_load`` — the highest sustained level, 0 when none was."""
    def level(r: Result) -> float:
        v = r.point.concurrency if search.kind == "concurrency" else r.point.request_rate
        return float(v or 0.0)

    found = level(best) if best is not None else 0.0
    source = best if best is not None else probes[0]
    trail = ", ".join(f"{load_label(r.point.load)} {'ok' if sustained(r) else 'missed'}" for r in probes)
    detail = {"kind": search.kind, "low": search.low, "high": search.high, "tolerance": search.tolerance,
              "value": found if best is not None else None, "summary": "",
              "probes": [{"load": r.point.load, "meets_slos": sustained(r), "test_id": r.test_id} for r in probes]}
    unit = "concurrent requests" if search.kind == "concurrency" else "req/s"
    if best is None:
        reason = (f"max load: none within every SLO — the lower bound {search.low:g} already missed "
                  f"(probes: {trail})")
    elif best is probes[-1] and len(probes) == 2:
        reason = f"max load: {found:g} {unit}, the upper bound, within every SLO (probes: {trail})"
    else:
        reason = (f"max load: {found:g} {unit} within every SLO, to within {search.tolerance:.0%} "
                  f"(probes: {trail})")
    detail["summary"] = reason
    # the GPU time is the probes' (each carries its own): the summary holds none, so that sums count it once
    detail["gpu_s"] = round(sum(r.cost.gpu_s or 0.0 for r in probes), 3)
    cost = replace(source.cost, deploy_s=None, measure_s=None, gpu_s=None)
    return base.with_(
        metrics={**dict(source.metrics or {}), "max_load": found}, confidence=source.confidence,
        confidence_method=source.confidence_method, slo_results=dict(source.slo_results),
        slo_pass=best is not None, warnings=source.warnings, e2e_s=(), server_metrics=source.server_metrics,
        telemetry=source.telemetry, deployment=source.deployment, cost=cost, status="passed",
        max_load=detail, fidelity=base.fidelity)


def run_max_load(engine: Any, suite: Any, cfg: Any, table: Any, workload: Any, base: Result, *,
                 on_probe: Callable[[Result], None] = lambda r: None) -> Result:
    """A config's load search on its live server: every probe measured (each handed to ``on_probe`` as soon as
    it is, so a crash later keeps it) and the summary returned. ``base`` is the result at the summary point."""
    from pytest_sglang_tune.points import measure_once, point_name, probe_result

    search: MaxLoadSearch = workload.max_load

    def probe(load: Load) -> Result:
        named = probe_result(base, load, point_name(workload.name, cfg, load.label()))
        r = measure_once(engine, suite, cfg, table, workload, load, named)
        on_probe(r)
        return r

    probes, best = bisect_max_load(search, probe)
    return summarize_max_load(search, base, probes, best)


__all__ = ["SEARCH", "bisect_max_load", "run_max_load", "summarize_max_load", "summary_of", "summary_point",
           "sustained"]
