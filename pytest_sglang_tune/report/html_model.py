"""What report.html shows, derived from the plain report dict: labels, Pareto points, the best configs.

The optional ``report["analysis"]`` block (Pareto fronts, best config per load, highest sustained load) is used
when present; without it the same things are computed here from ``results`` and ``ranking``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_sglang_tune.analysis import best_per_load as analysis_best_per_load
from pytest_sglang_tune.analysis import pareto_front
from pytest_sglang_tune.errors import GrammarError
from pytest_sglang_tune.grammar import Metric, parse_metric, parse_slo
from pytest_sglang_tune.ranking import is_ranked, load_key, load_label, workload_name
from pytest_sglang_tune.report import objective_text, slo_texts
from pytest_sglang_tune.stats import as_interval

X_METRIC = "output_throughput_per_gpu"
DEFAULT_Y_METRIC = "ttft_ms.p99"
DEFAULT_OBJECTIVE_METRIC = "output_throughput_per_gpu"


def suite_results(report: Mapping[str, Any], suite: str) -> list[dict[str, Any]]:
    return [r for r in report.get("results") or [] if r.get("suite") == suite]


def workloads(results: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for r in results:
        w = workload_name(r)
        if w not in out:
            out.append(w)
    return out


def loads(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct load levels of ``results``, ascending."""
    seen: dict[Any, dict[str, Any]] = {}
    for r in results:
        seen.setdefault(load_key(r.get("load")), dict(r.get("load") or {}))
    return [seen[k] for k in sorted(seen)]


def short_label(result: Mapping[str, Any]) -> str:
    """A readable config name: the bracketed part of ``display_id`` without the load suffix, else the id."""
    display = str(result.get("display_id") or "")
    m = re.search(r"\[(.*)\]$", display)
    label = m.group(1) if m else display
    suffix = "-" + load_label(result.get("load"))
    if label.endswith(suffix):
        label = label[: -len(suffix)]
    if not label:
        label = str(result.get("config_id") or "?")
    return label if len(label) <= 60 else label[:57] + "…"


def metric_value(result: Mapping[str, Any], metric: str) -> float | None:
    try:
        return parse_metric(metric).value(result.get("metrics") or {})
    except GrammarError:
        return None


def objective_metric(report: Mapping[str, Any], suite: str) -> tuple[str, bool]:
    """(metric name, higher is better) of the suite's objective."""
    text = objective_text(report, suite)
    direction, _, metric = text.partition(":")
    metric = metric.strip() or DEFAULT_OBJECTIVE_METRIC
    return metric, direction.strip() != "minimize"


def latency_metric(report: Mapping[str, Any], suite: str) -> str:
    """The latency statistic of the suite's first latency SLO (``ttft_ms.p99`` when it has none)."""
    from pytest_sglang_tune.analysis import latency_metric as slo_latency_metric

    return slo_latency_metric(slo_texts(report, suite))


def slo_thresholds(report: Mapping[str, Any], suite: str) -> dict[str, list[tuple[str, float]]]:
    """``{metric: [(op, threshold)]}`` of the suite's SLOs."""
    out: dict[str, list[tuple[str, float]]] = {}
    for text in slo_texts(report, suite):
        try:
            slo = parse_slo(text)
        except GrammarError:
            continue
        out.setdefault(str(slo.metric), []).append((slo.op, slo.threshold))
    return out


def confidence(result: Mapping[str, Any], metric: str) -> tuple[float, float] | None:
    """The result's 95 % interval of ``metric`` (read as everywhere else: ``stats.as_interval``)."""
    return as_interval((result.get("confidence") or {}).get(metric))


def by_config(results: list[dict[str, Any]]) -> dict[tuple[str, Any, str], dict[str, Any]]:
    """``{(workload, load key, config_id): result}``."""
    return {(workload_name(r), load_key(r.get("load")), str(r.get("config_id"))): r for r in results}


@dataclass
class ParetoPoint:
    result: dict[str, Any]
    x: float
    y: float
    on_front: bool
    front: int  # which front (one per ``analysis.pareto`` entry) the point belongs to


def pareto_points(report: Mapping[str, Any], suite: str, workload: str) -> tuple[str, str, list[ParetoPoint]]:
    """(x metric, y metric, points) for one suite × workload over every load level; ``analysis.pareto`` when
    the report has it (a point's own ``load`` wins over its entry's), else one front computed here."""
    results = [r for r in suite_results(report, suite) if workload_name(r) == workload]
    index = by_config(results)
    entries = [p for p in ((report.get("analysis") or {}).get("pareto") or [])
               if p.get("suite") == suite and p.get("workload") == workload]
    out: list[ParetoPoint] = []
    if entries:
        x_metric = str(entries[0].get("x_metric") or X_METRIC)
        y_metric = str(entries[0].get("y_metric") or latency_metric(report, suite))
        for n, e in enumerate(entries):
            for p in e.get("points") or []:
                if p.get("x") is None or p.get("y") is None:
                    continue
                load = p.get("load") if p.get("load") is not None else e.get("load")
                res = index.get((workload, load_key(load), str(p.get("config_id")))) or {
                    "config_id": p.get("config_id"), "load": load, "suite": suite, "slo_pass": p.get("slo_pass")}
                out.append(ParetoPoint(res, float(p["x"]), float(p["y"]), bool(p.get("on_front")), n))
        return x_metric, y_metric, out
    x_metric, y_metric = X_METRIC, latency_metric(report, suite)
    measured = []
    for r in results:
        x, y = metric_value(r, x_metric), metric_value(r, y_metric)
        if is_ranked(r) and x is not None and y is not None:
            measured.append((r, x, y))
    fronts = pareto_front([(x, y) for _, x, y in measured])
    out = [ParetoPoint(r, x, y, f, 0) for (r, x, y), f in zip(measured, fronts, strict=True)]
    return x_metric, y_metric, out


@dataclass
class Best:
    """The best config of one suite × workload × load level (``result`` is its full result)."""

    suite: str
    workload: str
    load: dict[str, Any]
    config_id: str
    score: float | None
    slo_pass: bool
    result: dict[str, Any]
    tied_with: list[str]


def best_per_load(report: Mapping[str, Any], suite: str, workload: str) -> list[Best]:
    """Rank 1 of each load level (``analysis.best_per_load`` when given), with the configs tied with it."""
    results = [r for r in suite_results(report, suite) if workload_name(r) == workload]
    index = by_config(results)
    ranking = [e for e in report.get("ranking") or [] if e.get("suite") == suite and e.get("workload") == workload]
    given = (report.get("analysis") or {}).get("best_per_load") or analysis_best_per_load(ranking)
    picks: list[tuple[dict[str, Any], str, float | None]] = []
    seen: set[Any] = set()
    for b in given:  # several rank-1 entries per load when they are tied: the first is the pick, the rest tied_with
        if b.get("suite") == suite and b.get("workload") == workload and load_key(b.get("load")) not in seen:
            seen.add(load_key(b.get("load")))
            picks.append((dict(b.get("load") or {}), str(b.get("config_id")), b.get("score")))
    out = []
    for load, cid, score in sorted(picks, key=lambda p: load_key(p[0])):
        lk = load_key(load)
        level = [e for e in ranking if load_key(e.get("load")) == lk]
        entry: dict[str, Any] = next((e for e in level if str(e.get("config_id")) == cid), {})
        tied = [str(e.get("config_id")) for e in level
                if e.get("tied") and str(e.get("config_id")) != cid and e.get("rank") == entry.get("rank")
                and e.get("slo_pass") == entry.get("slo_pass")]
        res = index.get((workload, lk, cid), {"config_id": cid, "load": load})
        out.append(Best(suite, workload, load, cid, score, bool(entry.get("slo_pass")), res, tied))
    return out


def headline(bests: list[Best]) -> Best | None:
    """The answer for a workload: the best config at the highest load level where one meets the SLOs
    (else at the highest load level measured)."""
    passing = [b for b in bests if b.slo_pass]
    pool = passing or bests
    return pool[-1] if pool else None


def max_sustained(report: Mapping[str, Any], suite: str, workload: str) -> list[dict[str, Any]]:
    return [m for m in ((report.get("analysis") or {}).get("max_sustained_load") or [])
            if m.get("suite") == suite and m.get("workload") == workload]


def ranking_entry(report: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    for e in report.get("ranking") or []:
        if (e.get("suite") == result.get("suite") and e.get("workload") == workload_name(result)
                and load_key(e.get("load")) == load_key(result.get("load"))
                and e.get("config_id") == result.get("config_id")):
            return dict(e)
    return {}


def metric_obj(text: str) -> Metric | None:
    try:
        return parse_metric(text)
    except GrammarError:
        return None
