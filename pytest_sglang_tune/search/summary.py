"""What a search did, for ``run.search`` in report.json: per suite the strategy, the budget used and left, why it
stopped, the configs measured (predicted vs measured value at the target, and their rank correlation) and the
configs not measured with their predicted figures. Read by the controller from the run directory (the plan
file and the ledger's journal), so it works under xdist, where only workers collect."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_sglang_tune.results import Result
from pytest_sglang_tune.search import SEARCH_DIR
from pytest_sglang_tune.search.budget import Budget


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 pairs or no spread."""
    if len(xs) < 3:
        return None

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2.0
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return None if sx == 0 or sy == 0 else cov / (sx * sy)


def stop_file(directory: Path, suite: str) -> Path:
    return directory / f"{suite}.stop.txt"


def summarize_search(run_dir: Path, suite: str, strategy: str, budget: Budget,
                     results: Sequence[Result]) -> dict[str, Any] | None:
    directory = run_dir / SEARCH_DIR
    plan_path = directory / f"{suite}.plan.json"
    if not plan_path.is_file():
        return None
    plan = json.loads(plan_path.read_text())
    mine = [r for r in results if r.point.suite == suite]
    grid_s = plan.get("grid_gpu_s")
    used_s = sum(r.cost.gpu_s or 0.0 for r in mine)
    limit_s = budget.gpu_limit(grid_s) if budget.trials is None and budget.text != "unlimited" else None
    target = next((r.trial.get("target") for r in mine if r.trial), None)
    measured: dict[str, dict[str, Any]] = {}
    for r in mine:
        if not r.trial or not r.full_fidelity:
            continue
        row = measured.setdefault(r.point.config_id, {"config_id": r.point.config_id, "display": _short(r),
                                                      "predicted": r.trial.get("predicted"), "measured": None,
                                                      "slo_pass": True, "trials": set()})
        row["trials"].add(r.trial.get("number"))
        if r.measured and target == f"{r.point.workload}@{_label(r)}":
            row["measured"] = _score(r)
        if r.slo_pass is False or r.status == "not_measured":
            row["slo_pass"] = False
    rows = [{**v, "trials": sorted(x for x in v["trials"] if x is not None)} for v in measured.values()]
    pairs = [(row["predicted"], row["measured"]) for row in rows
             if row["predicted"] is not None and row["measured"] is not None]
    started = {r.point.config_id for r in mine if r.trial}
    not_measured = [{"config_id": c["config_id"], "predicted": c["predicted"], "predicted_slo_pass": c["predicted_ok"],
                     "infeasible": c["infeasible"]}
                    for c in plan["candidates"] if c["config_id"] not in started]
    stop = stop_file(directory, suite)
    stopped = stop.read_text().strip() if stop.is_file() else None
    n_trials = len({n for row in rows for n in row["trials"]})
    if not not_measured:
        stopped = "search finished: every config measured"
    elif stopped is None and budget.trials is not None and n_trials >= budget.trials:
        stopped = f"budget spent: {n_trials} of {budget.trials} trials"  # collection made no more trials than that
    return {
        "strategy": strategy, "budget": budget.text, "target": target,
        "budget_gpu_h": None if limit_s is None else round(limit_s / 3600.0, 6),
        "used_gpu_h": round(used_s / 3600.0, 6),
        "left_gpu_h": None if limit_s is None else round(max(0.0, limit_s - used_s) / 3600.0, 6),
        "trials": n_trials,
        "grid_configs": len(plan["candidates"]), "grid_gpu_h_predicted": None if grid_s is None else
        round(grid_s / 3600.0, 6), "predicted_on": plan.get("gpu"),
        "stopped": stopped,
        "measured": rows, "not_measured": not_measured,
        "rank_correlation": spearman([p for p, _ in pairs], [m for _, m in pairs]),
    }


def _short(r: Result) -> str:
    d = r.display_id or ""
    return d.split("[", 1)[-1].rsplit("-", 1)[0] if "[" in d else r.point.config_id


def _label(r: Result) -> str:
    from pytest_sglang_tune.results import load_label

    return load_label(r.point.load)


def _score(r: Result) -> float | None:
    from pytest_sglang_tune.grammar import DEFAULT_OBJECTIVE, parse_objective

    return parse_objective(r.objective or DEFAULT_OBJECTIVE).score(dict(r.metrics or {}))


def search_lines(search: dict[str, Any]) -> list[str]:
    """Terminal lines of ``run.search``."""
    out = []
    for suite, s in search.items():
        budget = f" of {s['budget_gpu_h']:.3g}" if s.get("budget_gpu_h") is not None else ""
        line = (f"{suite}: search {s['strategy']} ({s['budget']}): {s['trials']} trials of {s['grid_configs']} "
                f"configs, {s['used_gpu_h']:.3g}{budget} GPU-h")
        if s.get("grid_gpu_h_predicted") is not None:
            line += f"; the whole grid ~{s['grid_gpu_h_predicted']:.3g} GPU-h (predicted on {s['predicted_on']})"
        out.append(line)
        if s.get("stopped"):
            out.append(f"  stopped: {s['stopped']}")
        if s["not_measured"]:
            out.append(f"  {len(s['not_measured'])} configs not measured (their predicted figures are in the report)")
        if s.get("rank_correlation") is not None:
            out.append(f"  predicted vs measured at {s['target']}: Spearman {s['rank_correlation']:.2f}")
    return out
