"""pytest wiring: the hooks, and nothing else. Options live in ``options``, state in ``state``, suite items in
``items``, result collection in ``collector``, fixtures in ``fixtures``, report assembly in ``reporting``.

Heavy imports (load generator, backends, report writers) happen inside the hooks that need them; a pytest session
that collects no suite item touches no server, Docker or Kubernetes.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune import hookspecs
from pytest_sglang_tune.collector import ResultCollector, finish_pending
from pytest_sglang_tune.items import SuiteFile, SuiteItem, _config_key, load_resume, resume_key
from pytest_sglang_tune.options import parse_options
from pytest_sglang_tune.results import now_iso
from pytest_sglang_tune.state import STATE, State, finish_backend, get_engine, get_state

SUITE_PATTERNS = ("tune_*.yaml", "tune_*.yml")


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


def _asked_backend(config: pytest.Config) -> Any:
    """The engine, once its backend answered the capacity question: "could not ask" (unreachable, 401/403, not
    installed) ends the session with one message; "no capacity" is an answer (configs are skipped with it)."""
    from pytest_sglang_tune.errors import BackendUnavailable

    engine = get_engine(config)
    try:
        engine.capacity()
    except BackendUnavailable as exc:
        raise pytest.UsageError(exc.bare_message) from exc
    return engine


class _XdistHooks:
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: Any) -> None:
        """The controller asks the backend before workers start (a refusal would crash each worker instead)."""
        if get_state(config).options.backend != "sim":
            _asked_backend(config)

    def pytest_configure_node(self, node: Any) -> None:
        st = get_state(node.config)
        node.workerinput["sglang_tune_run_id"] = st.run_id
        node.workerinput["sglang_tune_started_at"] = st.started_at

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """A worker is done: keep its backend notes and the shared objects it created (see ``state.finish_backend``)."""
        st = get_state(node.config)
        out = (getattr(node, "workeroutput", None) or {}).get("sglang_tune") or {}
        st.worker_notes += [n for n in out.get("notes", ()) if n not in st.worker_notes]
        st.worker_created += [tuple(x) for x in out.get("created", ())]


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
    engine = _asked_backend(config)
    for it in tune_items:
        st.suite_files[it.suite.name] = str(it.suite.path)
        problem = engine.capacity_problem(it.cfg, it.suite.backend_settings(st.options.backend))
        if problem is None:
            continue
        if st.options.require_capacity:
            it.capacity_problem = problem
        else:
            it.add_marker(pytest.mark.skip(reason=problem))


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    key = _config_key(item)
    if key is None:
        return
    st = get_state(item.config)
    if st.engine is not None and st.engine.live is not None and _config_key(nextitem) != key:
        st.engine.release()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    st = get_state(config)
    finish_backend(config)
    if not st.controller:
        return
    for nodeid in list(st.pending):  # interrupted mid-test: keep what we know
        done = st.pending.pop(nodeid)
        done.setdefault("status", "error")
        done.setdefault("reason", "interrupted")
        finish_pending(st, done)
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
    notes = list(getattr(st.engine.backend, "session_notes", None) or ()) if st.engine is not None else []
    for note in st.worker_notes + [n for n in notes if n not in st.worker_notes]:
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
