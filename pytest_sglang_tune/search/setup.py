"""A suite's search, set up once per pytest process: its candidates (with the sim's prediction when the strategy
or the budget needs one), its plan, where its ledger lives, and the point it scores configs at.

Under xdist every worker collects: the first to get here predicts and writes ``<run dir>/search/<suite>.plan.json``
(under a file lock); the others, and the controller at the end, read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_sglang_tune.results import LoadKey, load_key
from pytest_sglang_tune.search import SEARCH_DIR
from pytest_sglang_tune.search.budget import Budget
from pytest_sglang_tune.search.ledger import Ledger
from pytest_sglang_tune.search.strategies import Candidate, Plan
from pytest_sglang_tune.space import TuneConfig
from pytest_sglang_tune.suite import Suite


@dataclass
class SearchSetup:
    suite: Suite
    plan: Plan
    configs: dict[str, TuneConfig]
    table: Any
    target: tuple[str, LoadKey]
    target_label: str
    directory: Path
    seed: int = 0
    predicted_gpu: str | None = None
    _ledger: Ledger | None = field(default=None, repr=False)

    @property
    def ledger_path(self) -> Path:
        return journal_file(self.directory, self.suite)

    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.plan, name=self.suite.name, path=self.ledger_path, seed=self.seed)
        return self._ledger


def target_of(suite: Suite) -> tuple[tuple[str, LoadKey], str]:
    """The search target as a (workload, load key) group and its label (``chat@c64``)."""
    name, label = suite.search_target or (suite.workloads[0].name, suite.workloads[0].loads[-1].label())
    wl = next(w for w in suite.workloads if w.name == name)
    if wl.max_load is not None:  # the load search's summary (label ``max``)
        from pytest_sglang_tune.search.maxload import SEARCH

        return (name, load_key({"search": SEARCH})), f"{name}@max"
    load = next(ld for ld in wl.loads if ld.label() == label)
    return (name, load_key(load.to_dict())), f"{name}@{label}"


def needs_prediction(strategy: str, budget: Budget) -> bool:
    """Every search predicts its grid: ``predicted`` and ``P%`` budgets need it, and every report says what the
    whole grid would have cost."""
    return strategy != "grid" or budget.share is not None


def plan_file(directory: Path, suite: Suite) -> Path:
    return directory / f"{suite.name}.plan.json"


def journal_file(directory: Path, suite: Suite) -> Path:
    return directory / f"{suite.name}.journal"


def build_setup(suite: Suite, configs: list[TuneConfig], table: Any, varying: tuple[str, ...], *, strategy: str,
                budget: Budget, run_dir: Path, capacity: int | None, predict_gpu: str | None,
                seed: int = 0, resume_dir: Path | None = None) -> SearchSetup:
    """The search of ``suite`` (predicting its grid on the first call of the run, reading it after). With
    ``resume_dir`` (``--sglang-resume``) an earlier run's search of the same suite continues: its plan and study
    are copied into this run (its trials count against the budget and are not measured again)."""
    from filelock import FileLock

    directory = run_dir / SEARCH_DIR
    directory.mkdir(parents=True, exist_ok=True)
    target, label = target_of(suite)
    path = plan_file(directory, suite)
    with FileLock(str(path) + ".lock"):
        if not path.is_file() and resume_dir is not None:
            continue_search(resume_dir, directory, suite, strategy, configs)
        if path.is_file():
            data = json.loads(path.read_text())
        else:
            data = _plan_data(suite, configs, table, varying, target, strategy, budget, capacity, predict_gpu)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
    candidates = [Candidate(c["config_id"], c["params"], c["gpus"], c["predicted"], c["predicted_ok"], c["cost_s"],
                            c["infeasible"]) for c in data["candidates"]]
    maximize = suite.objective.direction == "maximize"
    plan = Plan(strategy, candidates, maximize, budget, data["grid_gpu_s"])
    return SearchSetup(suite, plan, {c.config_id: c for c in configs}, table, target, label, directory, seed,
                       data.get("gpu"))


def continue_search(resume_dir: Path, directory: Path, suite: Suite, strategy: str,
                    configs: list[TuneConfig]) -> bool:
    """Copy an earlier run's search of ``suite`` (plan and study) into this run's ``directory``; trials it left
    running (the run was interrupted) are closed as failed and their configs may be proposed again. False when
    that run searched nothing for this suite; a ``UsageError`` when its search cannot continue here."""
    import shutil

    import pytest

    old = resume_dir / SEARCH_DIR
    old_plan, old_journal = plan_file(old, suite), journal_file(old, suite)
    if not old_plan.is_file():
        return False
    data = json.loads(old_plan.read_text())
    where = f"--sglang-resume={resume_dir}"
    if data.get("strategy") != strategy:
        raise pytest.UsageError(f"{where}: that run searched {suite.name} with --sglang-search={data.get('strategy')}"
                                f", this one asks for {strategy}; resume with the same strategy or start afresh")
    if {c["config_id"] for c in data["candidates"]} != {c.config_id for c in configs}:
        raise pytest.UsageError(f"{where}: the grid of {suite.name} changed since that run (its configs differ), so "
                                "its search cannot continue; start a new search without --sglang-resume")
    tmp = plan_file(directory, suite).with_suffix(".tmp")
    shutil.copyfile(old_plan, tmp)
    if old_journal.is_file():
        shutil.copyfile(old_journal, directory / old_journal.name)
        close_interrupted(directory / old_journal.name, suite.name)
    tmp.replace(plan_file(directory, suite))
    return True


def close_interrupted(journal: Path, name: str) -> int:
    """Trials an interrupted run left running: told ``FAIL`` and no longer counted as proposed (their config is
    measured again); returns how many."""
    import optuna

    from pytest_sglang_tune.search.ledger import PROPOSED, journal_storage

    storage = journal_storage(journal)
    study = optuna.load_study(study_name=name, storage=storage)
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        storage.set_trial_user_attr(t._trial_id, PROPOSED, False)
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def _plan_data(suite: Suite, configs: list[TuneConfig], table: Any, varying: tuple[str, ...],
               target: tuple[str, LoadKey], strategy: str, budget: Budget, capacity: int | None,
               predict_gpu: str | None) -> dict[str, Any]:
    from pytest_sglang_tune.search.ledger import candidates_of

    prediction = None
    if needs_prediction(strategy, budget):
        from pytest_sglang_tune.predict.grid import predict_suite

        prediction = predict_suite(suite, gpu=predict_gpu, table=table, configs=configs)
    candidates = candidates_of(configs, varying, prediction, target=target, suite=suite)
    rows = []
    for c in candidates:
        infeasible = c.infeasible
        if capacity is not None and c.gpus > capacity:
            infeasible = f"needs {c.gpus} GPU(s), {capacity} available"
        rows.append({"config_id": c.config_id, "params": dict(c.params), "gpus": c.gpus, "predicted": c.predicted,
                     "predicted_ok": c.predicted_ok, "cost_s": c.cost_s, "infeasible": infeasible})
    return {"suite": suite.name, "strategy": strategy, "gpu": prediction.gpu if prediction else None,
            "grid_gpu_s": prediction.grid_gpu_s if prediction else None, "candidates": rows,
            "predicted_results": [r.to_dict() for r in prediction.results] if prediction else []}


def sim_gpu_for(names: list[str]) -> str:
    """The sim GPU standing for a machine's GPUs (their names as NVML reports them), or a ``ValueError`` naming
    the GPUs the sim knows."""
    from pytest_sglang_tune.sim.gpus import GPU_ALIASES, GPUS

    for name in names:
        low = name.lower()
        for spec in GPUS.values():
            if spec.label and spec.label.lower() == low:
                return spec.name
        for alias, real in GPU_ALIASES.items():
            if alias in low.replace(" ", "").replace("-", ""):
                return real
    raise ValueError(f"cannot predict for {', '.join(names) or 'no GPU'}: not a GPU the sim knows; set "
                     f"--sglang-predict-gpu to one of: {', '.join([*GPUS, *GPU_ALIASES])}")
