"""The search strategies on a table: each config's (value, SLO verdict, GPU seconds) is looked up, not measured,
so the rules of grid, random, tpe, halving and predicted, the budget and the load search are checked in
milliseconds. The same drivers run under xdist (one journal, several processes) in tests/e2e/test_search.py."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_sglang_tune.loadgen.workload import Load, MaxLoadSearch
from pytest_sglang_tune.results import Point, Result
from pytest_sglang_tune.search.budget import Budget, BudgetError, parse_budget
from pytest_sglang_tune.search.ledger import Ledger
from pytest_sglang_tune.search.maxload import bisect_max_load, summarize_max_load, summary_point, sustained
from pytest_sglang_tune.search.strategies import (
    Candidate,
    Plan,
    Proposal,
    Stop,
    TrialInfo,
    Wait,
    predicted_order,
    propose,
)
from pytest_sglang_tune.search.summary import spearman


@dataclass(frozen=True)
class Row:
    value: float
    ok: bool = True
    gpu_s: float = 100.0


def grid(n_mem: int = 3, n_chunk: int = 3, n_policy: int = 2) -> dict[str, dict[str, object]]:
    """config_id -> params of a 3-flag grid."""
    out = {}
    for mem, chunk, pol in itertools.product([0.7, 0.8, 0.9][:n_mem], [512, 2048, 8192][:n_chunk],
                                             ["lpm", "fcfs"][:n_policy]):
        out[f"m{mem}-c{chunk}-{pol}"] = {"mem-fraction-static": mem, "chunked-prefill-size": chunk,
                                          "schedule-policy": pol}
    return out


def table_for(params: dict[str, dict[str, object]], seed: int = 0) -> dict[str, Row]:
    rng = random.Random(seed)
    return {cid: Row(100.0 + 50 * float(p["mem-fraction-static"]) * (p["chunked-prefill-size"] == 2048)  # type: ignore[arg-type]
                     + rng.uniform(0, 5)) for cid, p in params.items()}


def candidates(params: dict[str, dict[str, object]], table: dict[str, Row], *, noise: float = 0.0,
               seed: int = 0, infeasible: set[str] = frozenset()) -> list[Candidate]:  # type: ignore[assignment]
    rng = random.Random(seed)
    return [Candidate(cid, p, 1, table[cid].value * math.exp(rng.gauss(0, noise)) if noise else table[cid].value,
                      table[cid].ok, table[cid].gpu_s, "needs 80 GB" if cid in infeasible else None)
            for cid, p in params.items()]


def run_plan(plan: Plan, table: dict[str, Row], *, seed: int = 0, max_steps: int = 500) -> tuple[list[TrialInfo], str]:
    """Drive ``propose`` to the end: each proposal is measured (looked up) at once."""
    trials: list[TrialInfo] = []
    rng = random.Random(seed)
    for _ in range(max_steps):
        d = propose(plan, trials, rng)
        if isinstance(d, Stop):
            return trials, d.reason
        assert isinstance(d, Proposal), d
        row = table[d.config_id]
        share = plan.fraction(d.rung) if plan.strategy == "halving" else 1.0
        trials.append(TrialInfo(len(trials), d.config_id, d.rung, d.fidelity, True, row.value, row.ok,
                                row.gpu_s * share))
    raise AssertionError("the strategy never stopped")


def run_ledger(ledger: Ledger, table: dict[str, Row], until: str | None = None) -> tuple[list[str], str]:
    order: list[str] = []
    while until not in order:
        d = ledger.ask(wait_s=0)
        if isinstance(d, Stop):
            return order, d.reason
        number, proposal = d
        row = table[proposal.config_id]
        order.append(proposal.config_id)
        ledger.tell(number, value=row.value, ok=row.ok, gpu_s=row.gpu_s)
    return order, f"found {until}"


# --- budgets ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "trials", "gpu_s", "share"), [
    ("10", 10, None, None), ("2.5gpu-h", None, 9000.0, None), ("2.5 GPU-h", None, 9000.0, None),
    ("25%", None, None, 0.25), (None, None, None, None)])
def test_budget_forms(text: str | None, trials: int | None, gpu_s: float | None, share: float | None) -> None:
    b = parse_budget(text)
    assert (b.trials, b.gpu_s, b.share) == (trials, gpu_s, share)


@pytest.mark.parametrize("text", ["0", "ten", "-1gpu-h", "0%", "150%", "3 trials"])
def test_bad_budgets_say_what_is_allowed(text: str) -> None:
    with pytest.raises(BudgetError, match=r"--sglang-budget=.*(N \(trials|1 trial|GPU-hours|share)"):
        parse_budget(text)


def test_a_share_budget_needs_the_predicted_grid_cost() -> None:
    with pytest.raises(BudgetError, match="predicted cost"):
        Budget("25%", share=0.25).gpu_limit(None)
    assert Budget("25%", share=0.25).gpu_limit(4000.0) == 1000.0


# --- grid ---------------------------------------------------------------------------------------------------------

def test_grid_measures_every_feasible_config_in_order() -> None:
    params = grid()
    table = table_for(params)
    plan = Plan("grid", candidates(params, table, infeasible={"m0.9-c8192-lpm"}))
    trials, reason = run_plan(plan, table)
    assert [t.config_id for t in trials] == [c for c in params if c != "m0.9-c8192-lpm"]
    assert "every config measured" in reason


def test_a_trial_budget_and_a_gpu_budget_stop_the_search() -> None:
    params = grid()
    table = table_for(params)
    trials, reason = run_plan(Plan("grid", candidates(params, table), budget=parse_budget("4")), table)
    assert len(trials) == 4 and reason == "budget spent: 4 of 4 trials"
    gpu = Plan("grid", candidates(params, table), budget=parse_budget(f"{350 / 3600}gpu-h"))
    trials, reason = run_plan(gpu, table)
    assert len(trials) == 4 and reason.startswith("budget spent: 0.111 of 0.0972 GPU-h")
    share = Plan("grid", candidates(params, table), budget=parse_budget("25%"), grid_gpu_s=1800.0)
    trials, _ = run_plan(share, table)
    assert sum(t.gpu_s for t in trials[:-1]) < 450.0 <= sum(t.gpu_s for t in trials)


# --- predicted ----------------------------------------------------------------------------------------------------

def test_predicted_measures_one_config_per_flag_value_first() -> None:
    params = grid()
    table = table_for(params)
    plan = Plan("predicted", candidates(params, table, noise=0.1, seed=3))
    order = [c.config_id for c in predicted_order(plan)]
    trials, _ = run_plan(plan, table)
    first = [t.config_id for t in trials]
    values = {(f, repr(v)) for p in params.values() for f, v in p.items()}
    covered: set[tuple[str, str]] = set()  # each measurement before full coverage brings a value not measured yet
    for n, cid in enumerate(first):
        new = {(f, repr(v)) for f, v in params[cid].items()} - covered
        if covered == values:
            break
        assert new, f"trial {n} ({cid}) measured no new flag value before every value was covered"
        # and it was the best-predicted config that brings one
        assert cid == next(c for c in order if c not in first[:n]
                           and {(f, repr(v)) for f, v in params[c].items()} - covered)
        covered |= new
    assert covered == values and first[0] == order[0]


def test_predicted_stops_once_the_measured_best_beats_every_remaining_prediction() -> None:
    params = grid()
    table = table_for(params)
    plan = Plan("predicted", candidates(params, table))  # a perfect predictor
    trials, reason = run_plan(plan, table)
    best = max(table, key=lambda c: table[c].value)
    assert best in [t.config_id for t in trials]
    assert len(trials) < len(params) and "beats every remaining prediction" in reason


def test_a_wrongly_predicted_region_is_still_measured() -> None:
    """Every chunk-2048 config (the region of the best) is predicted 40 % too low: the diversity rule still
    measures one of them, and the search ends within 5 % of the true best."""
    params = grid()
    table = table_for(params)
    truth = max(r.value for r in table.values())
    cands = [Candidate(c.config_id, c.params, 1, c.predicted * (0.6 if c.params["chunked-prefill-size"] == 2048
                                                                else 1.0), True, 100.0)  # type: ignore[operator]
             for c in candidates(params, table)]
    trials, _ = run_plan(Plan("predicted", cands), table)
    assert any(params[t.config_id]["chunked-prefill-size"] == 2048 for t in trials)
    assert max(t.value for t in trials if t.value) >= truth * 0.95
    assert len(trials) < len(params)


def test_predicted_puts_its_slo_verdicts_to_the_test_before_it_stops() -> None:
    """The true best is predicted to miss an SLO (it meets it in reality): before stopping, the best config
    predicted to miss is measured; it meets its SLOs, so the predicted misses are weighed like the rest."""
    params = grid()
    table = table_for(params)
    best = max(table, key=lambda c: table[c].value)
    cands = [Candidate(c.config_id, c.params, 1, c.predicted, c.config_id != best, 100.0)
             for c in candidates(params, table)]
    trials, reason = run_plan(Plan("predicted", cands), table)
    assert best in [t.config_id for t in trials]
    assert len(trials) < len(params) and "beats every remaining prediction" in reason


def test_predicted_never_proposes_a_config_predicted_not_to_start() -> None:
    params = grid()
    table = table_for(params)
    bad = {"m0.9-c2048-lpm", "m0.9-c2048-fcfs"}
    trials, _ = run_plan(Plan("predicted", candidates(params, table, infeasible=bad)), table)
    assert not bad & {t.config_id for t in trials}


# --- halving ------------------------------------------------------------------------------------------------------

def test_halving_screens_at_low_fidelity_and_promotes_the_top_third() -> None:
    params = grid()  # 18 configs: 3 rungs (1/9, 1/3, all of the requests)
    table = table_for(params)
    plan = Plan("halving", candidates(params, table))
    assert plan.rungs == 3 and plan.fraction(0) == pytest.approx(1 / 9) and plan.fraction(2) == 1.0
    trials, reason = run_plan(plan, table)
    assert {t.config_id for t in trials if t.rung == 0} == set(params)
    assert all(t.fidelity == "low" for t in trials if t.rung < 2)
    top = [t for t in trials if t.rung == 2]
    assert top and all(t.fidelity == "full" for t in top)
    assert max(table, key=lambda c: table[c].value) in {t.config_id for t in top}
    assert len(trials) <= plan.max_trials() and "none left to promote" in reason
    assert sum(t.gpu_s for t in trials) < sum(r.gpu_s for r in table.values()) * 0.6


def test_halving_waits_for_running_trials_before_it_can_promote() -> None:
    params = grid(2, 2, 1)
    table = table_for(params)
    plan = Plan("halving", candidates(params, table))
    running = [TrialInfo(i, cid, 0, "low", False) for i, cid in enumerate(params)]
    assert isinstance(propose(plan, running, random.Random(0)), Wait)


def test_slo_misses_are_infeasible_not_scored() -> None:
    params = grid(2, 2, 1)
    table = {cid: Row(1000.0 if n == 0 else 100.0 + n, ok=n != 0) for n, cid in enumerate(params)}
    trials, _ = run_plan(Plan("halving", candidates(params, table)), table)
    top = [t for t in trials if t.fidelity == "full"]
    assert next(iter(params)) not in {t.config_id for t in top}


# --- random and tpe through the ledger (Optuna) ---------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_samplers_never_repeat_or_propose_infeasible_configs(strategy: str) -> None:
    params = grid()
    table = table_for(params)
    bad = {"m0.7-c512-lpm"}
    ledger = Ledger(Plan(strategy, candidates(params, table, infeasible=bad)), name="t", seed=1)
    order, reason = run_ledger(ledger, table)
    assert sorted(order) == sorted(set(params) - bad) and "every config measured" in reason


def test_tpe_finds_the_best_with_fewer_trials_than_the_grid_on_average() -> None:
    params = {f"c{i}-{j}": {"a": i, "b": j} for i in range(8) for j in range(8)}
    table = {cid: Row(100.0 - (p["a"] - 5) ** 2 - (p["b"] - 2) ** 2) for cid, p in params.items()}
    best = max(table, key=lambda c: table[c].value)
    spent = []
    for seed in range(4):
        order, _ = run_ledger(Ledger(Plan("tpe", candidates(params, table)), name=f"s{seed}", seed=seed), table,
                              until=best)
        spent.append(order.index(best) + 1)
    assert sorted(spent)[1] < len(params) / 2  # median-ish: better than the grid's expected half


def test_a_journal_shared_by_two_ledgers_never_gives_the_same_config_twice(tmp_path: Path) -> None:
    params = grid()
    table = table_for(params)
    path = tmp_path / "search" / "s.journal"
    a = Ledger(Plan("random", candidates(params, table)), name="s", path=path, seed=0)
    b = Ledger(Plan("random", candidates(params, table)), name="s", path=path, seed=1)
    got = []
    for ledger in itertools.islice(itertools.cycle([a, b]), 10):
        d = ledger.ask(wait_s=0)
        assert not isinstance(d, Stop)
        got.append(d[1].config_id)  # asked and still running: the other must not get it
    assert len(set(got)) == 10
    c = Ledger(Plan("random", candidates(params, table), budget=parse_budget("10")), name="s", path=path)
    assert isinstance(c.ask(wait_s=0), Stop)  # ten trials started: a third process sees the budget spent


# --- the load search --------------------------------------------------------------------------------------------

def probe_table(threshold: float, kind: str = "concurrency"):  # type: ignore[no-untyped-def]
    seen: list[float] = []

    def probe(load: Load) -> Result:
        level = float(load.concurrency if kind == "concurrency" else load.request_rate)  # type: ignore[arg-type]
        seen.append(level)
        point = Point("s", "chat", "h", load.concurrency, load.request_rate, "cfg")
        ok = level <= threshold
        return Result(point=point, status="passed", slo_pass=ok, metrics={"completed": 8, "goodput": level},
                      slo_results={"ttft_ms.p99 <= 500": ok})
    return probe, seen


@pytest.mark.parametrize(("threshold", "found"), [(23, 23), (1, 1), (256, 256), (100, 100), (2, 2)])
def test_bisection_finds_the_highest_concurrency_within_the_slos(threshold: int, found: int) -> None:
    probe, seen = probe_table(threshold)
    probes, best = bisect_max_load(MaxLoadSearch("concurrency", 1, 256, 0.1), probe)
    assert best is not None and best.point.concurrency >= found * 0.9 and best.point.concurrency <= found
    assert len(probes) == len(seen) <= 2 + math.ceil(math.log2(math.log(256) / math.log(1.1))) + 1


def test_bisection_on_rate_stops_within_tolerance() -> None:
    probe, seen = probe_table(13.7, "request_rate")
    _probes, best = bisect_max_load(MaxLoadSearch("request_rate", 1, 64, 0.05), probe)
    assert best is not None and 13.7 / 1.05 <= best.point.request_rate <= 13.7
    failing = min(s for s in seen if s > 13.7)
    assert failing <= best.point.request_rate * 1.05 + 1e-9


def test_nothing_sustained_gives_max_load_zero_and_an_slo_miss() -> None:
    probe, seen = probe_table(0.5)
    search = MaxLoadSearch("concurrency", 1, 64)
    probes, best = bisect_max_load(search, probe)
    assert best is None and seen == [1.0]
    base = probes[0].with_(point=summary_point(probes[0]), status=None)
    summary = summarize_max_load(search, base, probes, best)
    assert summary.metrics["max_load"] == 0.0 and summary.slo_pass is False
    assert summary.point.load == {"concurrency": None, "request_rate": None, "search": "max_within_slo"}
    assert summary.max_load["value"] is None and "already missed" in summary.max_load["summary"]  # type: ignore[index]


def test_the_summary_carries_the_best_probe_and_counts_gpu_time_once() -> None:
    probe, _ = probe_table(40)
    search = MaxLoadSearch("concurrency", 1, 64)
    probes, best = bisect_max_load(search, probe)
    probes = [p.with_(cost=p.cost.__class__(gpu_s=10.0)) for p in probes]
    base = probes[0].with_(point=summary_point(probes[0]))
    summary = summarize_max_load(search, base, probes, best)
    assert summary.metrics["max_load"] == best.point.concurrency and summary.slo_pass  # type: ignore[union-attr]
    assert summary.cost.gpu_s is None and summary.max_load["gpu_s"] == 10.0 * len(probes)  # type: ignore[index]
    assert summary.measured and not any(p.with_(fidelity="probe").measured for p in probes)
    assert [sustained(p) for p in probes] == [p["meets_slos"] for p in summary.max_load["probes"]]  # type: ignore[index]


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


# --- which sim GPU a real machine's predictions stand for -------------------------------------------------------

@pytest.mark.parametrize(("nvml_name", "sim"), [("NVIDIA H100 80GB HBM3", "h100_sxm"), ("NVIDIA H200", "h200_sxm"),
                                                 ("NVIDIA A100-SXM4-80GB", "a100_sxm"), ("NVIDIA L40S", "l40s")])
def test_a_detected_gpu_maps_to_the_sim_gpu_it_is(nvml_name: str, sim: str) -> None:
    from pytest_sglang_tune.search.setup import sim_gpu_for

    assert sim_gpu_for([nvml_name]) == sim


def test_an_unknown_gpu_is_an_error_naming_the_known_ones() -> None:
    from pytest_sglang_tune.search.setup import sim_gpu_for

    with pytest.raises(ValueError, match=r"NVIDIA GeForce RTX 4090: not a GPU the sim knows; set "
                                         r"--sglang-predict-gpu to one of: .*h100_sxm.*l40s"):
        sim_gpu_for(["NVIDIA GeForce RTX 4090"])


# --- which SLO misses end a config's load ladder ----------------------------------------------------------------

@pytest.mark.parametrize(("slo", "ends"), [("ttft_ms.p99 <= 500", True), ("itl_ms.p95 < 30", True),
                                            ("e2e_ms.p90 <= 4000", True), ("error_rate <= 0.01", True),
                                            ("goodput >= 5", False), ("output_throughput >= 1000", False)])
def test_only_slos_that_worsen_with_load_end_a_ladder(slo: str, ends: bool) -> None:
    from pytest_sglang_tune.grammar import parse_slo
    from pytest_sglang_tune.itemkit import missed_worsening

    s = parse_slo(slo)
    missed = Result(point=Point("s", "w", "h", 16, None, "cfg"), status="passed", slo_pass=False,
                    slo_results={slo: False})
    assert bool(missed_worsening(missed, (s,))) is ends
