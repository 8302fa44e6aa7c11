"""Decision analysis over results, pure: Pareto fronts, best config per load, highest sustained load, ties.

* **Pareto front** per suite × workload: points are (config, load) results; x = output throughput per GPU
  (higher is better), y = the latency statistic of the suite's first latency SLO (lower is better; ``ttft_ms.p99``
  when the suite has none). A point is on the front when no other point is at least as good on both and better
  on one.
* **Highest sustained load** per config: the largest load level of a workload at which it met every SLO.
* **Best per load**: every rank-1 entry of the ranking (several when tied: the tie rule lives in ``ranking``).
* **Repeats**: ``combine_repeats`` averages the repeats' metrics; ``repeat_confidence`` gives Student-t
  intervals over them (``stats``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_sglang_tune.grammar import DISTRIBUTION_METRICS, parse_metric, parse_slo
from pytest_sglang_tune.ranking import best_entries, load_key, workload_name
from pytest_sglang_tune.stats import student_t_interval

X_METRIC = "output_throughput_per_gpu"
DEFAULT_Y = "ttft_ms.p99"


def latency_metric(slos: Sequence[str]) -> str:
    """The y axis of a suite's Pareto front: its first latency SLO's metric, else ttft_ms.p99."""
    for text in slos:
        try:
            metric = parse_slo(text).metric
        except Exception:
            continue
        if metric.name in DISTRIBUTION_METRICS:
            return str(metric)
    return DEFAULT_Y


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (x to maximize, y to minimize) point: is it on the front?"""
    flags = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 <= y) and (x2 > x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def _measured(results: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in results if r.get("metrics") and r.get("status") in ("passed", "failed")]


def pareto(results: Sequence[Mapping[str, Any]], suites: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in _measured(results):
        groups.setdefault((str(r.get("suite")), workload_name(r)), []).append(r)
    out = []
    xm = parse_metric(X_METRIC)
    for (suite, wname), rs in sorted(groups.items()):
        y_name = latency_metric((suites.get(suite) or {}).get("slos") or [])
        ym = parse_metric(y_name)
        pts: list[tuple[Mapping[str, Any], float, float]] = []
        for r in rs:
            x, y = xm.value(r["metrics"]), ym.value(r["metrics"])
            if x is not None and y is not None:
                pts.append((r, x, y))
        front = pareto_front([(x, y) for _, x, y in pts])
        out.append({"suite": suite, "workload": wname, "load": None, "x_metric": X_METRIC, "y_metric": y_name,
                    "points": [{"config_id": r.get("config_id"), "load": r.get("load"), "x": x, "y": y,
                                "on_front": f, "slo_pass": r.get("slo_pass")}
                               for (r, x, y), f in zip(pts, front, strict=True)]})
    return out


def best_per_load(ranking: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every rank-1 entry (several per load when they are tied), from ``ranking.best_entries``."""
    return [{"suite": e.get("suite"), "workload": e.get("workload"), "load": e.get("load"),
             "config_id": e.get("config_id"), "score": e.get("score"), "slo_pass": e.get("slo_pass"),
             "tied": bool(e.get("tied"))}
            for entries in best_entries(ranking).values() for e in entries]


def max_sustained_load(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    best: dict[tuple[str, str, str], Any] = {}
    for r in _measured(results):
        key = (str(r.get("suite")), workload_name(r), str(r.get("config_id")))
        best.setdefault(key, None)
        if r.get("status") == "passed" and r.get("slo_pass") is not False:
            cur = best[key]
            if cur is None or load_key(r.get("load")) > load_key(cur):
                best[key] = r.get("load")
    return [{"suite": s, "workload": w, "config_id": c, "load": load} for (s, w, c), load in sorted(best.items())]


def analyse(report: dict[str, Any]) -> None:
    """Add ``analysis`` to a report dict, in place."""
    results = report.get("results") or []
    report["analysis"] = {
        "pareto": pareto(results, report.get("suites") or {}),
        "best_per_load": best_per_load(report.get("ranking") or []),
        "max_sustained_load": max_sustained_load(results),
    }


def combine_repeats(blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean of several metrics blocks, leaf by leaf (counts are summed; a missing leaf stays missing)."""
    summed = {"completed", "failed", "tpot_excluded"}

    def merge(values: list[Any], key: str) -> Any:
        if all(isinstance(v, Mapping) for v in values):
            keys = dict.fromkeys(k for v in values for k in v)
            return {k: merge([v.get(k) for v in values], k) for k in keys}
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            total = sum(values)
            return total if key in summed else total / len(values)
        return values[-1]

    return merge(list(blocks), "")  # type: ignore[no-any-return]


def repeat_confidence(blocks: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, list[float]]:
    """95 % intervals of the named metrics over repeats."""
    out: dict[str, list[float]] = {}
    for name in dict.fromkeys(metrics):
        m = parse_metric(name)
        values = [v for v in (m.value(b) for b in blocks) if v is not None]
        ci = student_t_interval(values)
        if ci is not None and len(values) == len(blocks):
            out[name] = [round(ci[0], 6), round(ci[1], 6)]
    return out
