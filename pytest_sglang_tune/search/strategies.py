"""What to measure next (pure): the rules of ``halving`` and ``predicted``, the budget check, and the shared
vocabulary of candidates and trials. ``random`` and ``tpe`` draw from an Optuna sampler (:mod:`.ledger`).

A **trial** measures one config: every load of every workload, loads ascending. Its **value** is the objective
at the suite's ``search.target`` (``workload@load``; default the first workload's last load); a config that
misses an SLO at any measured load is *not feasible* — an Optuna constraint, never a fake score.

``halving`` is asynchronous successive halving (ASHA): ``rungs`` fidelities, each ``eta`` times the requests of
the one below (the top one is the full measurement); a config is promoted when it is in the top ``1/eta`` of the
configs completed at its rung; otherwise a new config starts at rung 0. Low rungs are ``fidelity: low`` and never
enter the ranking, diff matching or resume.

``predicted`` spends the budget on the predicted best first, with a diversity rule: before anything else, every
value of every varying flag gets its best-predicted config measured (so one wrong prediction cannot hide a whole
region). Measurements then re-rank what is left: predictions are scaled by the median measured/predicted ratio
and, where the measurements say the predictor is wrong about one value of a flag, by that value's own ratio (the
log ratios fitted as a sum of one term per flag value, each shrunk toward 0 until a few configs with that value
are measured: a simulator that misjudges a flag misjudges every config that sets it). The search stops when the
measured best beats every remaining (scaled) prediction by more than ``STOP_Z`` (2) times the predictor's
measured error (the median absolute log ratio of each measured config as the others' scaling predicts it, at
least ``MIN_ERROR``; for a config whose flag values few measured configs share, the uncorrected error times
√Σ 1/(1 + configs measured with each value), when that is more). Predicted SLO misses come after predicted passes
and do not hold the search, until a measurement contradicts a predicted SLO verdict: from then on they are ranked
and weighed like the others. Before it stops on that trust, the search measures the best config predicted to miss
(once), so the SLO verdicts are never trusted untested.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_sglang_tune.search.budget import Budget

STRATEGIES = ("grid", "random", "tpe", "halving", "predicted")
MIN_ERROR = 0.05           # the predictor's error is never assumed smaller than this
MIN_MEASURED = 3           # predicted: never stop before this many full measurements
STOP_Z = 2.0               # predicted stops when the measured best beats every hope by this many predictor errors
                           # (the error is a median |log ratio| ≈ 0.67 σ: 2 of them ≈ 1.35 σ, ~91 % one-sided)
ETA = 3


@dataclass(frozen=True)
class Candidate:
    """A config of the grid, with what the predictor says of it (None/empty without a prediction)."""

    config_id: str
    params: Mapping[str, Any]          # the varying flags' values
    gpus: int = 1
    predicted: float | None = None     # predicted objective value at the target
    predicted_ok: bool = True          # predicted to meet every SLO
    cost_s: float = 0.0                # predicted GPU seconds of a full trial
    infeasible: str | None = None      # predicted not to start (memory, tp): never proposed


@dataclass(frozen=True)
class TrialInfo:
    """What the ledger knows about one trial."""

    number: int
    config_id: str
    rung: int = 0
    fidelity: str = "full"
    done: bool = False
    value: float | None = None
    ok: bool | None = None            # met every SLO at every measured load
    gpu_s: float = 0.0                # spent (done) or expected (running)


@dataclass(frozen=True)
class Proposal:
    config_id: str
    rung: int = 0
    fidelity: str = "full"
    why: str = ""


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class Wait:
    reason: str


@dataclass
class Plan:
    """A search's fixed settings."""

    strategy: str
    candidates: Sequence[Candidate]
    maximize: bool = True
    budget: Budget = field(default_factory=lambda: Budget("unlimited"))
    grid_gpu_s: float | None = None
    eta: int = ETA
    rungs: int = 1

    def __post_init__(self) -> None:
        if self.strategy == "halving" and self.rungs == 1:
            n = sum(1 for c in self.candidates if not c.infeasible)
            self.rungs = max(1, min(3, math.ceil(math.log(max(n, 1), self.eta)) if n > 1 else 1))

    @property
    def by_id(self) -> dict[str, Candidate]:
        return {c.config_id: c for c in self.candidates}

    def goodness(self, value: float | None) -> float:
        if value is None:
            return -math.inf
        return value if self.maximize else -value

    def fraction(self, rung: int) -> float:
        """Share of the workload's requests measured at ``rung`` (1 at the top rung)."""
        return float(self.eta) ** (rung - (self.rungs - 1))

    def max_trials(self) -> int:
        n = sum(1 for c in self.candidates if not c.infeasible)
        if self.strategy == "halving":
            return sum(max(1, math.ceil(n / self.eta ** r)) for r in range(self.rungs))
        return n


def budget_stop(plan: Plan, trials: Sequence[TrialInfo], next_cost_s: float = 0.0) -> Stop | None:
    """The budget is spent: trials started, or GPU seconds spent and committed to running trials."""
    b = plan.budget
    if b.trials is not None and len(trials) >= b.trials:
        return Stop(f"budget spent: {len(trials)} of {b.trials} trials")
    limit = b.gpu_limit(plan.grid_gpu_s)
    if limit is not None:
        used = sum(t.gpu_s for t in trials)
        if used >= limit:
            return Stop(f"budget spent: {used / 3600:.3g} of {limit / 3600:.3g} GPU-h")
    return None


def score(plan: Plan, t: TrialInfo) -> float:
    """A completed trial's worth: its goodness when it met every SLO, else −∞ (infeasible)."""
    return plan.goodness(t.value) if t.ok else -math.inf


# --- halving (ASHA) ------------------------------------------------------------------------------------------------

def propose_halving(plan: Plan, trials: Sequence[TrialInfo], rng: random.Random) -> Proposal | Stop | Wait:
    top = plan.rungs - 1
    promoted = {(t.config_id, t.rung) for t in trials}
    for rung in range(top - 1, -1, -1):
        done = [t for t in trials if t.rung == rung and t.done]
        k = len(done) // plan.eta
        if k < 1:
            continue
        best = sorted(done, key=lambda t: score(plan, t), reverse=True)[:k]
        for t in best:
            if score(plan, t) > -math.inf and (t.config_id, rung + 1) not in promoted:
                return Proposal(t.config_id, rung + 1, "full" if rung + 1 == top else "low",
                                f"promoted from rung {rung} (top {k} of {len(done)})")
    started = {t.config_id for t in trials}
    fresh = [c for c in plan.candidates if not c.infeasible and c.config_id not in started]
    if fresh:
        c = rng.choice(fresh)
        return Proposal(c.config_id, 0, "full" if top == 0 else "low", "a new config at rung 0")
    if any(not t.done for t in trials):
        return Wait("waiting for running trials before promoting")
    return Stop("search finished: every config measured at rung 0 and none left to promote")


# --- predicted -----------------------------------------------------------------------------------------------------

def predictor_error(plan: Plan, trials: Sequence[TrialInfo]) -> tuple[float, float]:
    """(median measured/predicted ratio, median |log ratio|) over completed full trials; (1, ∞) before any."""
    logs = [x for _, x in _log_ratios(plan, trials)]
    if not logs:
        return 1.0, math.inf
    return math.exp(statistics.median(logs)), max(MIN_ERROR, statistics.median(abs(x) for x in logs))


def _log_ratios(plan: Plan, trials: Sequence[TrialInfo]) -> list[tuple[Candidate, float]]:
    by_id = plan.by_id
    return [(by_id[t.config_id], math.log(t.value / p)) for t in trials
            if t.done and t.fidelity == "full" and t.value and t.value > 0
            and (p := by_id[t.config_id].predicted) and p > 0]


SHRINK = 1.0    # a flag value's own ratio counts as much as this many measurements saying "no correction"
SWEEPS = 8


def _fit(pairs: Sequence[tuple[Sequence[tuple[str, str]], float]]) -> tuple[float, dict[tuple[str, str], float]]:
    """Backfit log ratio ≈ base + Σ term[flag value] (each term shrunk by ``SHRINK``)."""
    base = statistics.median(x for _, x in pairs)
    terms: dict[tuple[str, str], float] = {k: 0.0 for ks, _ in pairs for k in ks}
    flags = sorted({f for f, _ in terms})
    for _ in range(SWEEPS):
        for flag in flags:
            sums: dict[tuple[str, str], float] = {}
            counts: dict[tuple[str, str], int] = {}
            for ks, x in pairs:
                mine = next(k for k in ks if k[0] == flag)
                sums[mine] = sums.get(mine, 0.0) + x - base - sum(terms[k] for k in ks if k[0] != flag)
                counts[mine] = counts.get(mine, 0) + 1
            for k in sums:
                terms[k] = sums[k] / (counts[k] + SHRINK)
    return base, terms


def flag_corrections(plan: Plan, trials: Sequence[TrialInfo]) -> tuple[float, dict[tuple[str, str], float], float]:
    """The predictor's measured error, per flag value: (global log ratio, {(flag, repr(value)): log ratio}, error;
    error ∞ before any trial). The error is out of sample, so it also counts what the corrections do not know yet:
    the median |log ratio| of each measured config predicted from the others' fit (at least ``MIN_ERROR``)."""
    pairs = [([(f, repr(v)) for f, v in sorted(c.params.items())], x) for c, x in _log_ratios(plan, trials)]
    if not pairs:
        return 0.0, {}, math.inf
    base, terms = _fit(pairs)
    if len(pairs) < 2:
        return base, terms, math.inf
    held_out = []
    for i, (ks, x) in enumerate(pairs):
        b, t = _fit(pairs[:i] + pairs[i + 1:])
        held_out.append(abs(x - b - sum(t.get(k, 0.0) for k in ks)))
    return base, terms, max(MIN_ERROR, statistics.median(held_out))


def predicted_order(plan: Plan) -> list[Candidate]:
    """Diversity picks first (the best-predicted config for every value of every varying flag), then the rest,
    best predicted first; predicted SLO misses after predicted passes; predicted infeasible never."""
    pool = [c for c in plan.candidates if not c.infeasible]
    pool.sort(key=lambda c: (not c.predicted_ok, -plan.goodness(c.predicted)))
    picks: list[Candidate] = []
    flags = sorted({f for c in pool for f in c.params})
    for flag in flags:
        for value in sorted({repr(c.params.get(flag)) for c in pool}):
            best = next(c for c in pool if repr(c.params.get(flag)) == value)
            if best not in picks:
                picks.append(best)
    picks.sort(key=lambda c: pool.index(c))
    return picks + [c for c in pool if c not in picks]


def propose_predicted(plan: Plan, trials: Sequence[TrialInfo]) -> Proposal | Stop:
    order = predicted_order(plan)
    started = {t.config_id for t in trials}
    remaining = [c for c in order if c.config_id not in started]
    if not remaining:
        return Stop("search finished: every feasible config measured")
    flags = sorted({f for c in order for f in c.params})
    covered = {(f, repr(c.params.get(f))) for c in order if c.config_id in started for f in flags}
    for c in remaining:  # diversity first: a flag value nothing measured yet has
        if any((f, repr(c.params.get(f))) not in covered for f in flags):
            return Proposal(c.config_id, why="diversity: a flag value not measured yet")
    base, terms, err = flag_corrections(plan, trials)
    ratio = math.exp(base)
    done = [t for t in trials if t.done and t.fidelity == "full"]
    best = max((score(plan, t) for t in done), default=-math.inf)

    def hoped(c: Candidate) -> float:
        if c.predicted is None:
            return -math.inf
        return plan.goodness(c.predicted * math.exp(base + sum(terms.get((f, repr(v)), 0.0)
                                                               for f, v in c.params.items())))

    by_id = plan.by_id
    # the SLO verdicts are predictions too: once a measurement contradicts one, predicted misses are no longer
    # put last nor left out of the stop rule
    trust_slo = all(bool(t.ok) == by_id[t.config_id].predicted_ok for t in done if t.ok is not None)
    remaining.sort(key=lambda c: (trust_slo and not c.predicted_ok, -hoped(c)))
    raw = predictor_error(plan, trials)[1]
    seen: dict[tuple[str, str], int] = {}
    for t in done:
        for f, v in by_id[t.config_id].params.items():
            seen[(f, repr(v))] = seen.get((f, repr(v)), 0) + 1

    def doubt(c: Candidate) -> float:
        """The error of a config's scaled prediction: the held-out error, or more while its flag values are
        measured on few configs (the uncorrected error shrinking as 1/√(configs measured with the value))."""
        few = math.sqrt(sum(1.0 / (1 + seen.get((f, repr(v)), 0)) for f, v in c.params.items()))
        return max(err, raw * few)

    if len(done) >= MIN_MEASURED and best > -math.inf and math.isfinite(err):
        hope = max((hoped(c) + abs(hoped(c)) * STOP_Z * doubt(c) for c in remaining
                    if c.predicted_ok or not trust_slo),
                   default=-math.inf)
        if best > hope:
            checked = any(not by_id[t.config_id].predicted_ok for t in done)
            misses = [c for c in remaining if not c.predicted_ok and c.predicted is not None]
            if trust_slo and not checked and misses:  # the predicted SLO misses were never put to the test
                check = max(misses, key=hoped)
                return Proposal(check.config_id, why="checking the predictor's SLO verdicts before trusting them: "
                                                     "the best config predicted to miss an SLO")
            return Stop(f"search finished: the measured best beats every remaining prediction by more than "
                        f"{STOP_Z:g}× the predictor's error ({err:.1%})")
    return Proposal(remaining[0].config_id, why=f"predicted best of the rest (predictions scaled ×{ratio:.3g}, "
                    f"{sum(1 for x in terms.values() if abs(x) >= MIN_ERROR)} flag value(s) corrected)")


def propose(plan: Plan, trials: Sequence[TrialInfo], rng: random.Random) -> Proposal | Stop | Wait:
    """The next trial of ``halving``, ``predicted`` or ``grid`` (in order), after the budget check."""
    if (stop := budget_stop(plan, trials)) is not None:
        return stop
    if plan.strategy == "halving":
        return propose_halving(plan, trials, rng)
    if plan.strategy == "predicted":
        return propose_predicted(plan, trials)
    started = {t.config_id for t in trials}
    for c in plan.candidates:
        if not c.infeasible and c.config_id not in started:
            return Proposal(c.config_id, why="next in the grid")
    return Stop("search finished: every config measured")
