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
        return self.directory / f"{self.suite.name}.journal"

    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.plan, name=self.suite.name, path=self.ledger_path, seed=self.seed)
        return self._ledger


def target_of(suite: Suite) -> tuple[tuple[str, LoadKey], str]:
    """The search target as a (workload, load key) group and its label (``chat@c64``)."""
    name, label = suite.search_target or (suite.workloads[0].name, suite.workloads[0].loads[-1].label())
    wl = next(w for w in suite.workloads if w.name == name)
    load = next(ld for ld in wl.loads if ld.label() == label)
    return (name, load_key(load.to_dict())), f"{name}@{label}"


def needs_prediction(strategy: str, budget: Budget) -> bool:
    """Every search predicts its grid: ``predicted`` and ``P%`` budgets need it, and every report says what the
    whole grid would have cost."""
    return strategy != "grid" or budget.share is not None


def plan_file(directory: Path, suite: Suite) -> Path:
    return directory / f"{suite.name}.plan.json"


def build_setup(suite: Suite, configs: list[TuneConfig], table: Any, varying: tuple[str, ...], *, strategy: str,
                budget: Budget, run_dir: Path, capacity: int | None, predict_gpu: str | None,
                seed: int = 0) -> SearchSetup:
    """The search of ``suite`` (predicting its grid on the first call of the run, reading it after)."""
    from filelock import FileLock

    directory = run_dir / SEARCH_DIR
    directory.mkdir(parents=True, exist_ok=True)
    target, label = target_of(suite)
    path = plan_file(directory, suite)
    with FileLock(str(path) + ".lock"):
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
