"""Search efficiency (issue 12): how much GPU time each search strategy spends before its best measured config is
within 2 % of the best there is, on realities that are *not* the predictor.

    python benchmarks/search_efficiency.py                     # 5 suites x 5 strategies x 20 seeds
    python benchmarks/search_efficiency.py --seeds 5 --suites benchmarks/suites/tune_bench_long.yaml

Per suite, the grid is predicted once on the sim's virtual clock (``predict_suite``) and cached under
``benchmarks/.cache/<suite>-<hash of the suite file, package version and sim physics>.json``. Each seed makes a
**reality** from it: every value of every varying flag gets a lognormal speed factor (σ ``--flag-sigma``, 15 %:
at least the sim error the sim-fidelity issue measured), every config one more (σ ``--config-sigma``, 5 %);
a config's throughputs and goodput are multiplied by its speed, its latencies divided by it, and its SLO verdict
is taken again on those figures at every load. A **measurement** adds noise to each figure (lognormal, σ
``--noise``, 2.5 %: a ±5 % 95 % interval; at a halving rung measuring a fraction ``f`` of the requests, σ/√f).
A trial costs the config's predicted GPU seconds: deploy + measure, the measure part times ``f`` at a low rung.

The strategies are the package's own code on those tables: ``grid``, ``halving`` and ``predicted`` through
``search.strategies.Plan``/``propose``, ``random`` and ``tpe`` through an in-memory ``search.ledger.Ledger``
(Optuna), each told the measured (noisy) value and SLO verdict. The **answer** after any trial is the best
full-fidelity trial that met its SLOs as measured; it is **within 2 %** when its reality value is within 2 % of
reality's best and it meets the SLOs in reality. Reported per suite and strategy over the seeds:
GPU time until the answer is first within 2 % (median and p90, as a share of the grid's GPU time; ``never`` when
not within the whole grid's GPU time), and how often the **final answer** is within 2 %: the answer once the
strategy stops by itself or a trial would start with ``--budget`` (25 %) of the grid's GPU time spent, as
``--sglang-budget=25%`` does (so the last trial may end past it). The predictor's Spearman rank correlation with
each reality (objective at the target point, every config that starts) is printed per suite; a suite counts
toward the targets only when its median is ≤ 0.9. Exit code 0 when every target is met.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SUITES = sorted((HERE / "suites").glob("tune_bench_*.yaml"))
CACHE = HERE / ".cache"
STRATEGIES = ("grid", "random", "tpe", "halving", "predicted")
WITHIN = 0.02
MAX_SPEARMAN = 0.9
TARGET_SHARE = 0.25
TARGET_SUCCESS = 0.9

# How a config's speed moves each metric: throughputs with it, latencies against it, counts not at all.
FASTER_IS_HIGHER = {"output_throughput", "output_throughput_per_gpu", "input_throughput", "request_throughput",
                    "goodput"}
FASTER_IS_LOWER = {"ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"}


# --- the predicted grid, cached --------------------------------------------------------------------------------

def cache_path(suite_file: Path, cache_dir: Path) -> Path:
    from pytest_sglang_tune import __version__
    from pytest_sglang_tune.sim.config import PHYSICS_VERSION

    digest = hashlib.sha256(suite_file.read_bytes() + f"|{__version__}|{PHYSICS_VERSION}".encode()).hexdigest()
    return cache_dir / f"{suite_file.stem}-{digest[:12]}.json"


def base_grid(suite_file: Path, cache_dir: Path, jobs: int | None) -> tuple[dict[str, Any], bool]:
    """The suite's predicted grid as plain data (read from the cache, or predicted and written); (grid, cached)."""
    path = cache_path(suite_file, cache_dir)
    if path.is_file():
        return json.loads(path.read_text()), True
    from pytest_sglang_tune.predict.grid import predict_suite
    from pytest_sglang_tune.search.ledger import candidates_of
    from pytest_sglang_tune.search.setup import target_of
    from pytest_sglang_tune.space import expand
    from pytest_sglang_tune.suite import load_suite

    suite = load_suite(suite_file)
    exp = expand(suite)
    prediction = predict_suite(suite, table=exp.flags, jobs=jobs, configs=list(exp.configs))
    target, label = target_of(suite)
    candidates = candidates_of(exp.configs, exp.varying, prediction, target=target, suite=suite)
    wanted = [suite.objective.metric, *(s.metric for s in suite.slos)]
    by_id = {c.config.config_id: c for c in prediction.configs}
    configs = []
    for c in candidates:
        cp = by_id[c.config_id]
        points = []
        for r in cp.results:
            if r.status != "passed" or not r.metrics:
                points.append({"target": False, "metrics": None})
                continue
            at = (r.point.workload, r.point.load_key) == target
            points.append({"target": at, "metrics": {str(m): m.value(dict(r.metrics)) for m in wanted}})
        configs.append({"config_id": c.config_id, "params": dict(c.params), "gpus": c.gpus,
                        "predicted": c.predicted, "predicted_ok": c.predicted_ok, "cost_s": c.cost_s,
                        "infeasible": c.infeasible, "deploy_gpu_s": cp.deploy_s * cp.config.gpus,
                        "points": points})
    grid = {"suite": suite.name, "file": suite_file.name, "target": label,
            "objective": str(suite.objective), "maximize": suite.objective.direction == "maximize",
            "objective_metric": str(suite.objective.metric), "slos": [str(s) for s in suite.slos],
            "grid_gpu_s": prediction.grid_gpu_s, "predict_s": round(prediction.elapsed_s, 2),
            "points": len(prediction.results), "configs": configs}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(grid))
    tmp.replace(path)
    return grid, False


# --- a reality and its measurements ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sigmas:
    flag: float = 0.15
    config: float = 0.05
    noise: float = 0.025


def speed_scaled(metrics: dict[str, float | None], speed: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, v in metrics.items():
        base = name.split(".")[0]
        if v is None:
            out[name] = None
        elif base in FASTER_IS_HIGHER:
            out[name] = v * speed
        elif base in FASTER_IS_LOWER:
            out[name] = v / speed
        else:
            out[name] = v
    return out


class Reality:
    """One seed's truth about a suite's grid: per config, its metrics at every point (None: not measured)."""

    def __init__(self, grid: dict[str, Any], seed: int, sigmas: Sigmas) -> None:
        from pytest_sglang_tune.grammar import parse_slo

        self.grid = grid
        self.sigmas = sigmas
        self.slos = [parse_slo(s) for s in grid["slos"]]
        self.objective = grid["objective_metric"]
        self.maximize = bool(grid["maximize"])
        rng = random.Random(f"reality-{grid['suite']}-{seed}")
        flag_factor: dict[tuple[str, str], float] = {}
        for c in grid["configs"]:  # config order is the grid's, so the draws are the same for every strategy
            for f, v in sorted(c["params"].items()):
                if (f, repr(v)) not in flag_factor:
                    flag_factor[(f, repr(v))] = math.exp(rng.gauss(0.0, sigmas.flag))
        self.points: dict[str, list[dict[str, float | None] | None]] = {}
        for c in grid["configs"]:
            speed = math.exp(rng.gauss(0.0, sigmas.config))
            for f, v in c["params"].items():
                speed *= flag_factor[(f, repr(v))]
            self.points[c["config_id"]] = [None if p["metrics"] is None else speed_scaled(p["metrics"], speed)
                                           for p in c["points"]]
        self.targets = {c["config_id"]: next((i for i, p in enumerate(c["points"]) if p["target"]), None)
                        for c in grid["configs"]}
        self.cost = {c["config_id"]: (c["deploy_gpu_s"], c["cost_s"] - c["deploy_gpu_s"]) for c in grid["configs"]}
        self.startable = [c["config_id"] for c in grid["configs"] if not c["infeasible"]]
        self.truth = {cid: self._verdict(self.points[cid], self.targets[cid]) for cid in self.startable}
        feasible = [v for v, ok in self.truth.values() if ok and v is not None]
        self.best = (max(feasible) if self.maximize else min(feasible)) if feasible else None

    def _verdict(self, points: Sequence[dict[str, float | None] | None], target: int | None
                 ) -> tuple[float | None, bool]:
        """(objective at the target, every SLO met at every point)."""
        ok = all(p is not None and all((v := p.get(str(s.metric))) is not None and s.check_value(v)
                                       for s in self.slos) for p in points)
        value = points[target].get(self.objective) if target is not None and points[target] else None
        return value, ok and value is not None

    def measure(self, config_id: str, fraction: float, rng: random.Random) -> tuple[float | None, bool, float]:
        """A trial: (measured value, measured SLO verdict, GPU seconds)."""
        sigma = self.sigmas.noise / math.sqrt(fraction)
        noisy = [None if p is None else {k: None if v is None else v * math.exp(rng.gauss(0.0, sigma))
                                         for k, v in p.items()} for p in self.points[config_id]]
        value, ok = self._verdict(noisy, self.targets[config_id])
        deploy, measure = self.cost[config_id]
        return value, ok, deploy + measure * fraction

    def within(self, config_id: str | None) -> bool:
        if config_id is None or self.best is None:
            return False
        value, ok = self.truth[config_id]
        if not ok or value is None:
            return False
        return value >= self.best * (1 - WITHIN) if self.maximize else value <= self.best * (1 + WITHIN)

    def spearman(self) -> float | None:
        import pandas as pd

        pairs = [(c["predicted"], self.truth[c["config_id"]][0]) for c in self.grid["configs"]
                 if not c["infeasible"] and c["predicted"] is not None and self.truth[c["config_id"]][0] is not None]
        if len(pairs) < 3:
            return None
        a = pd.Series([p for p, _ in pairs]).rank()
        b = pd.Series([r for _, r in pairs]).rank()
        rho = a.corr(b)
        return None if rho != rho else float(rho)


# --- one strategy on one reality -------------------------------------------------------------------------------

def plan_of(grid: dict[str, Any], strategy: str) -> Any:
    from pytest_sglang_tune.search.budget import Budget
    from pytest_sglang_tune.search.strategies import Candidate, Plan

    candidates = [Candidate(c["config_id"], c["params"], c["gpus"], c["predicted"], c["predicted_ok"],
                            c["cost_s"], c["infeasible"]) for c in grid["configs"]]
    # the whole grid's GPU time: enough to see when each strategy gets within 2 %; the final answer is read at
    # --budget from the same run (strategies decide the same way whatever the budget, until it stops them)
    return Plan(strategy, candidates, grid["maximize"], Budget("100%", share=1.0), grid["grid_gpu_s"])


def run_search(grid: dict[str, Any], reality: Reality, strategy: str, seed: int, budget: float) -> dict[str, Any]:
    """Trials until the strategy stops, or until the answer is within 2 % and ``budget`` is spent."""
    from pytest_sglang_tune.search.ledger import Ledger
    from pytest_sglang_tune.search.strategies import Proposal, TrialInfo, propose

    plan = plan_of(grid, strategy)
    grid_s = grid["grid_gpu_s"]
    noise = random.Random(f"noise-{grid['suite']}-{strategy}-{seed}")
    ledger = Ledger(plan, name=f"{grid['suite']}-{strategy}-{seed}", seed=seed) \
        if strategy in ("random", "tpe") else None
    rng = random.Random(seed)
    trials: list[Any] = []
    spent = 0.0
    best_score, answer = -math.inf, None
    reached_s: float | None = None
    final: str | None = None
    final_set = False
    stop_reason = ""
    while True:
        if not final_set and spent >= budget * grid_s:
            final, final_set = answer, True
        if final_set and reached_s is not None:
            break
        if ledger is not None:
            asked = ledger.ask(wait_s=0.0)
            if not isinstance(asked, tuple):
                stop_reason = asked.reason
                break
            number, proposal = asked
        else:
            decision = propose(plan, trials, rng)
            if not isinstance(decision, Proposal):
                stop_reason = decision.reason
                break
            number, proposal = len(trials), decision
        fraction = plan.fraction(proposal.rung) if strategy == "halving" else 1.0
        value, ok, gpu_s = reality.measure(proposal.config_id, fraction, noise)
        spent += gpu_s
        if ledger is not None:
            ledger.tell(number, value=value, ok=ok, gpu_s=gpu_s)
        trials.append(TrialInfo(number, proposal.config_id, proposal.rung, proposal.fidelity, True, value, ok,
                                gpu_s))
        if proposal.fidelity == "full" and ok and value is not None and plan.goodness(value) > best_score:
            best_score, answer = plan.goodness(value), proposal.config_id
        if reached_s is None and reality.within(answer):
            reached_s = spent
    if not final_set:
        final = answer
    return {"strategy": strategy, "seed": seed, "trials": len(trials), "spent": spent / grid_s,
            "reached": None if reached_s is None else reached_s / grid_s, "final_within": reality.within(final),
            "stop": stop_reason}


def run_suite(args: tuple[dict[str, Any], Sequence[str], Sequence[int], Sigmas, float]) -> dict[str, Any]:
    grid, strategies, seeds, sigmas, budget = args
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    rhos: list[float] = []
    for seed in seeds:
        reality = Reality(grid, seed, sigmas)
        if reality.best is None:
            continue
        if (rho := reality.spearman()) is not None:
            rhos.append(rho)
        for strategy in strategies:
            rows.append(run_search(grid, reality, strategy, seed, budget))
    return {"suite": grid["suite"], "rows": rows, "spearman": rhos, "search_s": time.perf_counter() - started}


# --- figures ---------------------------------------------------------------------------------------------------

def quantile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (inf counts as larger than everything)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else math.nan


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    reached = [math.inf if r["reached"] is None else r["reached"] for r in rows]
    return {"seeds": len(rows), "median": quantile(reached, 0.5), "p90": quantile(reached, 0.9),
            "never": sum(1 for r in rows if r["reached"] is None),
            "final_within": sum(1 for r in rows if r["final_within"]) / len(rows) if rows else math.nan,
            "trials": statistics.median(r["trials"] for r in rows) if rows else 0}


def share(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.1%}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", type=Path, nargs="+", default=SUITES)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    ap.add_argument("--budget", type=float, default=TARGET_SHARE, help="share of the grid's GPU time (0.25)")
    ap.add_argument("--flag-sigma", type=float, default=0.15)
    ap.add_argument("--config-sigma", type=float, default=0.05)
    ap.add_argument("--noise", type=float, default=0.025)
    ap.add_argument("--cache-dir", type=Path, default=CACHE)
    ap.add_argument("--jobs", type=int, default=None, help="processes (default: every core)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.flag_sigma < 0.15:
        ap.error("--flag-sigma below 0.15 is under the sim error the sim-fidelity issue measured")

    started = time.perf_counter()
    grids = []
    for f in args.suites:
        t = time.perf_counter()
        grid, cached = base_grid(f, args.cache_dir, args.jobs)
        n = sum(1 for c in grid["configs"] if not c["infeasible"])
        print(f"{grid['suite']}: {len(grid['configs'])} configs ({n} start), {grid['points']} points, target "
              f"{grid['target']}, {grid['objective']}; grid {grid['grid_gpu_s'] / 3600:.2f} GPU-h; "
              f"{'cached' if cached else f'predicted in {time.perf_counter() - t:.1f} s'}", flush=True)
        grids.append(grid)
    predicted_s = time.perf_counter() - started
    sigmas = Sigmas(args.flag_sigma, args.config_sigma, args.noise)
    seeds = list(range(args.seeds))
    work = [(g, args.strategies, seeds, sigmas, args.budget) for g in grids]
    jobs = max(1, min(args.jobs or (os.cpu_count() or 1), len(work)))
    if jobs == 1:
        results = [run_suite(w) for w in work]
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("fork")) as pool:
            results = list(pool.map(run_suite, work))
    total_s = time.perf_counter() - started

    print(f"\nrealities: flag-value σ {sigmas.flag:.0%}, config σ {sigmas.config:.0%}, measurement noise σ "
          f"{sigmas.noise:.1%}; {args.seeds} seeds; final answer at {args.budget:.0%} of the grid's GPU time\n")
    print(f"{'suite':<18} {'spearman':>8}  {'strategy':<10} {'to 2% p50':>9} {'p90':>7} {'never':>5} "
          f"{'final ok':>8} {'trials':>6}")
    out: dict[str, Any] = {"sigmas": vars(sigmas), "seeds": args.seeds, "budget": args.budget, "suites": {}}
    counted: list[str] = []
    for grid, res in zip(grids, results, strict=True):
        rho = statistics.median(res["spearman"]) if res["spearman"] else math.nan
        counts = rho <= MAX_SPEARMAN
        if counts:
            counted.append(grid["suite"])
        entry: dict[str, Any] = {"spearman": rho, "counts": counts, "strategies": {}}
        for i, strategy in enumerate(args.strategies):
            s = summarize([r for r in res["rows"] if r["strategy"] == strategy])
            entry["strategies"][strategy] = s
            head = f"{grid['suite']:<18} {rho:>8.3f}" if i == 0 else f"{'':<18} {'':>8}"
            print(f"{head}  {strategy:<10} {share(s['median']):>9} {share(s['p90']):>7} {s['never']:>5} "
                  f"{s['final_within']:>8.0%} {s['trials']:>6g}")
        out["suites"][grid["suite"]] = entry
        if not counts:
            print(f"{'':<18} (Spearman {rho:.3f} > {MAX_SPEARMAN}: not counted toward the targets)")

    print(f"\nsuites counted (Spearman ≤ {MAX_SPEARMAN}): {len(counted)} of {len(grids)}")
    rows = [r for g, res in zip(grids, results, strict=True) if g["suite"] in counted for r in res["rows"]]
    pooled = {s: summarize([r for r in rows if r["strategy"] == s]) for s in args.strategies}
    for s, v in pooled.items():
        print(f"  all counted suites, {s:<10} to 2% p50 {share(v['median'])}, p90 {share(v['p90'])}, final answer "
              f"within 2% in {v['final_within']:.0%} of {v['seeds']} runs")
    targets: list[tuple[str, bool]] = [(f"at least 5 suites counted ({len(counted)})", len(counted) >= 5)]
    if "predicted" in pooled and counted:
        p = pooled["predicted"]
        targets.append((f"predicted: median GPU time to within 2% ≤ {TARGET_SHARE:.0%} of the grid's "
                        f"({share(p['median'])})", p["median"] <= TARGET_SHARE))
        targets.append((f"predicted: final answer within 2% in ≥ {TARGET_SUCCESS:.0%} of seeds "
                        f"({p['final_within']:.0%})", p["final_within"] >= TARGET_SUCCESS))
        for name in counted:
            e = out["suites"][name]["strategies"]["predicted"]
            targets.append((f"predicted on {name}: median ≤ {TARGET_SHARE:.0%} ({share(e['median'])}) and final "
                            f"within 2% in ≥ {TARGET_SUCCESS:.0%} ({e['final_within']:.0%})",
                            e["median"] <= TARGET_SHARE and e["final_within"] >= TARGET_SUCCESS))
        if "random" in pooled:
            r = pooled["random"]
            targets.append((f"predicted beats random at equal budget: final within 2% {p['final_within']:.0%} vs "
                            f"{r['final_within']:.0%}, median to 2% {share(p['median'])} vs {share(r['median'])}",
                            p["final_within"] > r["final_within"] and p["median"] < r["median"]))
    targets.append((f"whole benchmark under 10 minutes ({total_s:.0f} s, prediction {predicted_s:.0f} s)",
                    total_s < 600))
    print()
    for text, met in targets:
        print(f"target {'met   ' if met else 'MISSED'}: {text}")
    out.update({"counted": counted, "pooled": pooled, "targets": [{"target": t, "met": m} for t, m in targets],
                "wall_s": round(total_s, 1), "predict_s": round(predicted_s, 1)})
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2, default=str))
        tmp.replace(args.out)
    return 0 if all(m for _, m in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
