"""Predict a whole suite on the sim's virtual clock: every config × workload × load, ranked under the suite's SLOs
and objective, with what measuring the grid for real would cost in GPU-hours.

Each point becomes a ``Result`` (``fidelity: "predicted"``, never mixed with measurements) built by the same
``points.with_measurement`` as a measured one, so SLO verdicts, cost_per_mtok and intervals follow the same rules,
and the ranking is ``ranking.rank``'s. A config the sim cannot start (too little KV memory, out of memory, a tp
size the model does not allow) is ``infeasible`` with the sim's reason. Configs run in worker processes
(``jobs``, default: every core); a perf model is built once per process and model shape.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from pytest_sglang_tune.engine import Measurement
from pytest_sglang_tune.grammar import Objective
from pytest_sglang_tune.points import interval_seed, new_result, point_name, with_measurement
from pytest_sglang_tune.results import Cost, Result
from pytest_sglang_tune.space import TuneConfig
from pytest_sglang_tune.suite import Suite

PREDICTED = "predicted"
# Bootstrap resamples of a predicted point's intervals (they only decide predicted ties; a measured point gets
# stats.BOOTSTRAP_RESAMPLES): the ends move by about 1/sqrt of this share of the interval; recorded per result.
PREDICT_RESAMPLES = 250


@dataclass
class ConfigPrediction:
    """One config's predicted points, and what deploying and measuring it would cost."""

    config: TuneConfig
    results: list[Result] = field(default_factory=list)
    deploy_s: float = 0.0
    infeasible: str | None = None
    points: int = 0                    # points simulated (each after the first on a fresh engine)

    @property
    def measure_s(self) -> float:
        return sum(r.cost.measure_s or 0.0 for r in self.results)

    @property
    def gpu_s(self) -> float:
        """GPU seconds of measuring this config for real: (deploy + every point) × its GPUs."""
        return (self.deploy_s + self.measure_s) * self.config.gpus if not self.infeasible else 0.0


@dataclass
class Prediction:
    suite: Suite
    gpu: str
    configs: list[ConfigPrediction]
    excluded: list[Any]
    elapsed_s: float = 0.0

    @property
    def results(self) -> list[Result]:
        return [r for c in self.configs for r in c.results]

    def ranking(self, margin: float | None = None) -> list[dict[str, Any]]:
        from pytest_sglang_tune.ranking import rank

        objectives: dict[str, Objective] = {self.suite.name: self.suite.objective}
        return rank(self.results, objectives) if margin is None else rank(self.results, objectives, margin=margin)

    @property
    def grid_gpu_s(self) -> float:
        return sum(c.gpu_s for c in self.configs)


def _argv(suite: Suite, cfg: TuneConfig, table: Any) -> list[str]:
    return ["--model-path", suite.model_path, "--served-model-name", suite.served_name, *table.to_argv(cfg.args)]


_CLIENTS: dict[tuple[Any, ...], Any] = {}
_PREPARED: dict[tuple[Any, ...], Any] = {}


def _client(vs: Any) -> Any:
    from pytest_sglang_tune.predict.point import VirtualClient
    from pytest_sglang_tune.sim.tokenizer import SimTokenizer

    cfg = vs.cfg
    key = (str(cfg.args.get("model_path")), cfg.args.get("tokenizer_path"), cfg.seed, cfg.context_len)
    if key not in _CLIENTS:
        tokenizer = SimTokenizer.load(cfg.args.get("tokenizer_path") if "tokenizer_path" in cfg.given else None,
                                      str(cfg.args["model_path"]), seed=cfg.seed)
        _CLIENTS[key] = VirtualClient(tokenizer, cfg.context_len)
    return _CLIENTS[key]


def predict_config(suite: Suite, cfg: TuneConfig, table: Any, env: dict[str, str]) -> ConfigPrediction:
    """Every point of one config (fresh engine per point: a real run flushes the cache between points)."""
    from pytest_sglang_tune.sim.models import SimConfigError
    from pytest_sglang_tune.sim.startup import predicted_startup_s
    from pytest_sglang_tune.sim.virtual import virtual_engine

    out = ConfigPrediction(cfg)
    argv = _argv(suite, cfg, table)
    try:
        vs = virtual_engine(argv, env)
    except (SimConfigError, ValueError, SystemExit) as exc:
        out.infeasible = f"{type(exc).__name__}: {exc}"
    version = suite.sglang_version or table.version
    if not out.infeasible:
        out.deploy_s = predicted_startup_s(vs.cfg)
    for wl in suite.workloads:
        if wl.max_load is not None:  # the config's highest load within the SLOs, bisected on the virtual clock
            from pytest_sglang_tune.search.maxload import bisect_max_load, summarize_max_load, summary_of

            base = summary_of(_new(suite, cfg, wl, 0, wl.loads[0], version), cfg)
            if out.infeasible:
                out.results.append(base.with_(status="infeasible", reason=out.infeasible))
                continue
            def probe(load: Any, wl: Any = wl) -> Result:
                return _point(out, suite, cfg, wl, 0, load, version, argv, env, vs).with_(fidelity="probe")

            probes, best = bisect_max_load(wl.max_load, probe)
            out.results += [*probes, summarize_max_load(wl.max_load, base, probes, best)]
            continue
        for index, load in enumerate(wl.loads):
            if out.infeasible:
                out.results.append(_new(suite, cfg, wl, index, load, version).with_(status="infeasible",
                                                                                    reason=out.infeasible))
                continue
            out.results.append(_point(out, suite, cfg, wl, index, load, version, argv, env, vs))
    return out


def _new(suite: Suite, cfg: TuneConfig, wl: Any, index: int, load: Any, version: str) -> Result:
    workload = wl.at_load(index)
    result = new_result(nodeid="", display_id=point_name(wl.name, cfg, load.label()), suite=suite,
                        cfg=cfg, workload=workload, load=load, backend=PREDICTED, sglang_version=version)
    return result.with_(fidelity=PREDICTED)


def _point(out: ConfigPrediction, suite: Suite, cfg: TuneConfig, wl: Any, index: int, load: Any, version: str,
           argv: list[str], env: dict[str, str], vs: Any) -> Result:
    """One point on the virtual clock (a fresh engine for every point after the first: a real run flushes the
    cache between points)."""
    from pytest_sglang_tune.metrics import point_intervals, summarize
    from pytest_sglang_tune.predict.point import NotPredicted, duration_of, simulate_point
    from pytest_sglang_tune.sim.virtual import virtual_engine

    workload = wl.at_load(index)
    result = _new(suite, cfg, wl, index, load, version)
    try:
        client = _client(vs)
        key = (client.tok.path, workload.content_hash, workload.num_requests, wl.name, index)
        if key not in _PREPARED:
            _PREPARED[key] = client.prepare(workload, suite.served_name)
        engine = virtual_engine(argv, env).engine if out.points else vs.engine
        out.points += 1
        point = simulate_point(engine, _PREPARED[key], workload, load, stream_interval=vs.cfg.stream_interval)
    except NotPredicted as exc:
        return result.with_(status="not_measured", reason=f"not predicted: {exc}")
    metrics = summarize(point, gpus=cfg.gpus, slos=suite.slos)
    seed = interval_seed(result.point)
    wanted = [str(suite.objective.metric), *(str(s.metric) for s in suite.slos)]  # what ranking reads
    confidence, method = point_intervals(point, wanted, gpus=cfg.gpus, slos=suite.slos, seed=seed,
                                         resamples=PREDICT_RESAMPLES)
    m = Measurement(metrics=metrics, warnings=tuple(point.warnings), confidence=confidence, confidence_method=method)
    result = with_measurement(result, m, suite, cfg.gpus)
    measure_s = duration_of(point)
    return result.with_(status="passed", perf_model=vs.perf_model,
                        cost=Cost(usd_per_mtok=result.cost.usd_per_mtok, deploy_s=out.deploy_s,
                                  measure_s=round(measure_s, 3), gpu_s=round(measure_s * cfg.gpus, 3), virtual=True))


def _predict_one(args: tuple[Suite, TuneConfig, Any, dict[str, str]]) -> ConfigPrediction:
    return predict_config(*args)


def predict_suite(suite: Suite, *, gpu: str | None = None, table: Any = None, jobs: int | None = None,
                  configs: Sequence[TuneConfig] | None = None) -> Prediction:
    """Predict every config of ``suite`` (or ``configs``) on ``gpu`` (default: the suite's ``backends.sim.gpu``)."""
    from pytest_sglang_tune.backends.sim import DEFAULT_SIM_GPU, sim_env
    from pytest_sglang_tune.space import expand

    started = time.perf_counter()
    # aiconfigurator-core warns once per data file it falls back on; the sim server logs it, a prediction need not
    logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)
    exp = expand(suite, table)
    settings = dict(suite.backend_settings("sim"))
    if gpu:
        settings["gpu"] = gpu
    gpu_name = str(settings.get("gpu", DEFAULT_SIM_GPU))
    chosen = list(configs) if configs is not None else list(exp.configs)
    num_gpus = max([8, *(c.gpus for c in chosen)])
    env = sim_env(settings, num_gpus=num_gpus, sglang_version=suite.sglang_version or exp.flags.version)
    work = [(suite, cfg, exp.flags, env) for cfg in chosen]
    jobs = max(1, min(jobs or (os.cpu_count() or 1), len(work) or 1))
    if jobs == 1:
        predicted = [_predict_one(w) for w in work]
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("fork")) as pool:
            predicted = list(pool.map(_predict_one, work, chunksize=max(1, len(work) // (jobs * 4))))
    return Prediction(suite, gpu_name, predicted, list(exp.excluded), time.perf_counter() - started)


def load_and_predict(path: Path, *, gpu: str | None = None, jobs: int | None = None) -> Prediction:
    from pytest_sglang_tune.suite import load_suite

    return predict_suite(load_suite(path), gpu=gpu, jobs=jobs)
