"""Search trials as pytest items: ``suite.yaml::search[tpe-003]``. At set-up a trial asks the suite's ledger for
a config (or skips: "budget spent: 0.31 of 0.3 GPU-h"), deploys it, and measures its points — every load of
every workload, ascending, with fewer requests at a low halving rung — then tells the ledger the value at the
search target. Once a config misses an SLO that only gets worse with load (a latency upper bound, the error
rate), its higher loads are recorded ``not_measured`` ("skipped: SLO already missed at c16"), never absent.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from pytest_sglang_tune.errors import InfeasibleConfig, TuneError
from pytest_sglang_tune.itemkit import TuneItem, missed_worsening, note_error
from pytest_sglang_tune.points import measure_once, new_result, point_name
from pytest_sglang_tune.results import Result
from pytest_sglang_tune.search.setup import SearchSetup
from pytest_sglang_tune.search.strategies import Proposal, Stop
from pytest_sglang_tune.stash import RESULTS, TRIAL_CONFIG_KEY, get_session

LAST_TRIALS = "sglang_tune/search_trials"  # pytest cache: trial node id -> config measured (for --lf)


def low_fidelity(workload: Any, fraction: float) -> Any:
    """The workload at a halving rung's share of its requests (at least 4)."""
    if fraction >= 1.0:
        return workload
    n = max(4, math.ceil(workload.num_requests * fraction))
    return replace(workload, num_requests=min(n, workload.num_requests), num_requests_per_load=())


class TrialItem(TuneItem):
    """One trial of a search: a config chosen at set-up, all its points measured in the call."""

    def __init__(self, *, setup: SearchSetup, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.search = setup
        self.index = index
        self.number: int | None = None
        self.proposal: Proposal | None = None
        self.session_owner = get_session(self.config)
        self.stash[RESULTS] = []

    @property
    def suite(self) -> Any:
        return self.search.suite

    def _rerun_config(self) -> str | None:
        """With ``--lf``: the config this trial measured when it failed last time (recorded in pytest's cache)."""
        if not self.config.getoption("lf", False) or self.config.cache is None:
            return None
        recorded = self.config.cache.get(LAST_TRIALS, {})
        return recorded.get(self.nodeid) if isinstance(recorded, dict) else None

    def setup(self) -> None:
        ledger = self.search.ledger()
        again = self._rerun_config()
        decision = ledger.start(again, why="--lf: the config this trial measured when it failed") \
            if again in self.search.configs else ledger.ask()
        if isinstance(decision, Stop):
            from pytest_sglang_tune.search.summary import stop_file

            stop_file(self.search.directory, self.suite.name).write_text(decision.reason + "\n")
            pytest.skip(decision.reason)
        self.number, self.proposal = decision
        cfg = self.search.configs[self.proposal.config_id]
        self.user_properties.append((TRIAL_CONFIG_KEY, cfg.config_id))
        try:
            live = self.session_owner.engine.ensure(self.suite, cfg, self.search.table)
        except InfeasibleConfig as exc:
            self._tell_nothing()
            note_error(self, exc)
            self._record_all(status="infeasible", reason=f"InfeasibleConfig: {exc.bare_message}")
            pytest.xfail(f"infeasible config: {exc.bare_message}")
        except BaseException as exc:
            self._tell_nothing()
            note_error(self, exc)
            self._record_all(status=None, reason=None)  # the config's points, with the error the session records
            raise
        self.live = live

    def _tell_nothing(self) -> None:
        if self.number is not None:
            self.search.ledger().tell(self.number, value=None, ok=False, gpu_s=0.0)
            self.number = None

    def _trial_info(self) -> dict[str, Any]:
        assert self.proposal is not None
        c = self.search.plan.by_id[self.proposal.config_id]
        return {"strategy": self.search.plan.strategy, "number": self.number, "rung": self.proposal.rung,
                "fidelity": self.proposal.fidelity, "why": self.proposal.why, "predicted": c.predicted,
                "target": self.search.target_label}

    def _new(self, wl: Any, load: Any) -> Result:
        assert self.proposal is not None
        cfg = self.search.configs[self.proposal.config_id]
        name = point_name(wl.name, cfg, load.label())
        r = new_result(nodeid=self.nodeid, display_id=name, suite=self.suite, cfg=cfg, workload=wl, load=load,
                       backend=self.session_owner.options.backend,
                       sglang_version=self.suite.sglang_version or self.search.table.version)
        return r.with_(trial=self._trial_info(), fidelity="low" if self.proposal.fidelity == "low" else None)

    def _record_all(self, *, status: str | None, reason: str | None) -> None:
        for wl in self.suite.workloads:
            for index, load in enumerate(wl.loads):
                self.stash[RESULTS].append(self._new(wl.at_load(index), load).with_(status=status, reason=reason))

    def runtest(self) -> None:
        assert self.proposal is not None and self.number is not None
        engine = self.session_owner.engine
        cfg = self.search.configs[self.proposal.config_id]
        fraction = self.search.plan.fraction(self.proposal.rung) if self.search.plan.strategy == "halving" else 1.0
        results: list[Result] = []
        value: float | None = None
        ok = True
        try:
            for wl in self.suite.workloads:
                if wl.max_load is not None:  # the config's highest load within the SLOs, by bisection
                    summary = self._max_load(wl, fraction, results)
                    results.append(summary)
                    if (wl.name, summary.point.load_key) == self.search.target:
                        value = self.suite.objective.score(dict(summary.metrics or {}))
                    ok = ok and summary.slo_pass is not False
                    continue
                missed_at: str | None = None
                for index, load in enumerate(wl.loads):
                    workload = low_fidelity(wl.at_load(index), fraction)
                    result = self._new(workload, load)
                    if missed_at is not None:
                        results.append(result.with_(status="not_measured",
                                                    reason=f"skipped: SLO already missed at {missed_at}"))
                        continue
                    result = measure_once(engine, self.suite, cfg, self.search.table, workload, load, result)
                    results.append(result)
                    if (wl.name, result.point.load_key) == self.search.target:
                        value = self.suite.objective.score(dict(result.metrics or {}))
                    if not result.slo_pass:
                        ok = False
                    if missed_worsening(result, self.suite.slos):
                        missed_at = load.label()
        except BaseException as exc:
            note_error(self, exc)
            self._finish(results, None, False)
            raise
        self._finish(results, value, ok)

    def _max_load(self, wl: Any, fraction: float, results: list[Result]) -> Result:
        from pytest_sglang_tune.search.maxload import run_max_load, summary_of

        assert self.proposal is not None
        cfg = self.search.configs[self.proposal.config_id]
        workload = low_fidelity(wl, fraction)
        base = summary_of(self._new(workload, wl.loads[0]), cfg)
        return run_max_load(self.session_owner.engine, self.suite, cfg, self.search.table, workload, base,
                            on_probe=results.append)

    def _finish(self, results: list[Result], value: float | None, ok: bool) -> None:
        self.stash[RESULTS] = results
        if self.number is not None:
            gpu_s = sum(r.cost.gpu_s or 0.0 for r in results)
            self.search.ledger().tell(self.number, value=value, ok=ok, gpu_s=gpu_s)
            self.number = None

    def teardown(self) -> None:
        self._tell_nothing()  # a trial that died between ask and measure still ends in the ledger
        engine = self.session_owner._engine
        if engine is not None and engine.live is not None:
            engine.release()


def trial_items(parent: Any, setup: SearchSetup) -> list[TrialItem]:
    n = setup.plan.max_trials()
    if setup.plan.budget.trials is not None:
        n = min(n, setup.plan.budget.trials)
    strategy = setup.plan.strategy
    return [TrialItem.from_parent(parent, name=f"search[{strategy}-{i:03d}]", setup=setup, index=i)
            for i in range(max(1, n))]


__all__ = ["LAST_TRIALS", "TrialItem", "TuneError", "trial_items"]
