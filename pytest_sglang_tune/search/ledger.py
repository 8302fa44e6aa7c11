"""The trials of a search, in one Optuna study: a journal file in the run directory (``search/<suite>.journal``)
that every xdist worker opens, so ``-n 4`` runs four trials at once and each asks the same study. Asking happens
under a file lock (one decision at a time: no two workers get the same config); telling does not need one.

``random`` and ``tpe`` are Optuna's samplers over the varying flags (categorical); a combination that is not in
the grid (a constraint excluded it, or the predictor says it cannot start) or that was measured already is told
``FAIL`` with the reason and asked again. ``halving`` and ``predicted`` decide with :mod:`.strategies` and
enqueue their pick. Each trial's ``user_attrs``: ``config_id``, ``rung``, ``fidelity``, ``gpu_s`` (expected while
running, spent when told), ``ok`` (every SLO met), and the Optuna constraint ``slo`` (1 when an SLO was missed).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from pytest_sglang_tune.search.strategies import (
    Candidate,
    Plan,
    Proposal,
    Stop,
    TrialInfo,
    Wait,
    budget_stop,
    propose,
)

PROPOSED = "proposed"   # user_attr of the trials that are real measurements (not skipped samples)
MAX_RESAMPLES = 8       # a sampler that keeps repeating measured configs gets a random unmeasured one


def journal_storage(path: Path) -> Any:
    """Optuna's journal storage in ``path``, safe across processes (xdist workers)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


class Ledger:
    """One search's trials. ``path`` None: in memory (unit tests, benchmarks)."""

    def __init__(self, plan: Plan, *, name: str, path: Path | None = None, seed: int = 0) -> None:
        import optuna
        from optuna.storages import InMemoryStorage

        optuna.logging.set_verbosity(logging.WARNING)
        self.plan = plan
        self.seed = seed
        self.rng = random.Random(seed)
        self.path = path
        storage: Any
        if path is None:
            storage = InMemoryStorage()
            self._lock: Callable[[], AbstractContextManager[Any]] = nullcontext
        else:
            from filelock import FileLock

            path.parent.mkdir(parents=True, exist_ok=True)
            storage = journal_storage(path)
            lock = FileLock(str(path) + ".ask.lock")
            self._lock = lambda: lock
        if plan.strategy == "tpe":
            sampler: Any = optuna.samplers.TPESampler(seed=seed,
                                                      n_startup_trials=min(10, max(2, len(plan.candidates) // 10)))
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        self.study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, sampler=sampler,
                                         direction="maximize" if plan.maximize else "minimize")
        flags = sorted({f for c in plan.candidates for f in c.params})
        self.distributions: dict[str, Any] = {f: optuna.distributions.CategoricalDistribution(
            sorted({c.params.get(f) for c in plan.candidates}, key=repr)) for f in flags}
        self.by_params = {self._key(c.params): c for c in plan.candidates}
        self._live: dict[int, Any] = {}  # trials this process asked and has not told yet

    @staticmethod
    def _key(params: Any) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((str(k), repr(v)) for k, v in dict(params).items()))

    # --- reading ---------------------------------------------------------------------------------------------------
    def trials(self) -> list[TrialInfo]:
        import optuna

        out = []
        for t in self.study.get_trials(deepcopy=False):
            a = t.user_attrs
            if not a.get(PROPOSED):
                continue
            done = t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
            out.append(TrialInfo(number=t.number, config_id=str(a["config_id"]), rung=int(a.get("rung", 0)),
                                 fidelity=str(a.get("fidelity", "full")), done=done,
                                 value=t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                                 ok=a.get("ok"), gpu_s=float(a.get("gpu_s", 0.0))))
        return out

    def config_of(self, number: int) -> str | None:
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number:
                return t.user_attrs.get("config_id")
        return None

    # --- asking ----------------------------------------------------------------------------------------------------
    def ask(self, *, wait_s: float = 3600.0, poll_s: float = 2.0) -> tuple[int, Proposal] | Stop:
        """The next trial (its number and what it measures), or why there is none. Waits (polling) while a
        strategy needs running trials to finish first (halving under xdist)."""
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock():
                decision = self._decide()
            if not isinstance(decision, Wait):
                return decision
            if time.monotonic() > deadline:
                return Stop(f"gave up waiting: {decision.reason}")
            time.sleep(poll_s)

    def _decide(self) -> tuple[int, Proposal] | Stop | Wait:
        trials = self.trials()
        if self.plan.strategy in ("random", "tpe"):
            if (stop := budget_stop(self.plan, trials)) is not None:
                return stop
            return self._sample({t.config_id for t in trials})
        decision = propose(self.plan, trials, self.rng)
        if not isinstance(decision, Proposal):
            return decision
        return self._start(decision)

    def _sample(self, measured: set[str]) -> tuple[int, Proposal] | Stop:
        import optuna

        open_ = [c for c in self.plan.candidates if not c.infeasible and c.config_id not in measured]
        if not open_:
            return Stop("search finished: every config measured")
        for _ in range(MAX_RESAMPLES):
            trial = self.study.ask(self.distributions)
            c = self.by_params.get(self._key(trial.params))
            why = ("not in the grid" if c is None else f"predicted infeasible: {c.infeasible}" if c.infeasible
                   else "measured already" if c.config_id in measured else None)
            if why is None and c is not None:
                return trial.number, self._mark(trial, Proposal(c.config_id, why=f"{self.plan.strategy} sample"))
            trial.set_user_attr("skipped", why)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        c = self.rng.choice(open_)  # the sampler keeps proposing measured configs: a random unmeasured one
        return self._start(Proposal(c.config_id, why=f"{self.plan.strategy}: the sampler repeated itself"))

    def start(self, config_id: str, *, why: str) -> tuple[int, Proposal]:
        """A trial of a config decided outside the strategy (``--lf`` re-measures a config that failed)."""
        with self._lock():
            return self._start(Proposal(config_id, why=why))

    def _start(self, proposal: Proposal) -> tuple[int, Proposal]:
        c = self.plan.by_id[proposal.config_id]
        self.study.enqueue_trial(dict(c.params), skip_if_exists=False)
        trial = self.study.ask(self.distributions)
        return trial.number, self._mark(trial, proposal)

    def _mark(self, trial: Any, proposal: Proposal) -> Proposal:
        self._live[trial.number] = trial
        c = self.plan.by_id[proposal.config_id]
        expected = c.cost_s * self.plan.fraction(proposal.rung) if self.plan.strategy == "halving" else c.cost_s
        for key, value in (("config_id", c.config_id), ("rung", proposal.rung), ("fidelity", proposal.fidelity),
                           ("gpu_s", expected), (PROPOSED, True), ("why", proposal.why),
                           ("predicted", c.predicted)):
            trial.set_user_attr(key, value)
        return proposal

    # --- telling ---------------------------------------------------------------------------------------------------
    def tell(self, number: int, *, value: float | None, ok: bool | None, gpu_s: float) -> None:
        """The trial's measured value at the target (None: nothing measured), whether it met every SLO, and the
        GPU seconds it really held."""
        import optuna

        trial = self._live.pop(number)
        trial.set_user_attr("gpu_s", gpu_s)
        trial.set_user_attr("ok", ok)
        trial.set_constraint("slo", 0.0 if ok else 1.0)  # feasible when ≤ 0 (TPE samples around feasible trials)
        if value is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, value)


def candidates_of(configs: Any, varying: tuple[str, ...], prediction: Any = None, *, target: Any = None,
                  suite: Any = None) -> list[Candidate]:
    """The grid as candidates: each config's varying flags, and (with a ``predict.grid.Prediction``) its
    predicted value and SLO verdict at ``target`` (a ``Point.group``-like (workload, load key)) and full cost."""
    by_cfg = {c.config.config_id: c for c in prediction.configs} if prediction is not None else {}
    out = []
    for cfg in configs:
        args = cfg.args
        params = {f.lstrip("-"): args.get(f) for f in varying}
        cp = by_cfg.get(cfg.config_id)
        predicted, ok, infeasible, cost = None, True, None, 0.0
        if cp is not None:
            infeasible, cost = cp.infeasible, cp.gpu_s
            ok = all(r.meets_slos for r in cp.results if r.measured) if not infeasible else False
            at = [r for r in cp.results if target is not None and (r.point.workload, r.point.load_key) == target]
            if at and at[0].metrics and suite is not None:
                predicted = suite.objective.score(dict(at[0].metrics))
        out.append(Candidate(cfg.config_id, params, cfg.gpus, predicted, ok, cost, infeasible))
    return out
