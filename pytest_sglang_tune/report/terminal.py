"""The "top configurations per workload" block of pytest's terminal summary (plain lines, no colour)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_sglang_tune.errors import GrammarError
from pytest_sglang_tune.grammar import Metric, parse_slo
from pytest_sglang_tune.report import fmt, groups, objective_text, slo_texts, status_counts, suite_names
from pytest_sglang_tune.report.export import export_lines

_MAX_METRICS = 3


def _slo_metrics(report: Mapping[str, Any], suite: str) -> list[Metric]:
    out: list[Metric] = []
    for text in slo_texts(report, suite):
        try:
            m = parse_slo(text).metric
        except GrammarError:
            continue
        if m not in out:
            out.append(m)
    return out[:_MAX_METRICS]


def summary_lines(report: Mapping[str, Any], top: int = 3, run_dir: Path | None = None) -> list[str]:
    """Lines like::

        sglang-tune run 20261127-130501-3fa2 (backend sim, GPUs 2): 6 results: 5 passed, 1 infeasible
        tune_llama8b · chat @ c64 · maximize: output_throughput_per_gpu
           1= tp2-mem0.85   score 1,234  SLO pass  ttft_ms.p99=850
           1= tp2-mem0.9    score 1,230  SLO pass  ttft_ms.p99=870
           3. tp1-mem0.85   score 1,010  SLO pass  ttft_ms.p99=640
           … 2 more ranked

    ``1=`` marks configs tied by the tie rule (``stats.tied``): their order is not a claim.
        tune_llama8b: not ranked: 1 infeasible (see report.html)
        export the winner of tune_llama8b/chat (tp2-mem0.85, tied with 1 more): reports/<run>/winner-….yaml
    """
    run = report.get("run") or {}
    counts = status_counts(report)
    total = sum(counts.values())
    count_text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    backend = run.get("backend") or "?"
    gpus = "?" if run.get("gpus") is None else run["gpus"]
    head = f"sglang-tune run {run.get('id') or '?'} (backend {backend}, GPUs {gpus})"
    lines = [f"{head}: {total} results" + (f": {count_text}" if count_text else "")]
    if (gh := gpu_hours_text(run.get("gpu_hours"))) is not None:
        lines.append(gh)
    if isinstance(run.get("search"), Mapping):
        from pytest_sglang_tune.search.summary import search_lines

        lines += search_lines(run["search"])
    lines += [f"warning: {w}" for w in report.get("warnings") or []]
    for suite in suite_names(report):
        metrics = _slo_metrics(report, suite)
        objective = objective_text(report, suite)
        unranked: dict[str, int] = {}
        for g in groups(report, suite):
            for r in g.unranked:
                s = str(r.get("status"))
                fidelity = r.get("fidelity")
                if fidelity == "probe":
                    s = "load-search probes"
                elif fidelity == "low":
                    s = "low-fidelity (halving)"
                unranked[s] = unranked.get(s, 0) + 1
            if not g.ranked:
                continue
            lines.append(f"{suite} · {g.title}" + (f" · {objective}" if objective else ""))
            shown = g.ranked[:top]
            width = max(len(str(r.get("display_id") or e.get("config_id"))) for e, r in shown)
            for entry, res in shown:
                name = str(res.get("display_id") or entry.get("config_id"))
                slo = "SLO pass" if entry.get("slo_pass") else "SLO MISS"
                vals = "  ".join(f"{m}={fmt(m.value(res.get('metrics') or {}))}" for m in metrics)
                score = fmt(entry.get("score"))
                mark = f"{entry.get('rank')}{'=' if entry.get('tied') else '.'}"
                lines.append(f"  {mark:>3} {name:<{width}}  score {score:>9}  {slo}"
                             + (f"  {vals}" if vals else ""))
            rest = g.ranked[top:]
            if rest:
                misses = sum(1 for e, _ in rest if not e.get("slo_pass"))
                more = f"      … {len(rest)} more ranked"
                lines.append(more + (f" ({misses} failing SLOs)" if misses else ""))
        if unranked:
            text = ", ".join(f"{n} {s}" for s, n in sorted(unranked.items()))
            lines.append(f"{suite}: not ranked: {text} (reasons in report.html)")
    return lines + export_lines(report, run_dir)


def prediction_lines(prediction: Any, ranking: list[dict[str, Any]], top: int = 3) -> list[str]:
    """``sglang-tune predict``'s output: per workload × load the predicted best configs with the SLO metrics,
    the configs predicted infeasible, and the GPU-hours of measuring the whole grid for real."""
    from pytest_sglang_tune.results import load_label

    suite = prediction.suite
    metrics: list[Metric] = []
    for s in suite.slos:
        if s.metric not in metrics:
            metrics.append(s.metric)
    by_slot = {(r.point.workload, r.point.load_key, r.point.config_id): r for r in prediction.results}
    feasible = [c for c in prediction.configs if not c.infeasible]
    lines = [f"sglang-tune predict {suite.name} on {prediction.gpu} (virtual clock, {prediction.elapsed_s:.1f} s): "
             f"{len(prediction.configs)} configs, {len(feasible)} predicted feasible · objective {suite.objective}"]
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for e in ranking:
        groups.setdefault((e["workload"], json_key(e["load"])), []).append(e)
    for (workload, _), entries in groups.items():
        lines.append(f"{workload} @ {load_label(entries[0]['load'])}")
        shown = entries[:top]
        width = max(len(by_slot[(workload, _lk(e), e['config_id'])].display_id or "") for e in shown)
        for e in shown:
            r = by_slot[(workload, _lk(e), e["config_id"])]
            mark = f"{e['rank']}{'=' if e.get('tied') else '.'}"
            vals = "  ".join(f"{m}={fmt(m.value(dict(r.metrics or {})))}" for m in metrics[:_MAX_METRICS])
            slo = "SLO pass" if e["slo_pass"] else "SLO MISS"
            lines.append(f"  {mark:>3} {r.display_id or e['config_id']:<{width}}  score {fmt(e['score']):>9}  {slo}"
                         + (f"  {vals}" if vals else ""))
        if len(entries) > top:
            lines.append(f"      … {len(entries) - top} more")
    for c in prediction.configs:
        if c.infeasible:
            lines.append(f"infeasible: {c.config.display or c.config.config_id}: {c.infeasible}")
    hours = prediction.grid_gpu_s / 3600.0
    lines.append(f"measuring the whole grid for real would take ~{hours:.2f} GPU-h on {prediction.gpu} (predicted: "
                 "deploy time per config from sim/startup.py, measurement from the virtual clock)")
    return lines


def json_key(load: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={load.get(k)}" for k in sorted(load))


def _lk(entry: Mapping[str, Any]) -> Any:
    from pytest_sglang_tune.results import load_key

    return load_key(entry.get("load"))


def gpu_hours_text(gpu_hours: Any) -> str | None:
    """``GPU time: spent 0.42 GPU-h; the full grid would have cost ~1.9 GPU-h (predicted)`` (virtual on the sim)."""
    if not isinstance(gpu_hours, Mapping) or gpu_hours.get("spent") is None:
        return None
    virtual = " (virtual: what these runs would hold on the simulated GPU)" if gpu_hours.get("virtual") else ""
    text = f"GPU time: spent {float(gpu_hours['spent']):.3g} GPU-h{virtual}"
    if gpu_hours.get("grid_predicted") is not None:
        text += f"; the full grid would have cost ~{float(gpu_hours['grid_predicted']):.3g} GPU-h (predicted)"
    return text
