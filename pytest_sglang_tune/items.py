"""Suite files and their test items: one item per (config × workload × load level); Python-suite helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.engine import RESULT_KEY, base_record, deployment_fields
from pytest_sglang_tune.errors import CapacityError, InfeasibleConfig, TuneError
from pytest_sglang_tune.redact import redact
from pytest_sglang_tune.state import ERROR_KEY, get_engine, get_state


class SuiteFile(pytest.File):
    """A ``tune_*.yaml`` suite: one test item per (config × workload × load level)."""

    def collect(self) -> Iterator[pytest.Item]:
        from pytest_sglang_tune.space import expand
        from pytest_sglang_tune.suite import load_suite

        suite = get_state(self.config).options.apply(load_suite(self.path))
        exp = expand(suite, flag_table_for(self.config, suite))
        configs = list(exp.configs)
        self.config.hook.pytest_sglang_tune_modify_space(config=self.config, suite=suite, configs=configs)
        for cfg in configs:
            for wl in suite.workloads:
                for index, load in enumerate(wl.loads):
                    yield SuiteItem.from_parent(self, name=f"{wl.name}[{cfg.display}-{load.label()}]",
                                                suite=suite, cfg=cfg, workload=wl.at_load(index), load=load,
                                                table=exp.flags)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, TuneError):
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        return super().repr_failure(excinfo)


def flag_table_for(config: pytest.Config, suite: Any) -> Any:
    """The flags of the SGLang that will run: for docker/ome the image's version (``image_flags``); introspected
    from the local launcher's Python when it can import SGLang (cached per interpreter); else None (``expand``
    then uses the shipped table of the suite's version)."""
    st = get_state(config)
    if st.options.backend in ("docker", "ome"):  # issue 14: the SGLang in the image (tag, label, or asked)
        from pytest_sglang_tune.image_flags import flag_table_for_suite

        return flag_table_for_suite(suite, st.options.backend, image_option=config.getoption("sglang_image", None))
    if st.options.backend != "local":
        return None
    from pytest_sglang_tune.backends.local import DEFAULT_LAUNCHER, parse_launcher
    from pytest_sglang_tune.flags import introspect_flag_table

    argv = parse_launcher(suite.backend_settings("local").get("launcher") or st.options.launcher or DEFAULT_LAUNCHER)
    if argv[1:3] != ["-m", "sglang.launch_server"]:
        return None  # a wrapper script: we cannot know which SGLang it runs
    import shutil

    if shutil.which(argv[0]) is None:
        return None  # deploying reports "launcher not found" for this config, with the command
    if argv[0] not in st.introspected:
        st.introspected[argv[0]] = introspect_flag_table(argv[0])
    return st.introspected[argv[0]]


class SuiteItem(pytest.Item):
    """One point: a configuration of the suite's server space, one workload, one load level."""

    def __init__(self, *, suite: Any, cfg: Any, workload: Any, load: Any, table: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.cfg = cfg
        self.workload = workload
        self.load = load
        self.table = table
        self.capacity_problem: str | None = None
        self.live: Any = None
        self.resumed: tuple[Path, dict[str, Any]] | None = None
        self.record = base_record(
            nodeid=self.nodeid, display_id=self.name, suite=suite, cfg=cfg, workload=workload, load=load,
            backend=get_state(self.config).options.backend, sglang_version=suite.sglang_version or table.version)
        self.user_properties.append((RESULT_KEY, self.record))
        self.add_marker(pytest.mark.xdist_group(name=f"sglang-{suite.name}-{cfg.short_hash}"))

    @property
    def config_key(self) -> tuple[str, str]:
        return (self.suite.name, self.cfg.config_id)

    def setup(self) -> None:
        if self.resumed is not None:
            return  # measured in an earlier run: nothing to deploy
        if self.capacity_problem:
            raise CapacityError(self.capacity_problem + " (--sglang-require-capacity makes this an error)",
                                config_id=self.cfg.config_id)
        try:
            self.live = get_engine(self.config).ensure(self.suite, self.cfg, self.table)
        except InfeasibleConfig as exc:
            # the config cannot run by its own nature: data for the ranking, not a broken run
            _note_error(self, exc)
            pytest.xfail(f"infeasible config: {exc.bare_message}")
        except BaseException as exc:
            _note_error(self, exc)
            raise
        self.record.update(redact(deployment_fields(self.live)))

    def runtest(self) -> None:
        if self.resumed is not None:
            path, prev = self.resumed
            keep = {"test_id", "display_id", "suite_file"}
            self.record.update({k: v for k, v in prev.items() if k not in keep and k not in ("status", "reason")})
            self.record["resumed_from"] = str(path)
            return
        engine = get_engine(self.config)
        runs = []
        try:
            for i in range(self.suite.repeats):
                if i and self.suite.redeploy:
                    engine.release()
                    self.live = engine.ensure(self.suite, self.cfg, self.table)
                runs.append(engine.measure(self.live, self.workload, self.load, self.suite.slos, self.cfg.gpus))
        except BaseException as exc:
            _note_error(self, exc)
            raise
        out = combine_runs(runs, self.suite)
        if len(runs) > 1:
            self.record["repeats"] = {"n": len(runs), "redeploy": self.suite.redeploy,
                                      "mode": "redeployed" if self.suite.redeploy else "within one deployment"}
            self.record["confidence"] = out["confidence"]
        fill_metrics(self.record, out, self.suite, self.cfg.gpus)
        metrics = out["metrics"]
        if not metrics.get("completed"):
            raise TuneError(f"no request completed ({metrics.get('failed')} failed); "
                            f"errors: {', '.join(out['warnings']) or 'see the server log'}")
        regressions = check_baseline(self.config, self.record)
        if regressions:
            pytest.fail("regressed against the baseline: " + "; ".join(regressions), pytrace=False)
        if get_state(self.config).options.strict_slo and not self.record["slo_pass"]:
            missed = [s for s, ok in self.record["slo_results"].items() if not ok]
            pytest.fail("SLO missed (--sglang-strict-slo): " + "; ".join(
                f"{s} (measured {_measured(metrics, s)})" for s in missed), pytrace=False)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, TuneError):
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def _repr_failure_py(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        # setup/teardown failures are rendered here (not by repr_failure): our errors already say it all
        if isinstance(excinfo.value, TuneError) and style != "long":
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        return super()._repr_failure_py(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.suite.name}::{self.name}"


def combine_runs(runs: list[dict[str, Any]], suite: Any) -> dict[str, Any]:
    """One point's measurement from its repeats: mean metrics, 95 % intervals, all warnings."""
    if len(runs) == 1:
        return runs[0]
    from pytest_sglang_tune.analysis import combine_repeats, repeat_confidence

    blocks = [r["metrics"] for r in runs]
    wanted = [str(suite.objective.metric), *(str(s.metric) for s in suite.slos), "output_throughput",
              "output_throughput_per_gpu", "ttft_ms.p99", "itl_ms.p95"]
    return {"metrics": combine_repeats(blocks), "confidence": repeat_confidence(blocks, wanted),
            "warnings": [w for r in runs for w in r.get("warnings") or []],
            "e2e_s": [x for r in runs for x in r.get("e2e_s") or []],
            "server_metrics": runs[-1].get("server_metrics"), "sim_lag": runs[-1].get("sim_lag")}


def check_baseline(config: pytest.Config, record: dict[str, Any]) -> list[str]:
    """--sglang-baseline/--sglang-fail-on: the thresholds this point crosses against the baseline's same point."""
    st = get_state(config)
    if st.options.baseline is None:
        return []
    from pytest_sglang_tune.diff import match_key
    from pytest_sglang_tune.results import load_report

    if st.baseline is None:
        st.baseline = {match_key(r): r for r in load_report(st.options.baseline)["results"]}
    base = st.baseline.get(match_key(record))
    if base is None:
        record.setdefault("warnings", []).append("no matching point in the baseline report")
        return []
    record["baseline_metrics"] = base.get("metrics")
    out = []
    for t in st.options.fail_on:
        old, new = t.metric.value(base.get("metrics") or {}), t.metric.value(record.get("metrics") or {})
        if old is not None and new is not None and t.crossed(old, new):
            pct = (new - old) / abs(old) * 100
            out.append(f"{t.metric} {old:.4g} → {new:.4g} ({pct:+.1f}%) crosses {t}")
    return out


def _measured(metrics: dict[str, Any], slo_text: str) -> Any:
    from pytest_sglang_tune.grammar import parse_slo

    v = parse_slo(slo_text).metric.value(metrics)
    return "n/a" if v is None else round(v, 3)


def fill_metrics(record: dict[str, Any], out: dict[str, Any], suite: Any, gpus: int) -> None:
    metrics = out["metrics"]
    slos = suite.slos
    thr = metrics.get("output_throughput")
    metrics["cost_per_mtok"] = (suite.gpu_hour_price * gpus / 3600.0 / thr * 1e6
                                if suite.gpu_hour_price and thr else None)
    record["metrics"] = metrics
    record["e2e_s"] = out.get("e2e_s") or []  # per-request E2E seconds (pytest-benchmark stats)
    record["slo_results"] = {str(s): s.check(metrics) for s in slos}
    record["slo_pass"] = all(record["slo_results"].values())
    record["warnings"] = list(out.get("warnings") or [])
    if out.get("server_metrics"):
        record["server_metrics"] = out["server_metrics"]
    lag = out.get("sim_lag")
    if lag:
        record.setdefault("sim", {})["lag"] = lag


def _note_error(item: pytest.Item, exc: BaseException) -> None:
    from pytest_sglang_tune.engine import log_tail_of

    if isinstance(exc, TuneError):
        kind = "infeasible" if isinstance(exc, InfeasibleConfig) else "error"
        msg = getattr(exc, "bare_message", str(exc))
        item.user_properties.append((ERROR_KEY, {"status": kind, "reason": f"{type(exc).__name__}: {msg}",
                                                 "log_tail": log_tail_of(exc)}))


def resume_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What must be equal for an earlier measurement to stand for this point."""
    w = record.get("workload") or {}
    load = record.get("load") or {}
    return (record.get("suite"), w.get("content_hash"), load.get("concurrency"), load.get("request_rate"),
            record.get("config_id"), record.get("backend"), record.get("sglang_version"), record.get("image"),
            record.get("image_digest") if record.get("image") else None, record.get("tool_version"))


def load_resume(path_text: str) -> tuple[Path, dict[tuple[Any, ...], dict[str, Any]]]:
    from pytest_sglang_tune.results import ResultsLog

    path = Path(path_text)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise pytest.UsageError(f"--sglang-resume={path_text!r}: no results.jsonl there (give a run directory "
                                "such as reports/<run-id> or its results.jsonl).")
    done = {}
    for rec in ResultsLog.read(path):
        if rec.get("status") == "passed" and rec.get("metrics"):
            done[resume_key(rec)] = rec
    return path, done


def _config_key(item: pytest.Item | None) -> tuple[str, str] | None:
    if item is None:
        return None
    if isinstance(item, SuiteItem):
        return item.config_key
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "sglang_config" in callspec.params:
        suite, cfg, _ = callspec.params["sglang_config"]
        return (suite.name, cfg.config_id)
    return None
