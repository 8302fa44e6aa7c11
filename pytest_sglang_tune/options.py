"""Command-line and ini options → ``Options``: one parse function per option, errors that teach.

``Options`` is the parsed settings object of a run. Backends receive it (inside a ``BackendContext``) and never
call ``config.getoption`` themselves, so the ini fallback and the validation here apply to every backend.
Precedence: command line > ini > default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.stats import DEFAULT_TIE_MARGIN

_BACKEND_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class Options:
    """Everything a run was asked to do, validated."""

    backend: str = "sim"
    gpus: int | None = None
    report_dir: Path = Path("reports")
    strict_slo: bool = False
    require_capacity: bool = False
    ready_timeout: float | None = None
    launcher: str | None = None
    slos: tuple[Any, ...] | None = None       # --sglang-slo: replaces every suite's SLOs
    objective: Any = None                     # --sglang-objective
    gpu_hour_price: float | None = None
    baseline: Path | None = None
    fail_on: tuple[Any, ...] = ()
    allow_different: bool = False             # --sglang-allow-different: compare with a baseline of another setup
    tie_margin: float = DEFAULT_TIE_MARGIN
    loadgen_procs: int = 1
    progress_interval: float = 30.0           # no terminal (CI): a progress line at most every N s
    repeats: int | None = None
    resume: str | None = None
    benchmark_json: Path | None = None
    benchmark_autosave: bool = False
    # docker
    image: str | None = None
    fake_gpus: int | None = None
    docker_network: str | None = None
    hf_cache: str | None = None
    # ome
    kubeconfig: str | None = None
    namespace: str | None = None
    ome_url: str = "auto"
    sweep: bool = False
    prometheus_url: str | None = None         # ome: DCGM exporter series for GPU telemetry
    # search (see pytest_sglang_tune.search)
    search: str = "grid"
    budget: Any = None                        # search.budget.Budget
    early_stop: bool = False                  # grid: skip a config's higher loads once an SLO is missed
    predict_gpu: str | None = None            # the sim GPU to predict for (docker/local/ome)

    def apply(self, suite: Any) -> Any:
        """The suite as this run sees it: command-line SLOs/objective/price/repeats override the suite's."""
        changes: dict[str, Any] = {}
        if self.slos is not None:
            changes["slos"] = self.slos
        if self.objective is not None:
            changes["objective"] = self.objective
        if self.gpu_hour_price is not None:
            changes["gpu_hour_price"] = self.gpu_hour_price
        if self.repeats is not None:
            changes["repeats"] = self.repeats
        return replace(suite, **changes) if changes else suite


def _opt(config: pytest.Config, name: str, ini: str | None = None) -> Any:
    v = config.getoption(name)
    if v is None and ini:
        v = config.getini(ini)
    return v


def parse_backend(value: str, known: tuple[str, ...], extensible: bool) -> str:
    """A backend name: a built-in one, or any well-formed name when a plugin implements
    ``pytest_sglang_tune_make_backend`` (it is then checked when the backend is made)."""
    if value in known or (extensible and _BACKEND_NAME.match(value)):
        return value
    raise pytest.UsageError(f"--backend={value!r} is not a valid backend. Valid backends: {', '.join(known)}"
                            + (" (or one a plugin provides through pytest_sglang_tune_make_backend)."
                               if extensible else "."))


def _whole(value: Any, option: str, *, minimum: int = 0, what: str = "a whole number of GPUs") -> int | None:
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = minimum - 1
    if n < minimum:
        raise pytest.UsageError(f"{option}={value!r} is not valid: give {what} >= {minimum}.")
    return n


def parse_gpus(value: Any) -> int | None:
    return _whole(value, "--gpus")


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


def parse_progress_interval(value: Any) -> float:
    """``--sglang-progress-interval``: seconds >= 0 between plain progress lines when there is no terminal."""
    if value in (None, ""):
        return 30.0
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = -1.0
    if not t >= 0:
        raise pytest.UsageError(f"--sglang-progress-interval={value!r} is not valid: give seconds >= 0 (default 30).")
    return t


def parse_tie_margin(value: Any) -> float:
    """``2%`` or ``0.02`` → 0.02; between 0 and 50 %."""
    if value in (None, ""):
        return DEFAULT_TIE_MARGIN
    text = str(value).strip()
    try:
        margin = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        margin = -1.0
    if not 0.0 <= margin <= 0.5:
        raise pytest.UsageError(f"--sglang-tie-margin={value!r} is not valid: give a share between 0 and 50%, "
                                "e.g. 2% or 0.02.")
    return margin


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
    repeats = _whole(config.getoption("sglang_repeats"), "--sglang-repeats", minimum=1, what="a number")
    if repeats is not None:
        out["repeats"] = repeats
    procs = _whole(config.getoption("sglang_loadgen_procs"), "--sglang-loadgen-procs", minimum=1, what="a number")
    if procs is not None:
        out["loadgen_procs"] = procs
    return out


def parse_options(config: pytest.Config, known_backends: tuple[str, ...], extensible: bool) -> Options:
    bench_json = config.getoption("sglang_benchmark_json")
    return Options(
        **parse_grammar_options(config),
        backend=parse_backend(str(_opt(config, "sglang_backend", "sglang_backend") or "sim"), known_backends,
                              extensible),
        gpus=parse_gpus(_opt(config, "sglang_gpus", "sglang_gpus")),
        report_dir=Path(str(_opt(config, "sglang_report_dir", "sglang_report_dir") or "reports")),
        strict_slo=bool(_opt(config, "sglang_strict_slo", "sglang_strict_slo")),
        require_capacity=bool(config.getoption("sglang_require_capacity")),
        ready_timeout=parse_timeout(_opt(config, "sglang_ready_timeout", "sglang_ready_timeout")),
        progress_interval=parse_progress_interval(_opt(config, "sglang_progress_interval",
                                                       "sglang_progress_interval")),
        launcher=config.getoption("sglang_launcher"),
        allow_different=bool(config.getoption("sglang_allow_different")),
        tie_margin=parse_tie_margin(_opt(config, "sglang_tie_margin", "sglang_tie_margin")),
        resume=config.getoption("sglang_resume"),
        benchmark_json=Path(bench_json) if bench_json else None,
        benchmark_autosave=bool(config.getoption("sglang_benchmark_autosave")),
        image=config.getoption("sglang_image"),
        fake_gpus=_whole(config.getoption("sglang_fake_gpus"), "--sglang-fake-gpus"),
        docker_network=config.getoption("sglang_docker_network"),
        hf_cache=config.getoption("sglang_hf_cache"),
        kubeconfig=config.getoption("sglang_kubeconfig"),
        namespace=config.getoption("sglang_namespace"),
        ome_url=config.getoption("sglang_ome_url") or "auto",
        sweep=bool(config.getoption("sglang_sweep")),
        prometheus_url=_opt(config, "sglang_prometheus_url", "sglang_prometheus_url") or None,
        **parse_search_options(config),
    )


def parse_search_options(config: pytest.Config) -> dict[str, Any]:
    from pytest_sglang_tune.search.budget import BudgetError, parse_budget
    from pytest_sglang_tune.search.strategies import STRATEGIES

    search = str(_opt(config, "sglang_search", "sglang_search") or "grid")
    if search not in STRATEGIES:
        raise pytest.UsageError(f"--sglang-search={search!r} is not valid. Valid strategies: {', '.join(STRATEGIES)}.")
    try:
        budget = parse_budget(config.getoption("sglang_budget"))
    except BudgetError as exc:
        raise pytest.UsageError(str(exc)) from None
    if search == "grid" and budget.text != "unlimited":
        raise pytest.UsageError(f"--sglang-budget={budget.text} needs a search strategy: add --sglang-search="
                                "random|tpe|halving|predicted (grid measures every config)")
    gpu = config.getoption("sglang_predict_gpu")
    if gpu:
        from pytest_sglang_tune.sim.gpus import known_gpu

        try:
            gpu = known_gpu(gpu)
        except ValueError as exc:
            raise pytest.UsageError(f"--sglang-predict-gpu={exc}") from None
    return {"search": search, "budget": budget, "early_stop": bool(config.getoption("sglang_early_stop")),
            "predict_gpu": gpu}


def add_options(parser: pytest.Parser) -> None:
    """Every option and ini key of the plugin (``--backend`` and ``--gpus`` as the design card spells them)."""
    g = parser.getgroup("sglang-tune", "SGLang tuning (pytest-sglang-tune)")
    g.addoption("--backend", dest="sglang_backend", default=None,
                help="where suites deploy SGLang: sim (default), local, docker, ome, or one a plugin adds")
    g.addoption("--gpus", dest="sglang_gpus", default=None,
                help="GPUs the whole run may use at once (default: sim 8 virtual; local/docker: detected)")
    g.addoption("--sglang-report-dir", default=None, help="where reports/<run-id>/ go (default: reports)")
    g.addoption("--sglang-strict-slo", action="store_true", default=None,
                help="fail tests whose point misses an SLO (default: record slo_pass=false and rank it infeasible)")
    g.addoption("--sglang-require-capacity", action="store_true", default=None,
                help="configs that need more GPUs than available are errors instead of skips")
    g.addoption("--sglang-ready-timeout", default=None,
                help="seconds to wait for a server to become ready (default: sim 120, others 1800)")
    g.addoption("--sglang-progress-interval", default=None, metavar="S",
                help="without a terminal (CI): print a long step's progress once it has run S s, then every S s "
                     "(default 30; a terminal shows one line updated in place; -qq shows none)")
    g.addoption("--sglang-launcher", default=None,
                help="local backend: the launcher command (default: 'python -m sglang.launch_server')")
    g.addoption("--sglang-slo", action="append", default=None, metavar="SLO",
                help="an SLO ('ttft_ms.p99 <= 2000'); repeat for several; replaces every suite's SLOs")
    g.addoption("--sglang-objective", default=None, metavar="OBJECTIVE",
                help="'maximize: <metric>' or 'minimize: <metric>'; replaces every suite's objective")
    g.addoption("--sglang-gpu-hour-price", default=None, metavar="USD",
                help="price of one GPU-hour, for the cost_per_mtok metric (overrides the suite's gpu_hour_price)")
    g.addoption("--sglang-baseline", default=None, metavar="REPORT.json",
                help="compare each point with this earlier report (refused when the setups differ, as "
                     "sglang-tune diff does); with --sglang-fail-on, regressions fail")
    g.addoption("--sglang-fail-on", action="append", default=None, metavar="METRIC:±N%",
                help="with --sglang-baseline: fail a test whose metric moves past N%% ('output_throughput:-5%%')")
    g.addoption("--sglang-allow-different", action="store_true", default=False,
                help="with --sglang-baseline: compare even when backend, GPUs, model, perf model or workload "
                     "content differ (each difference becomes a warning of the point)")
    g.addoption("--sglang-tie-margin", default=None, metavar="SHARE",
                help="configs closer than this are tied (default 2%%: run-to-run noise on real GPUs)")
    s = parser.getgroup("sglang-tune-search", "SGLang tuning: searching the grid within a GPU budget")
    s.addoption("--sglang-search", default=None, metavar="STRATEGY",
                help="grid (default: every config), random, tpe (Optuna), halving (successive halving on fewer "
                     "requests), predicted (the sim's predicted best first)")
    s.addoption("--sglang-budget", default=None, metavar="BUDGET",
                help="with a search: N trials, Xgpu-h of GPU time (virtual on the sim), or P%% of the predicted "
                     "cost of the whole grid")
    s.addoption("--sglang-early-stop", action="store_true", default=False,
                help="grid: once a config misses an SLO that only gets worse with load, skip its higher loads "
                     "(searches always do)")
    s.addoption("--sglang-predict-gpu", default=None, metavar="GPU",
                help="the sim GPU that predictions stand for (default: the suite's backends.sim.gpu on the sim; "
                     "the detected GPU on docker/local)")
    g.addoption("--sglang-benchmark-json", default=None, metavar="PATH",
                help="also write the results in pytest-benchmark's JSON format (stats from per-request E2E)")
    g.addoption("--sglang-benchmark-autosave", action="store_true", default=False,
                help="also save into .benchmarks/<machine>/NNNN_<name>.json as pytest-benchmark does")
    g.addoption("--sglang-resume", default=None, metavar="RESULTS",
                help="skip points already measured (passed) in an earlier run's results.jsonl (or its run "
                     "directory) with the same key, and merge them into this run's report")
    g.addoption("--sglang-repeats", default=None, metavar="N",
                help="measure each point N times (overrides the suite's repeats); results get 95%% intervals")
    g.addoption("--sglang-loadgen-procs", default=None,
                help="load generator processes per point (default 1; more when one core cannot keep up)")
    d = parser.getgroup("sglang-tune-docker", "SGLang tuning: docker backend")
    d.addoption("--sglang-image", default=None, help="docker: the SGLang image (overrides the suite's)")
    d.addoption("--sglang-fake-gpus", default=None,
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
    k.addoption("--sglang-prometheus-url", default=None, metavar="URL",
                help="ome: a Prometheus that scrapes the DCGM exporter, for GPU telemetry of each point's pod")
    parser.addini("sglang_backend", "default --backend", default="sim")
    parser.addini("sglang_gpus", "default --gpus", default="")
    parser.addini("sglang_report_dir", "default --sglang-report-dir", default="reports")
    parser.addini("sglang_strict_slo", "default --sglang-strict-slo", type="bool", default=False)
    parser.addini("sglang_ready_timeout", "default --sglang-ready-timeout", default="")
    parser.addini("sglang_progress_interval", "default --sglang-progress-interval", default="")
    parser.addini("sglang_tie_margin", "default --sglang-tie-margin", default="")
    parser.addini("sglang_prometheus_url", "default --sglang-prometheus-url", default="")
    parser.addini("sglang_search", "default --sglang-search", default="grid")
