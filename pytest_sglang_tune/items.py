"""Suite files and their test items: one item per (config × workload × load level).

An item (and a Python suite's ``sglang_bench``) keeps the ``Result`` of its point in ``node.stash[RESULTS]``;
the session owner attaches a finished copy to every test report (``user_properties``), which is how results
reach the controller under xdist. Errors a backend explained are kept in ``node.stash[ERROR]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.errors import CapacityError, InfeasibleConfig, TuneError, TuneWarning
from pytest_sglang_tune.itemkit import TuneItem, missed_worsening, note_error, short_failure
from pytest_sglang_tune.points import (
    combine_runs,
    interval_seed,
    new_result,
    point_name,
    wanted_metrics,
    with_deployment,
    with_measurement,
)
from pytest_sglang_tune.results import Result
from pytest_sglang_tune.stash import ERROR, RESULTS, get_session


def item_name(workload: Any, cfg: Any, load: Any) -> str:
    """The readable test name of a point: ``chat[mem0.85-lpm-c64]`` (``chat[mem0.85-lpm-max]`` for a workload
    whose load is searched)."""
    return point_name(workload.name, cfg, "max" if workload.max_load is not None else load.label())


def check_priced(suite: Any) -> None:
    """``cost_per_mtok`` in an objective or SLO needs a GPU-hour price: without one every config would fail it."""
    if suite.gpu_hour_price:
        return
    uses = [("objective", str(suite.objective))] if suite.objective.metric.name == "cost_per_mtok" else []
    uses += [("slos", str(s)) for s in suite.slos if s.metric.name == "cost_per_mtok"]
    if uses:
        field, text = uses[0]
        raise suite.error(f"{text!r}: cost_per_mtok needs a GPU-hour price; set --sglang-gpu-hour-price=USD or "
                          "the suite's gpu_hour_price (e.g. gpu_hour_price: 2.5)", field)


class SuiteFile(pytest.File):
    """A ``tune_*.yaml`` suite: one test item per (config × workload × load level)."""

    def collect(self) -> Iterator[pytest.Item]:
        from pytest_sglang_tune.space import expand
        from pytest_sglang_tune.suite import load_suite

        session = get_session(self.config)
        suite = session.options.apply(load_suite(self.path))
        check_priced(suite)
        for name in suite.backends:
            if not session.knows_backend(name):
                self.warn(TuneWarning(f"{suite.where('backends', name)}: backends.{name}: no such backend "
                                      f"({', '.join(session.backend_names())}); the section is ignored"))
        exp = expand(suite, session.flag_table_for(suite))
        configs = list(exp.configs)
        self.config.hook.pytest_sglang_tune_modify_space(config=self.config, suite=suite, configs=configs)
        if session.options.search != "grid":
            from pytest_sglang_tune.search.items import trial_items

            yield from trial_items(self, session.search_setup(suite, configs, exp))
            return
        for cfg in configs:
            for wl in suite.workloads:
                for index, load in enumerate(wl.loads):
                    yield SuiteItem.from_parent(self, name=item_name(wl, cfg, load), suite=suite, cfg=cfg,
                                                workload=wl.at_load(index), load=load, table=exp.flags)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        return short_failure(excinfo) or super().repr_failure(excinfo)


class SuiteItem(TuneItem):
    """One point: a configuration of the suite's server space, one workload, one load level."""

    def __init__(self, *, suite: Any, cfg: Any, workload: Any, load: Any, table: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.cfg = cfg
        self.workload = workload
        self.load = load
        self.table = table
        self.capacity_problem: str | None = None
        self.resumed: tuple[Path, Result] | None = None
        self.session_owner = get_session(self.config)
        self.result = new_result(nodeid=self.nodeid, display_id=self.name, suite=suite, cfg=cfg, workload=workload,
                                 load=load, backend=self.session_owner.options.backend,
                                 sglang_version=suite.sglang_version or table.version)
        if workload.max_load is not None:  # one item finds the config's highest load: its result is the summary
            from pytest_sglang_tune.search.maxload import summary_of

            self.result = summary_of(self.result, cfg)

    @property
    def result(self) -> Result:
        return self.stash[RESULTS][0]

    @result.setter
    def result(self, value: Result) -> None:
        self.stash[RESULTS] = [value, *self.stash.get(RESULTS, [])[1:]]  # a load search's probes follow

    @property
    def config_key(self) -> tuple[str, str]:
        return (self.suite.name, self.cfg.config_id)

    def setup(self) -> None:
        if self.resumed is not None:
            return  # measured in an earlier run: nothing to deploy
        if self.capacity_problem:
            raise CapacityError(self.capacity_problem + " (--sglang-require-capacity makes this an error)",
                                config_id=self.cfg.config_id)
        missed = self.session_owner.missed.get((self.suite.name, self.cfg.config_id, self.workload.name))
        if self.session_owner.options.early_stop and missed is not None:
            reason = f"skipped: SLO already missed at {missed} (--sglang-early-stop)"
            self.stash[ERROR] = {"status": "not_measured", "reason": reason, "log_tail": ""}
            pytest.skip(reason)
        engine = self.session_owner.engine
        try:
            live = engine.ensure(self.suite, self.cfg, self.table)
        except InfeasibleConfig as exc:
            # the config cannot run by its own nature: data for the ranking, not a broken run
            note_error(self, exc)
            pytest.xfail(f"infeasible config: {exc.bare_message}")
        except BaseException as exc:
            note_error(self, exc)
            raise
        self.result = with_deployment(self.result, live)

    def runtest(self) -> None:
        if self.resumed is not None:
            path, prev = self.resumed
            self.result = prev.with_(test_id=self.result.test_id, display_id=self.result.display_id,
                                     suite_file=self.result.suite_file, status=None, reason=None,
                                     resumed_from=str(path))
            return
        engine = self.session_owner.engine
        if self.workload.max_load is not None:
            self._search_max_load(engine)
            self._check_result()
            return
        runs = []
        seed = interval_seed(self.result.point)
        try:
            for i in range(self.suite.repeats):
                if i and self.suite.redeploy:
                    engine.release()
                live = engine.ensure(self.suite, self.cfg, self.table)  # the live server, or a redeploy
                runs.append(engine.measure(live, self.workload, self.load, self.suite.slos, self.cfg.gpus,
                                           wanted=wanted_metrics(self.suite), seed=seed + i))
        except BaseException as exc:
            note_error(self, exc)
            raise
        measurement, repeats = combine_runs(runs, self.suite)
        self.result = with_measurement(self.result, measurement, self.suite, self.cfg.gpus, repeats)
        metrics = measurement.metrics
        if not metrics.get("completed"):
            raise TuneError(f"no request completed ({metrics.get('failed')} failed); "
                            f"errors: {', '.join(measurement.warnings) or 'see the server log'}")
        key = (self.suite.name, self.cfg.config_id, self.workload.name)
        if missed_worsening(self.result, self.suite.slos):
            self.session_owner.missed.setdefault(key, self.load.label())
        self._check_result()

    def _search_max_load(self, engine: Any) -> None:
        """Bisect for the highest load within every SLO; probes land in the stash as they are measured."""
        from pytest_sglang_tune.search.maxload import run_max_load

        def keep(probe: Result) -> None:
            self.stash[RESULTS].append(probe)

        try:
            summary = run_max_load(engine, self.suite, self.cfg, self.table, self.workload, self.result,
                                   on_probe=keep)
        except BaseException as exc:
            note_error(self, exc)
            raise
        self.result = summary

    def _check_result(self) -> None:
        """The baseline gate and ``--sglang-strict-slo`` on the point's (or the load search's) result."""
        metrics = dict(self.result.metrics or {})
        self.result, failures = self.session_owner.check_baseline(self.result)
        if failures:
            pytest.fail("; ".join(failures), pytrace=False)
        if self.session_owner.options.strict_slo and not self.result.slo_pass:
            missed = [s for s, ok in self.result.slo_results.items() if not ok]
            pytest.fail("SLO missed (--sglang-strict-slo): " + "; ".join(
                f"{s} (measured {_measured(metrics, s)})" for s in missed), pytrace=False)


def _measured(metrics: dict[str, Any], slo_text: str) -> Any:
    from pytest_sglang_tune.grammar import parse_slo

    v = parse_slo(slo_text).metric.value(metrics)
    return "n/a" if v is None else round(v, 3)


def config_key_of(item: pytest.Item | None) -> tuple[str, str] | None:
    """(suite, config_id) of a suite item or a Python-suite test; None for any other test."""
    if item is None:
        return None
    if isinstance(item, SuiteItem):
        return item.config_key
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "sglang_config" in callspec.params:
        suite, cfg, _ = callspec.params["sglang_config"]
        return (suite.name, cfg.config_id)
    return None


__all__ = ["SuiteFile", "SuiteItem", "check_priced", "config_key_of",
           "item_name", "note_error"]
