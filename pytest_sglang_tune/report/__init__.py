"""Report writers: ``json`` (report.json text), ``html`` (one self-contained page), ``terminal`` (summary).

They all read the same plain ``report`` dict (schema: docs/report-schema.md); the helpers here group its
results the way every view shows them: suite → workload × load level → ranked rows, then the unranked ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_sglang_tune.errors import GrammarError
from pytest_sglang_tune.grammar import Metric, parse_metric, parse_slo
from pytest_sglang_tune.ranking import load_key, load_label, result_key, workload_name
from pytest_sglang_tune.results import LoadKey

DEFAULT_METRICS: tuple[str, ...] = (
    "output_throughput", "output_throughput_per_gpu", "goodput", "ttft_ms.p99", "tpot_ms.p50", "e2e_ms.p99",
    "error_rate",
)


@dataclass
class Group:
    """One suite × workload × load level: ranked rows (entry, result) and the results that were not ranked."""

    suite: str
    workload: str
    load: dict[str, Any]
    ranked: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    unranked: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.workload} @ {load_label(self.load)}"


def suite_names(report: Mapping[str, Any]) -> list[str]:
    """Suites in report order: those in ``suites`` first, then any others the results name."""
    names = list((report.get("suites") or {}).keys())
    for r in report.get("results") or []:
        s = str(r.get("suite", ""))
        if s not in names:
            names.append(s)
    return names


def groups(report: Mapping[str, Any], suite: str) -> list[Group]:
    """The groups of one suite in ranking order, with groups that have no ranked result after them."""
    by_key = {result_key(r): r for r in report.get("results") or []}
    out: dict[tuple[str, LoadKey], Group] = {}
    for entry in report.get("ranking") or []:
        if entry.get("suite") != suite:
            continue
        gk = (str(entry.get("workload", "")), load_key(entry.get("load")))
        g = out.setdefault(gk, Group(suite, gk[0], dict(entry.get("load") or {})))
        res = by_key.get((suite, gk[0], gk[1], str(entry.get("config_id", ""))), {})
        g.ranked.append((entry, res))
    ranked_ids = {(g.workload, load_key(g.load), e.get("config_id"))
                  for g in out.values() for e, _ in g.ranked}
    for r in report.get("results") or []:
        if r.get("suite") != suite:
            continue
        wl, lk = workload_name(r), load_key(r.get("load"))
        if (wl, lk, r.get("config_id")) in ranked_ids:
            continue
        g = out.setdefault((wl, lk), Group(suite, wl, dict(r.get("load") or {})))
        g.unranked.append(r)
    return list(out.values())


def objective_text(report: Mapping[str, Any], suite: str) -> str:
    info = (report.get("suites") or {}).get(suite) or {}
    if info.get("objective"):
        return str(info["objective"])
    for r in report.get("results") or []:
        if r.get("suite") == suite and r.get("objective"):
            return str(r["objective"])
    return ""


def slo_texts(report: Mapping[str, Any], suite: str) -> list[str]:
    info = (report.get("suites") or {}).get(suite) or {}
    if info.get("slos"):
        return [str(s) for s in info["slos"]]
    for r in report.get("results") or []:
        if r.get("suite") == suite and r.get("slos"):
            return [str(s) for s in r["slos"]]
    return []


def metric_columns(report: Mapping[str, Any], suite: str) -> list[Metric]:
    """The metrics worth a column for a suite: its SLO metrics, then the usual ones (no duplicates)."""
    cols: list[Metric] = []
    names = []
    for text in slo_texts(report, suite):
        try:
            names.append(str(parse_slo(text).metric))
        except GrammarError:
            continue
    names.extend(DEFAULT_METRICS)
    for n in names:
        m = parse_metric(n)
        if m not in cols:
            cols.append(m)
    return cols


def varying_flags(results: list[dict[str, Any]]) -> list[str]:
    """Server flags whose values differ between the given results (the flags that tell configs apart)."""
    keys: list[str] = []
    for r in results:
        for k in r.get("server_args") or {}:
            if k not in keys:
                keys.append(k)
    missing = object()
    return [k for k in keys
            if len({repr((r.get("server_args") or {}).get(k, missing)) for r in results}) > 1]


def fmt(value: Any) -> str:
    """Compact human formatting of a metric value; ``–`` for missing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        a = abs(value)
        if a >= 1000:
            return f"{value:,.0f}"
        if a >= 100:
            return f"{value:.1f}"
        if a >= 1 or a == 0:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def flag_text(flag: str, value: Any) -> str:
    name = flag if flag.startswith("-") else "--" + flag.replace("_", "-")
    if value is True:
        return name
    return f"{name}={value}"


def status_counts(report: Mapping[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in report.get("results") or []:
        s = str(r.get("status"))
        counts[s] = counts.get(s, 0) + 1
    return counts
