"""The charts of report.html: Pareto fronts, per-flag effects and latency percentiles, as inline SVG.

DOM contract (tests rely on it): every chart is ``<svg data-chart="pareto|flag-effect|latency"
data-suite=... data-workload=...>`` (plus ``data-flag`` / ``data-load`` / ``data-metric`` where they apply)
and each measured point is a ``<circle class="pt" data-config-id=... data-load=...>`` with its values in
``data-x`` / ``data-y`` (and ``data-on-front``, ``data-value``, ``data-stat``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_sglang_tune.ranking import is_ranked, load_key, load_label, workload_name
from pytest_sglang_tune.report import fmt
from pytest_sglang_tune.report.html_model import (
    confidence,
    loads,
    metric_value,
    objective_metric,
    pareto_points,
    short_label,
    slo_thresholds,
    suite_results,
)
from pytest_sglang_tune.report.html_svg import PALETTE, HRule, Line, Point, categorical, esc, scatter, short_num

LATENCY_METRICS = ("ttft_ms", "itl_ms", "e2e_ms")
PERCENTILES = ("p50", "p90", "p95", "p99")


def load_colors(levels: list[dict[str, Any]]) -> dict[Any, str]:
    return {load_key(load): PALETTE[i % len(PALETTE)] for i, load in enumerate(levels)}


def _legend(items: list[tuple[str, str]], title: str = "") -> str:
    if len(items) < 2 and not title:
        return ""
    spans = "".join(f'<span class="key"><i style="background:{c}"></i>{esc(t)}</span>' for t, c in items)
    return f'<div class="legend">{esc(title)}{spans}</div>'


def _figure(svg: str, caption: str, legend: str = "") -> str:
    return f'<figure class="chart-box">{svg}{legend}<figcaption>{caption}</figcaption></figure>'


def _rules_for(thresholds: Mapping[str, list[tuple[str, float]]], metric: str, label: str = "SLO") -> list[HRule]:
    return [HRule(t, f"{label} {op} {short_num(t)}") for op, t in thresholds.get(metric, [])]


def pareto_chart(report: Mapping[str, Any], suite: str, workload: str) -> str:
    x_metric, y_metric, pts = pareto_points(report, suite, workload)
    if not pts:
        return ""
    levels = loads([p.result for p in pts])
    colors = load_colors(levels)
    points = []
    for p in pts:
        r = p.result
        lk = load_key(r.get("load"))
        points.append(Point(
            p.x, p.y, color=colors[lk], filled=r.get("slo_pass") is not False, emphasis=p.on_front,
            attrs={"data-config-id": r.get("config_id"), "data-load": load_label(r.get("load")),
                   "data-x": p.x, "data-y": p.y, "data-on-front": str(p.on_front).lower(),
                   "data-slo-pass": str(r.get("slo_pass")).lower()},
            title=f"{short_label(r)} @ {load_label(r.get('load'))}\n{x_metric} {fmt(p.x)}\n{y_metric} {fmt(p.y)}"
                  + ("\nPareto front" if p.on_front else "") + ("\nmisses an SLO" if r.get("slo_pass") is False
                                                                 else ""),
            xerr=confidence(r, x_metric), yerr=confidence(r, y_metric)))
    lines = []
    for n in sorted({p.front for p in pts}):
        front = sorted((p.x, p.y) for p in pts if p.on_front and p.front == n)
        lines.append(Line(front, "#1b1f24", {"data-front": str(n)}, width=1.5, dash=True))
    svg = scatter({"data-chart": "pareto", "data-suite": suite, "data-workload": workload,
                   "data-x-metric": x_metric, "data-y-metric": y_metric}, points,
                  xlabel=f"{x_metric} (higher is better)", ylabel=f"{y_metric} (lower is better)", lines=lines,
                  rules=_rules_for(slo_thresholds(report, suite), y_metric))
    legend = _legend([(load_label(lv), colors[load_key(lv)]) for lv in levels], "load: ")
    caption = (f"<b>{esc(workload)}</b>: throughput per GPU against {esc(y_metric)}, one point per config and "
               "load level; the Pareto front is drawn large and joined; hollow points miss an SLO.")
    return _figure(svg, caption, legend)


def _sort_values(values: list[Any]) -> list[Any]:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None):
        return sorted(values, key=lambda v: (v is None, v if v is not None else 0))
    return sorted(values, key=lambda v: (v is None, str(v)))


def _value_text(v: Any) -> str:
    if v is None:
        return "(default)"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def flag_effect_chart(report: Mapping[str, Any], suite: str, workload: str, flag: str) -> str:
    metric, higher = objective_metric(report, suite)
    rows = []
    for r in suite_results(report, suite):
        if workload_name(r) != workload or not is_ranked(r):
            continue
        y = metric_value(r, metric)
        if y is not None:
            rows.append((r, (r.get("server_args") or {}).get(flag), y))
    if not rows:
        return ""
    values = _sort_values(list({repr(v): v for _, v, _ in rows}.values()))
    cat = {repr(v): i for i, v in enumerate(values)}
    levels = loads([r for r, _, _ in rows])
    colors = load_colors(levels)
    points = [Point(cat[repr(v)], y, color=colors[load_key(r.get("load"))], filled=r.get("slo_pass") is not False,
                    attrs={"data-config-id": r.get("config_id"), "data-load": load_label(r.get("load")),
                           "data-value": _value_text(v), "data-y": y},
                    title=f"{short_label(r)} @ {load_label(r.get('load'))}\n{flag}={_value_text(v)}\n"
                          f"{metric} {fmt(y)}", yerr=confidence(r, metric))
              for r, v, y in rows]
    lines = []
    pick = max if higher else min
    for load in levels:
        lk = load_key(load)
        best = []
        for v in values:
            ys = [y for r, v2, y in rows if repr(v2) == repr(v) and load_key(r.get("load")) == lk]
            if ys:
                best.append((float(cat[repr(v)]), pick(ys)))
        lines.append(Line(best, colors[lk], {"data-best": load_label(load)}, dash=True))
    svg = categorical({"data-chart": "flag-effect", "data-suite": suite, "data-workload": workload,
                       "data-flag": flag, "data-metric": metric}, [_value_text(v) for v in values], points,
                      xlabel=f"--{flag}", ylabel=f"{metric} ({'higher' if higher else 'lower'} is better)",
                      lines=lines, rules=_rules_for(slo_thresholds(report, suite), metric))
    legend = _legend([(load_label(lv), colors[load_key(lv)]) for lv in levels], "load: ")
    caption = (f"<b>--{esc(flag)}</b> on {esc(workload)}: one point per config; the dashed line joins the best "
               "config for each value.")
    return _figure(svg, caption, legend)


def latency_charts(report: Mapping[str, Any], suite: str, workload: str, load: Mapping[str, Any],
                   best_id: str | None) -> str:
    """p50/p90/p95/p99 of TTFT, ITL and E2E, one line per config (the best one drawn thick)."""
    results = [r for r in suite_results(report, suite)
               if workload_name(r) == workload and load_key(r.get("load")) == load_key(load) and is_ranked(r)]
    thresholds = slo_thresholds(report, suite)
    figs = []
    colors = {str(r.get("config_id")): PALETTE[i % len(PALETTE)] for i, r in enumerate(results)}
    for metric in LATENCY_METRICS:
        points, lines = [], []
        for r in results:
            cid = str(r.get("config_id"))
            series = [(i, metric_value(r, f"{metric}.{stat}")) for i, stat in enumerate(PERCENTILES)]
            series_ok = [(i, v) for i, v in series if v is not None]
            if not series_ok:
                continue
            main = cid == best_id
            lines.append(Line([(float(i), v) for i, v in series_ok], colors[cid], {"data-config-id": cid},
                              width=3 if main else 1.3))
            points += [Point(i, v, color=colors[cid], emphasis=main,
                             attrs={"data-config-id": cid, "data-load": load_label(load),
                                    "data-stat": PERCENTILES[i], "data-y": v},
                             title=f"{short_label(r)}\n{metric}.{PERCENTILES[i]} {fmt(v)} ms")
                       for i, v in series_ok]
        if not points:
            continue
        rules = [HRule(t, f"SLO {stat} {op} {short_num(t)}", PERCENTILES.index(stat) - 0.4,
                       PERCENTILES.index(stat) + 0.4)
                 for key, slos in thresholds.items() if key.startswith(metric + ".")
                 for stat in [key.split(".", 1)[1]] if stat in PERCENTILES for op, t in slos]
        figs.append(categorical({"data-chart": "latency", "data-suite": suite, "data-workload": workload,
                                 "data-load": load_label(load), "data-metric": metric}, list(PERCENTILES), points,
                                xlabel=f"{metric} percentile", ylabel=f"{metric} (ms)", lines=lines, rules=rules,
                                spread=False))
    if not figs:
        return ""
    legend = _legend([(short_label(r) + (" (best)" if str(r.get("config_id")) == best_id else ""),
                       colors[str(r.get("config_id"))]) for r in results])
    return (f'<div class="latency-set"><h4>{esc(workload)} @ {esc(load_label(load))}</h4>'
            f'<div class="charts">{"".join(figs)}</div>{legend}</div>')
