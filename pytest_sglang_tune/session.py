"""``TuneSession``: the one owner of everything that lives for a pytest session.

It is created in ``pytest_configure``, kept in ``config.stash`` and registered as a plugin (as pytest's junitxml
does with ``LogXML``). It owns the engine (and through it the backend), the pending and finished results, the
incremental ``results.jsonl``, the baseline gate, the report at the end, the terminal summary, the xdist
hand-off (:mod:`pytest_sglang_tune.session_xdist`) and the one shutdown path (``close``).

Results travel as plain dicts in ``report.user_properties`` (that is how xdist delivers them): the item keeps a
``Result`` in its stash, a ``pytest_runtest_makereport`` wrapper attaches a finished copy to each report, and the
controller turns the reports of one test into the final ``Result`` (status, reason) when its teardown is logged.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.engine import Engine
from pytest_sglang_tune.items import SuiteItem, config_key_of
from pytest_sglang_tune.options import Options
from pytest_sglang_tune.report.store import RESULTS_JSONL, ResultsLog, now_iso
from pytest_sglang_tune.results import Result
from pytest_sglang_tune.stash import ERROR, RESULTS, SESSION, TRIAL_CONFIG_KEY

RESULT_KEY = "sglang_tune_result"
ERROR_KEY = "sglang_tune_error"
JUNIT_METRICS = ("output_throughput", "output_throughput_per_gpu", "request_throughput", "goodput", "error_rate",
                 "ttft_ms.p50", "ttft_ms.p99", "itl_ms.p50", "itl_ms.p95", "tpot_ms.mean", "e2e_ms.p99")


@dataclass
class _Pending:
    results: list[Result]
    status: str | None = None
    reason: str | None = None
    log_tail: str | None = None


@dataclass(eq=False)  # a plugin object: hashable by identity
class TuneSession:
    config: pytest.Config
    options: Options
    run_id: str
    started_at: str
    controller: bool
    argv: list[str]
    lease_dir: Path
    worker_id: str | None = None
    _engine: Engine | None = None
    results: list[Result] = field(default_factory=list)
    pending: dict[str, _Pending] = field(default_factory=dict)
    trial_outcomes: dict[str, tuple[str, bool]] = field(default_factory=dict)  # trial node id -> (config, failed)
    report_paths: dict[str, Path] = field(default_factory=dict)
    suite_files: dict[str, str] = field(default_factory=dict)
    worker_notes: list[str] = field(default_factory=list)    # xdist: the workers' backend notes, for the summary
    worker_created: list[Any] = field(default_factory=list)  # xdist: run-wide objects workers created (to remove)
    _log: ResultsLog | None = None
    _baseline: dict[str, Any] | None = None
    _machine: dict[str, Any] | None = None
    _introspected: dict[str, Any] = field(default_factory=dict)
    _closed: bool = False
    _progress: Any = None
    grid_gpu_s: float | None = None  # what measuring every config would cost (predicted), when a search knows it
    missed: dict[tuple[str, str, str], str] = field(default_factory=dict)  # --sglang-early-stop: first miss
    searches: dict[str, Any] = field(default_factory=dict)  # suite name -> search.setup.SearchSetup

    @property
    def run_dir(self) -> Path:
        return self.options.report_dir / self.run_id

    @property
    def progress(self) -> Any:
        """Where long steps report (``progress.make_progress``), made on first use (the terminal reporter
        exists by then)."""
        if self._progress is None:
            from pytest_sglang_tune.progress import make_progress

            self._progress = make_progress(self.config, run_dir=self.run_dir, worker_id=self.worker_id,
                                           interval=self.options.progress_interval)
        return self._progress

    # --- the backend and its engine ---------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The engine of this process, made on first use (a session without suite items touches no backend)."""
        if self._engine is None:
            from pytest_sglang_tune.backends.base import BackendContext, as_backend
            from pytest_sglang_tune.backends.registry import BUILTIN_NAMES

            context = BackendContext(options=self.options, run_id=self.run_id, log_dir=self.run_dir / "logs",
                                     worker_id=self.worker_id, progress=self.progress.update)
            made = self.config.hook.pytest_sglang_tune_make_backend(config=self.config, name=self.options.backend,
                                                                    gpus=self.options.gpus, context=context)
            if made is None:
                raise pytest.UsageError(f"--backend={self.options.backend!r}: no plugin made a backend of that name "
                                        f"(built-in: {', '.join(BUILTIN_NAMES)}; a conftest adds one by returning "
                                        "it from pytest_sglang_tune_make_backend)")
            try:
                backend = as_backend(made)
            except TypeError as exc:
                raise pytest.UsageError(f"--backend={self.options.backend!r}: {exc}") from None
            self._engine = Engine(options=self.options, run_id=self.run_id, backend=backend,
                                  lease_dir=self.lease_dir, progress=self.progress)
        return self._engine

    def asked_engine(self) -> Engine:
        """The engine, once its backend answered the capacity question: "could not ask" (unreachable, 401/403,
        not installed) ends the session with one message; "no capacity" is an answer (configs skip with it)."""
        from pytest_sglang_tune.errors import BackendUnavailable

        engine = self.engine
        try:
            engine.capacity()
        except BackendUnavailable as exc:
            raise pytest.UsageError(exc.bare_message) from exc
        return engine

    def backend_names(self) -> list[str]:
        from pytest_sglang_tune.backends.registry import BUILTIN_NAMES

        return list(dict.fromkeys([*BUILTIN_NAMES, self.options.backend]))

    def knows_backend(self, name: str) -> bool:
        return name in self.backend_names()

    def flag_table_for(self, suite: Any) -> Any:
        """The flags of the SGLang that will run: for docker/ome the image's version (``image_flags``); introspected
        from the local launcher's Python when it can import SGLang (cached per interpreter); else None (``expand``
        then uses the shipped table of the suite's version)."""
        if self.options.backend in ("docker", "ome"):  # the SGLang in the image (tag, label, or asked)
            from pytest_sglang_tune.image_flags import flag_table_for_suite

            return flag_table_for_suite(suite, self.options.backend, image_option=self.options.image)
        if self.options.backend != "local":
            return None
        from pytest_sglang_tune.backends.local import DEFAULT_LAUNCHER, parse_launcher
        from pytest_sglang_tune.flags import introspect_flag_table

        argv = parse_launcher(suite.backend_settings("local").get("launcher") or self.options.launcher
                              or DEFAULT_LAUNCHER)
        if argv[1:3] != ["-m", "sglang.launch_server"] or shutil.which(argv[0]) is None:
            return None  # a wrapper script (we cannot know which SGLang it runs), or deploying reports it missing
        if argv[0] not in self._introspected:
            self._introspected[argv[0]] = introspect_flag_table(argv[0])
        return self._introspected[argv[0]]

    def search_setup(self, suite: Any, configs: list[Any], expansion: Any) -> Any:
        """The search of ``suite`` in this run (``--sglang-search``), set up once per process."""
        if suite.name not in self.searches:
            from pytest_sglang_tune.search.setup import build_setup

            self.searches[suite.name] = build_setup(
                suite, configs, expansion.flags, expansion.varying, strategy=self.options.search,
                budget=self.options.budget, run_dir=self.run_dir, capacity=self.asked_engine().capacity().gpus,
                predict_gpu=self.predict_gpu(), resume_dir=self.resume_dir())
        return self.searches[suite.name]

    def resume_dir(self) -> Path | None:
        """The run directory ``--sglang-resume`` names (it may name its results.jsonl)."""
        if not self.options.resume:
            return None
        path = Path(self.options.resume)
        return path.parent if path.is_file() else path

    def predict_gpu(self) -> str | None:
        """The sim GPU predictions stand for: ``--sglang-predict-gpu``; on the sim the suite's own (None); else
        the detected GPU's name, mapped to a sim GPU (an error naming the known ones when it has none)."""
        if self.options.predict_gpu or self.options.backend == "sim":
            return self.options.predict_gpu
        from pytest_sglang_tune.search.setup import sim_gpu_for

        try:
            return sim_gpu_for([str(g) for g in self.machine().get("gpus") or []])
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None

    # --- what this run is, for comparisons --------------------------------------------------------------------
    def machine(self) -> dict[str, Any]:
        if self._machine is None:
            from pytest_sglang_tune.report.store import machine_info

            self._machine = machine_info()
        return self._machine

    def run_facts(self) -> dict[str, Any]:
        """The parts of ``run`` that comparability looks at, known in any process (worker or controller)."""
        return {"backend": self.options.backend, "machine": self.machine()}

    def check_baseline(self, result: Result) -> tuple[Result, list[str]]:
        """The baseline gate: the same comparability check as ``sglang-tune diff``, then the thresholds.
        Returns the result (with the baseline's metrics and any warnings) and why the test must fail."""
        if self.options.baseline is None:
            return result, []
        from pytest_sglang_tune.diff import comparability_of
        from pytest_sglang_tune.report.store import load_report
        from pytest_sglang_tune.results import as_result

        if self._baseline is None:
            report = load_report(self.options.baseline)
            self._baseline = {"run": report["run"],
                              "by_slot": {as_result(r).point.slot: r for r in report["results"]}}
        base = self._baseline["by_slot"].get(result.point.slot)
        if base is None:
            return result.with_(warnings=(*result.warnings, "no matching point in the baseline report")), []
        problems = comparability_of(self._baseline["run"], [base], self.run_facts(), [result])
        result = result.with_(baseline_metrics=base.get("metrics"))
        if problems and not self.options.allow_different:
            return result, [f"not comparable with the baseline {self.options.baseline}: " + "; ".join(problems) +
                            " (--sglang-allow-different compares anyway)"]
        warnings = [f"COMPARING DIFFERENT SETUPS with the baseline: {p}" for p in problems]
        failures = []
        old_metrics, new_metrics = base.get("metrics") or {}, dict(result.metrics or {})
        for t in self.options.fail_on:
            old, new = t.metric.value(old_metrics), t.metric.value(new_metrics)
            if old is not None and new is not None and t.crossed(old, new):
                pct = (new - old) / abs(old) * 100
                failures.append(f"{t.metric} {old:.4g} → {new:.4g} ({pct:+.1f}%) crosses {t}")
        if failures:
            failures = ["regressed against the baseline: " + "; ".join(failures)]
        return result.with_(warnings=(*result.warnings, *warnings)), failures

    # --- hooks: collection ------------------------------------------------------------------------------------
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        tune_items = [it for it in items if isinstance(it, SuiteItem)]
        if not tune_items:
            return
        if self.options.resume:
            path, done = load_resume(self.options.resume)
            from pytest_sglang_tune.points import resume_key

            for it in tune_items:
                prev = done.get(resume_key(it.result))
                if prev is not None:
                    it.resumed = (path, prev)
        engine = self.asked_engine()
        for it in tune_items:
            self.suite_files[it.suite.name] = str(it.suite.path)
            problem = engine.capacity_problem(it.cfg, it.suite.backend_settings(self.options.backend))
            if problem is None:
                continue
            if self.options.require_capacity:
                it.capacity_problem = problem
            else:
                it.add_marker(pytest.mark.skip(reason=problem))

    # --- hooks: each test -------------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        results = item.stash.get(RESULTS, None)
        if results:
            report.user_properties.append((RESULT_KEY, [r.to_dict() for r in results]))
            error = item.stash.get(ERROR, None)
            if error:
                report.user_properties.append((ERROR_KEY, dict(error)))
        return report

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        key = config_key_of(item)
        if key is None or self._engine is None:
            return
        if self._engine.live is not None and config_key_of(nextitem) != key:
            self._engine.release()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.controller:
            return
        trial = [v for k, v in report.user_properties if k == TRIAL_CONFIG_KEY]
        if trial:  # --lf after a search re-runs the config a failed trial measured
            _, failed_before = self.trial_outcomes.get(report.nodeid, ("", False))
            self.trial_outcomes[report.nodeid] = (str(trial[-1]), failed_before or report.failed)
        dicts: list[Any] = [v for k, v in report.user_properties if k == RESULT_KEY]
        if not dicts:
            return
        results = [Result.from_dict(d) for d in dicts[-1]]
        errors: list[Any] = [v for k, v in report.user_properties if k == ERROR_KEY]
        error: dict[str, Any] = dict(errors[-1]) if errors else {}
        # JUnit XML (and other readers of user_properties) get flat, redacted key metrics, not the whole result
        report.user_properties = [(k, v) for k, v in report.user_properties if k not in (RESULT_KEY, ERROR_KEY)]
        report.user_properties += junit_properties(results)
        pend = self.pending.setdefault(report.nodeid, _Pending(results))
        pend.results = results
        if report.when == "setup":
            if report.skipped and error.get("status") in ("infeasible", "not_measured"):
                pend.status, pend.reason, pend.log_tail = error["status"], error.get("reason"), error.get("log_tail")
            elif report.skipped:
                pend.status, pend.reason = "skipped", skip_reason(report)
            elif report.failed:
                pend.status = error.get("status", "error")
                pend.reason = error.get("reason") or short_report(report)
                pend.log_tail = error.get("log_tail")
        elif report.when == "call":
            if report.passed:
                pend.status = "passed"
            elif report.skipped:
                pend.status, pend.reason = "skipped", skip_reason(report)
            else:
                pend.status = "failed"
                pend.reason = error.get("reason") or short_report(report)
                pend.log_tail = error.get("log_tail")
        elif report.when == "teardown":
            done = self.pending.pop(report.nodeid)
            if report.failed and done.status in (None, "passed"):
                done.status, done.reason = "error", "teardown failed: " + short_report(report)
            self.finish(done)

    def finish(self, done: _Pending) -> None:
        """The final results of one test: status and reason, redacted, into the report and results.jsonl."""
        from pytest_sglang_tune.redact import redact

        for r in done.results:  # a result that knows its own status (a search's trial) keeps it
            final = r.with_(status=r.status or done.status or "error", reason=r.reason or done.reason,
                            log_tail=done.log_tail or None, finished_at=now_iso())
            self.keep(Result.from_dict(redact(final.to_dict())))

    def keep(self, result: Result) -> None:
        """A final result: into the report and, at once, results.jsonl."""
        self.results.append(result)
        if self._log is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._log = ResultsLog(self.run_dir / RESULTS_JSONL)
        self._log.append(result.to_dict())

    # --- hooks: the end ---------------------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.stop_backend()
        if not self.controller:
            return
        for nodeid in list(self.pending):  # interrupted mid-test: keep what we know
            done = self.pending.pop(nodeid)
            done.status = done.status or "error"
            done.reason = done.reason or "interrupted"
            self.finish(done)
        from pytest_sglang_tune.search.runs import add_resumed_trials, record_trial_configs

        add_resumed_trials(self)
        record_trial_configs(self, session.config)
        if self.results:
            from pytest_sglang_tune.report.run import write_run_report

            self.report_paths = write_run_report(self, exitstatus)

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if not self.controller or not self.report_paths:
            return
        from pytest_sglang_tune.report.store import load_report
        from pytest_sglang_tune.report.terminal import summary_lines

        tr = terminalreporter
        tr.section("sglang-tune: top configurations")
        for line in summary_lines(load_report(self.report_paths["json"]), run_dir=self.report_paths["json"].parent):
            tr.write_line(line)
        for kind, path in self.report_paths.items():
            tr.write_line(f"{kind}: {path}")
        notes = self._engine.backend.notes() if self._engine is not None else []
        for note in self.worker_notes + [n for n in notes if n not in self.worker_notes]:
            tr.write_line(f"{self.options.backend}: {note}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.close()

    def stop_backend(self) -> None:
        """Stop the live server. Run-wide objects (an OME runtime, model or namespace this run created) are
        removed only when the run is over: an xdist worker hands them, with its notes, to the controller
        (``workeroutput``), which removes them after the last worker is done; without xdist this process does."""
        if self._engine is None and not self.worker_created:
            return
        engine = self.engine
        engine.shutdown()
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker
            workeroutput["sglang_tune"] = {"notes": engine.backend.notes(), "created": engine.backend.handoff()}
            return
        if self.worker_created:
            engine.backend.adopt(self.worker_created)
            self.worker_created = []
        engine.backend.close()

    def close(self) -> None:
        """The one shutdown path (``pytest_unconfigure``, also after Ctrl-C or an internal error)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._engine is not None:
                self._engine.shutdown()
                if getattr(self.config, "workeroutput", None) is None:
                    self._engine.backend.close()
        finally:
            if self.controller:
                shutil.rmtree(self.lease_dir, ignore_errors=True)  # the run's GPU lease state


def start_session(config: pytest.Config, options: Options) -> TuneSession:
    """Create this process's session owner (controller, or an xdist worker joining the controller's run)."""
    from pytest_sglang_tune.report.store import new_run_id

    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "sglang_tune_run_id" in workerinput:
        run_id, started, controller = workerinput["sglang_tune_run_id"], workerinput["sglang_tune_started_at"], False
    else:
        run_id, started, controller = new_run_id(), now_iso(), True
    session = TuneSession(config=config, options=options, run_id=run_id, started_at=started, controller=controller,
                          argv=list(sys.argv), lease_dir=Path(tempfile.gettempdir()) / f"sglang-tune-{run_id}",
                          worker_id=(workerinput or {}).get("workerid"))
    config.stash[SESSION] = session
    config.pluginmanager.register(session, "sglang-tune-session")
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_sglang_tune.session_xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(session), "sglang-tune-xdist")
    return session


def junit_properties(results: list[Result]) -> list[tuple[str, object]]:
    from pytest_sglang_tune.grammar import parse_metric
    from pytest_sglang_tune.redact import redact

    props: list[tuple[str, object]] = []
    for i, r in enumerate(results):
        prefix = "sglang" if len(results) == 1 else f"sglang.{i}"
        load = ",".join(f"{k}={v}" for k, v in r.point.load.items() if v is not None)
        props += [(f"{prefix}.config_id", r.point.config_id), (f"{prefix}.workload", r.point.workload),
                  (f"{prefix}.load", load)]
        metrics = dict(r.metrics or {})
        for name in JUNIT_METRICS if metrics else ():
            value = parse_metric(name).value(metrics)
            if value is not None:
                props.append((f"{prefix}.{name}", round(value, 4)))
        if r.slo_pass is not None:
            props.append((f"{prefix}.slo_pass", r.slo_pass))
    return redact(props)  # type: ignore[no-any-return]


def load_resume(path_text: str) -> tuple[Path, dict[tuple[Any, ...], Result]]:
    """``--sglang-resume``: the passed results of an earlier run, by what must be equal to reuse them."""
    from pytest_sglang_tune.points import resume_key

    path = Path(path_text)
    if path.is_dir():
        path = path / RESULTS_JSONL
    if not path.is_file():
        raise pytest.UsageError(f"--sglang-resume={path_text!r}: no {RESULTS_JSONL} there (give a run directory "
                                f"such as reports/<run-id> or its {RESULTS_JSONL}).")
    done = {}
    for rec in ResultsLog.read(path):
        r = Result.from_dict(rec)
        if r.status == "passed" and r.metrics and r.full_fidelity:  # never a screening measurement
            done[resume_key(r)] = r
    return path, done


def skip_reason(report: pytest.TestReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


def short_report(report: pytest.TestReport) -> str:
    text = report.longreprtext.strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "Error:" in ln or ln.startswith("E "):
            return ln.removeprefix("E ").strip()[:500]
    return (lines[-1] if lines else "")[:500]
