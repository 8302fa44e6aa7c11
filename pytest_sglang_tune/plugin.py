"""pytest wiring: options, suite collection, items, fixtures, result collection and report writing.

Heavy imports (load generator, backends, report writers) happen inside the hooks that need them; a pytest session
that collects no suite item touches no server, Docker or Kubernetes.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune import hookspecs
from pytest_sglang_tune.engine import RESULT_KEY, Engine, Options, base_record, deployment_fields
from pytest_sglang_tune.errors import (
    CapacityError,
    InfeasibleConfig,
    TuneError,
)
from pytest_sglang_tune.redact import redact
from pytest_sglang_tune.results import now_iso

BACKEND_NAMES = ("sim", "local", "docker", "ome")
SUITE_PATTERNS = ("tune_*.yaml", "tune_*.yml")
ERROR_KEY = "sglang_tune_error"


# --- options ---------------------------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sglang-tune", "SGLang tuning (pytest-sglang-tune)")
    g.addoption("--backend", dest="sglang_backend", default=None,
                help="where suites deploy SGLang: sim (default), local, docker, ome")
    g.addoption("--gpus", dest="sglang_gpus", default=None,
                help="GPUs the whole run may use at once (default: sim 8 virtual; local/docker: detected)")
    g.addoption("--sglang-report-dir", default=None, help="where reports/<run-id>/ go (default: reports)")
    g.addoption("--sglang-strict-slo", action="store_true", default=None,
                help="fail tests whose point misses an SLO (default: record slo_pass=false and rank it infeasible)")
    g.addoption("--sglang-require-capacity", action="store_true", default=None,
                help="configs that need more GPUs than available are errors instead of skips")
    g.addoption("--sglang-ready-timeout", default=None,
                help="seconds to wait for a server to become ready (default: sim 120, others 1800)")
    g.addoption("--sglang-launcher", default=None,
                help="local backend: the launcher command (default: 'python -m sglang.launch_server')")
    g.addoption("--sglang-slo", action="append", default=None, metavar="SLO",
                help="an SLO ('ttft_ms.p99 <= 2000'); repeat for several; replaces every suite's SLOs")
    g.addoption("--sglang-objective", default=None, metavar="OBJECTIVE",
                help="'maximize: <metric>' or 'minimize: <metric>'; replaces every suite's objective")
    g.addoption("--sglang-gpu-hour-price", default=None, metavar="USD",
                help="price of one GPU-hour, for the cost_per_mtok metric (overrides the suite's gpu_hour_price)")
    g.addoption("--sglang-baseline", default=None, metavar="REPORT.json",
                help="compare each point with this earlier report; with --sglang-fail-on, regressions fail")
    g.addoption("--sglang-fail-on", action="append", default=None, metavar="METRIC:±N%",
                help="with --sglang-baseline: fail a test whose metric moves past N%% ('output_throughput:-5%%')")
    g.addoption("--sglang-benchmark-json", default=None, metavar="PATH",
                help="also write the results in pytest-benchmark's JSON format (stats from per-request E2E)")
    g.addoption("--sglang-benchmark-autosave", action="store_true", default=False,
                help="also save into .benchmarks/<machine>/NNNN_<name>.json as pytest-benchmark does")
    g.addoption("--sglang-resume", default=None, metavar="RESULTS",
                help="skip points already measured (passed) in an earlier run's results.jsonl (or its run "
                     "directory) with the same key, and merge them into this run's report")
    g.addoption("--sglang-repeats", type=int, default=None, metavar="N",
                help="measure each point N times (overrides the suite's repeats); results get 95%% intervals")
    g.addoption("--sglang-loadgen-procs", type=int, default=None,
                help="load generator processes per point (default 1; more when one core cannot keep up)")
    d = parser.getgroup("sglang-tune-docker", "SGLang tuning: docker backend")
    d.addoption("--sglang-image", default=None, help="docker: the SGLang image (overrides the suite's)")
    d.addoption("--sglang-fake-gpus", type=int, default=None,
                help="docker, TESTS ONLY: pretend the host has N GPUs; leased ids reach the container through an "
                     "environment variable instead of a DeviceRequest")
    d.addoption("--sglang-docker-network", default=None, choices=("bridge", "host"),
                help="docker: publish the port on 127.0.0.1 (bridge, default) or use host networking")
    d.addoption("--sglang-hf-cache", default=None,
                help="docker: Hugging Face cache mounted into containers (default ~/.cache/huggingface)")
    k = parser.getgroup("sglang-tune-ome", "SGLang tuning: ome backend (Kubernetes)")
    k.addoption("--sglang-kubeconfig", default=None, help="ome: kubeconfig (default: $KUBECONFIG, ~/.kube/config, "
                                                          "or in-cluster)")
    k.addoption("--sglang-namespace", default=None, help="ome: namespace for InferenceServices (default: the "
                                                         "suite's, else 'default')")
    k.addoption("--sglang-ome-url", default=None, choices=("auto", "direct", "tunnel"),
                help="ome: reach the server at status.url (direct) or through a port-forward (tunnel); default auto")
    k.addoption("--sglang-sweep", action="store_true", default=False,
                help="ome: remove objects of our label left by dead earlier runs (opt-in: clusters are shared)")
    parser.addini("sglang_backend", "default --backend", default="sim")
    parser.addini("sglang_gpus", "default --gpus", default="")
    parser.addini("sglang_report_dir", "default --sglang-report-dir", default="reports")
    parser.addini("sglang_strict_slo", "default --sglang-strict-slo", type="bool", default=False)
    parser.addini("sglang_ready_timeout", "default --sglang-ready-timeout", default="")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _opt(config: pytest.Config, name: str, ini: str | None = None) -> Any:
    v = config.getoption(name)
    if v is None and ini:
        v = config.getini(ini)
    return v


def parse_backend(value: str) -> str:
    if value not in BACKEND_NAMES:
        raise pytest.UsageError(f"--backend={value!r} is not a valid backend. Valid backends: "
                                f"{', '.join(BACKEND_NAMES)}.")
    return value


def parse_gpus(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise pytest.UsageError(f"--gpus={value!r} is not valid: give a whole number of GPUs >= 0.")
    return n


def parse_timeout(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = -1.0
    if t <= 0:
        raise pytest.UsageError(f"--sglang-ready-timeout={value!r} is not valid: give seconds > 0.")
    return t


def parse_grammar_options(config: pytest.Config) -> dict[str, Any]:
    from pytest_sglang_tune.diff import parse_threshold
    from pytest_sglang_tune.errors import GrammarError
    from pytest_sglang_tune.grammar import parse_objective, parse_slo

    out: dict[str, Any] = {}
    try:
        slos = config.getoption("sglang_slo")
        if slos is not None:
            out["slos"] = tuple(parse_slo(s) for s in slos)
        obj = config.getoption("sglang_objective")
        if obj is not None:
            out["objective"] = parse_objective(obj)
        out["fail_on"] = tuple(parse_threshold(t) for t in config.getoption("sglang_fail_on") or ())
    except GrammarError as exc:
        raise pytest.UsageError(str(exc)) from None
    price = config.getoption("sglang_gpu_hour_price")
    if price is not None:
        try:
            out["gpu_hour_price"] = float(price)
        except ValueError:
            out["gpu_hour_price"] = -1.0
        if out["gpu_hour_price"] <= 0:
            raise pytest.UsageError(f"--sglang-gpu-hour-price={price!r} is not valid: give a price > 0 (e.g. 2.5).")
    baseline = config.getoption("sglang_baseline")
    if baseline:
        out["baseline"] = Path(baseline)
        if not out["baseline"].is_file():
            raise pytest.UsageError(f"--sglang-baseline={baseline!r}: no such report file.")
    elif out["fail_on"]:
        raise pytest.UsageError("--sglang-fail-on needs --sglang-baseline=REPORT.json to compare against.")
    repeats = config.getoption("sglang_repeats")
    if repeats is not None:
        if repeats < 1:
            raise pytest.UsageError(f"--sglang-repeats={repeats} is not valid: give 1 or more.")
        out["repeats"] = repeats
    procs = config.getoption("sglang_loadgen_procs")
    if procs is not None:
        if procs < 1:
            raise pytest.UsageError(f"--sglang-loadgen-procs={procs} is not valid: give 1 or more.")
        out["loadgen_procs"] = procs
    return out


def parse_options(config: pytest.Config) -> Options:
    return Options(
        **parse_grammar_options(config),
        backend=parse_backend(str(_opt(config, "sglang_backend", "sglang_backend") or "sim")),
        gpus=parse_gpus(_opt(config, "sglang_gpus", "sglang_gpus")),
        report_dir=Path(str(_opt(config, "sglang_report_dir", "sglang_report_dir") or "reports")),
        strict_slo=bool(_opt(config, "sglang_strict_slo", "sglang_strict_slo")),
        require_capacity=bool(config.getoption("sglang_require_capacity")),
        ready_timeout=parse_timeout(_opt(config, "sglang_ready_timeout", "sglang_ready_timeout")),
        launcher=config.getoption("sglang_launcher"),
    )


# --- state -----------------------------------------------------------------------------------------------------

@dataclass
class State:
    options: Options
    run_id: str
    controller: bool
    lease_dir: Path
    started_at: str
    argv: list[str]
    engine: Engine | None = None
    has_items: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    suite_files: dict[str, str] = field(default_factory=dict)
    log: Any = None
    report_paths: dict[str, Path] = field(default_factory=dict)
    baseline: dict[Any, dict[str, Any]] | None = None
    introspected: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.options.report_dir / self.run_id


STATE = pytest.StashKey[State]()


def get_state(config: pytest.Config) -> State:
    return config.stash[STATE]


def get_engine(config: pytest.Config) -> Engine:
    st = get_state(config)
    if st.engine is None:
        backend = config.hook.pytest_sglang_tune_make_backend(config=config, name=st.options.backend,
                                                              gpus=st.options.gpus)
        st.engine = Engine(options=st.options, run_id=st.run_id, backend=backend, lease_dir=st.lease_dir)
    return st.engine


@pytest.hookimpl(trylast=True)
def pytest_sglang_tune_make_backend(config: pytest.Config, name: str, gpus: int | None) -> Any:
    st = get_state(config)
    log_dir = st.run_dir / "logs"
    if name == "sim":
        from pytest_sglang_tune.backends.sim import SimBackend

        return SimBackend(gpus=gpus, log_dir=log_dir)
    if name == "local":
        from pytest_sglang_tune.backends.local import LocalBackend

        return LocalBackend(gpus=gpus, launcher=st.options.launcher, log_dir=log_dir)
    if name in ("docker", "ome"):
        import importlib

        module = importlib.import_module(f"pytest_sglang_tune.backends.{name}")
        return module.make_backend(config, gpus=gpus, log_dir=log_dir, run_id=st.run_id)
    raise pytest.UsageError(f"--backend={name}: unknown backend")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sglang_tune(**suite): a Python suite: the server space and settings "
                                       "for the sglang_server / sglang_bench fixtures (same fields as a YAML suite)")
    options = parse_options(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "sglang_tune_run_id" in workerinput:
        run_id = workerinput["sglang_tune_run_id"]
        started = workerinput["sglang_tune_started_at"]
        controller = False
    else:
        from pytest_sglang_tune.results import new_run_id

        run_id = new_run_id()
        started = now_iso()
        controller = True
    lease_dir = Path(tempfile.gettempdir()) / f"sglang-tune-{run_id}"
    config.stash[STATE] = State(options=options, run_id=run_id, controller=controller, lease_dir=lease_dir,
                                started_at=started, argv=list(sys.argv))
    if controller:
        config.pluginmanager.register(ResultCollector(config), "sglang-tune-results")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "sglang-tune-xdist")


class _XdistHooks:
    def pytest_configure_node(self, node: Any) -> None:
        st = get_state(node.config)
        node.workerinput["sglang_tune_run_id"] = st.run_id
        node.workerinput["sglang_tune_started_at"] = st.started_at


@pytest.hookimpl(hookwrapper=True)
def pytest_cmdline_main(config: pytest.Config) -> Iterator[None]:
    # A config's tests must stay on one worker: with -n and no --dist of the user's, use xdist's loadgroup
    # (xdist itself turns "no" into "load" in its own pytest_cmdline_main; this runs around it).
    user_dist = getattr(config.option, "dist", "no")
    yield
    if getattr(config.option, "numprocesses", None) and user_dist == "no":
        config.option.dist = "loadgroup"


# --- collection ------------------------------------------------------------------------------------------------

def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if any(fnmatch.fnmatch(file_path.name, p) for p in SUITE_PATTERNS):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


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
    """The flags of the SGLang that will run: introspected from the local launcher's Python when it can import
    SGLang (cached per interpreter), else None (``expand`` then uses the shipped table of the suite's version)."""
    st = get_state(config)
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
        _fill_metrics(self.record, out, self.suite, self.cfg.gpus)
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


def _fill_metrics(record: dict[str, Any], out: dict[str, Any], suite: Any, gpus: int) -> None:
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


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    tune_items = [it for it in items if isinstance(it, SuiteItem)]
    st = get_state(config)
    if not tune_items:
        return
    st.has_items = True
    resume = config.getoption("sglang_resume")
    if resume:
        path, done = load_resume(resume)
        for it in tune_items:
            prev = done.get(resume_key(it.record))
            if prev is not None:
                it.resumed = (path, prev)
    engine = get_engine(config)
    for it in tune_items:
        st.suite_files[it.suite.name] = str(it.suite.path)
        problem = engine.capacity_problem(it.cfg, it.suite.backend_settings(st.options.backend))
        if problem is None:
            continue
        if st.options.require_capacity:
            it.capacity_problem = problem
        else:
            it.add_marker(pytest.mark.skip(reason=problem))


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


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    key = _config_key(item)
    if key is None:
        return
    st = get_state(item.config)
    if st.engine is not None and st.engine.live is not None and _config_key(nextitem) != key:
        st.engine.release()


# --- results ---------------------------------------------------------------------------------------------------

class ResultCollector:
    """Controller-side: turns test reports into records (results.jsonl as each test ends)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        st = get_state(self.config)
        records: list[dict[str, Any]] = [v for k, v in report.user_properties if k == RESULT_KEY]  # type: ignore[misc]
        if not records:
            return
        error: dict[str, Any] = next((v for k, v in reversed(report.user_properties) if k == ERROR_KEY), {})  # type: ignore[misc]
        # JUnit XML (and other readers of user_properties) get flat, redacted key metrics, not the whole record
        report.user_properties = [(k, v) for k, v in report.user_properties if k not in (RESULT_KEY, ERROR_KEY)]
        report.user_properties += junit_properties(records)
        pend = st.pending.setdefault(report.nodeid, {})
        pend["records"] = records
        if report.when == "setup":
            if report.skipped and error.get("status") == "infeasible":
                pend["status"], pend["reason"] = "infeasible", error.get("reason")
                pend["log_tail"] = error.get("log_tail", "")
            elif report.skipped:
                pend["status"], pend["reason"] = "skipped", _skip_reason(report)
            elif report.failed:
                pend["status"] = error.get("status", "error")
                pend["reason"] = error.get("reason") or _short(report)
                pend["log_tail"] = error.get("log_tail", "")
        elif report.when == "call":
            if report.passed:
                pend["status"] = "passed"
            elif report.skipped:
                pend["status"], pend["reason"] = "skipped", _skip_reason(report)
            else:
                pend["status"] = "failed"
                pend["reason"] = error.get("reason") or _short(report)
                pend["log_tail"] = error.get("log_tail", "")
        elif report.when == "teardown":
            done = st.pending.pop(report.nodeid)
            if report.failed and done.get("status") in (None, "passed"):
                done["status"], done["reason"] = "error", "teardown failed: " + _short(report)
            _finish(st, done)


JUNIT_METRICS = ("output_throughput", "output_throughput_per_gpu", "request_throughput", "goodput", "error_rate",
                 "ttft_ms.p50", "ttft_ms.p99", "itl_ms.p50", "itl_ms.p95", "tpot_ms.mean", "e2e_ms.p99")


def junit_properties(records: list[dict[str, Any]]) -> list[tuple[str, object]]:
    from pytest_sglang_tune.grammar import parse_metric
    from pytest_sglang_tune.redact import redact

    props: list[tuple[str, object]] = []
    for i, rec in enumerate(records):
        prefix = "sglang" if len(records) == 1 else f"sglang.{i}"
        load = rec.get("load") or {}
        props += [(f"{prefix}.config_id", rec.get("config_id")),
                  (f"{prefix}.workload", (rec.get("workload") or {}).get("name")),
                  (f"{prefix}.load", ",".join(f"{k}={v}" for k, v in load.items() if v is not None))]
        metrics = rec.get("metrics") or {}
        for name in JUNIT_METRICS if metrics else ():
            value = parse_metric(name).value(metrics)
            if value is not None:
                props.append((f"{prefix}.{name}", round(value, 4)))
        if rec.get("slo_pass") is not None:
            props.append((f"{prefix}.slo_pass", rec["slo_pass"]))
    return redact(props)  # type: ignore[no-any-return]


def _finish(st: State, done: dict[str, Any]) -> None:
    from pytest_sglang_tune.redact import redact
    from pytest_sglang_tune.results import ResultsLog

    for rec in done["records"]:
        rec = dict(rec)
        rec["status"] = done.get("status") or "error"
        rec["reason"] = done.get("reason")
        if done.get("log_tail"):
            rec["log_tail"] = done["log_tail"]
        rec["finished_at"] = now_iso()
        rec = redact(rec)
        st.records.append(rec)
        if st.log is None:
            st.run_dir.mkdir(parents=True, exist_ok=True)
            st.log = ResultsLog(st.run_dir / "results.jsonl")
        st.log.append(rec)


def _skip_reason(report: pytest.TestReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


def _short(report: pytest.TestReport) -> str:
    text = report.longreprtext.strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "Error:" in ln or ln.startswith("E "):
            return ln.removeprefix("E ").strip()[:500]
    return (lines[-1] if lines else "")[:500]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    st = get_state(config)
    if st.engine is not None:
        st.engine.shutdown()
    if not st.controller:
        return
    for nodeid in list(st.pending):  # interrupted mid-test: keep what we know
        done = st.pending.pop(nodeid)
        done.setdefault("status", "error")
        done.setdefault("reason", "interrupted")
        _finish(st, done)
    if not st.records:
        return
    from pytest_sglang_tune.reporting import write_run_report

    st.report_paths = write_run_report(config, st, exitstatus)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    st = config.stash.get(STATE, None)
    if st is None or not st.controller or not st.report_paths:
        return
    from pytest_sglang_tune.report.terminal import summary_lines
    from pytest_sglang_tune.results import load_report

    tr = terminalreporter
    tr.section("sglang-tune: top configurations")
    report = load_report(st.report_paths["json"])
    for line in summary_lines(report):
        tr.write_line(line)
    for kind, path in st.report_paths.items():
        tr.write_line(f"{kind}: {path}")
    notes = getattr(st.engine.backend, "session_notes", None) if st.engine is not None else None
    for note in notes or ():
        tr.write_line(f"{st.options.backend}: {note}")


def pytest_unconfigure(config: pytest.Config) -> None:
    st = config.stash.get(STATE, None)
    if st is not None and st.engine is not None:
        st.engine.shutdown()
        close = getattr(st.engine.backend, "close", None)  # e.g. ome: delete the runtime/model we created
        if close is not None:
            close()
    if st is not None and st.controller:
        import shutil

        shutil.rmtree(st.lease_dir, ignore_errors=True)  # the run's GPU lease state
    if os.environ.get("SGLANG_TUNE_DEBUG"):
        print(f"sglang-tune: run {st.run_id if st else '?'} done", file=sys.stderr)


from pytest_sglang_tune.fixtures import (  # noqa: E402,F401
    pytest_generate_tests,
    sglang_bench,
    sglang_config,
    sglang_server,
)
from pytest_sglang_tune.reporting import pytest_sglang_tune_rank  # noqa: E402,F401
