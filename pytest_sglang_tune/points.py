"""Building a point's ``Result``: from the suite before anything deploys, then the deployment's facts, then the
measurement. Each step returns a new ``Result``; items and the Python-suite fixtures use these, nothing else.
"""

from __future__ import annotations

import shlex
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_sglang_tune import __version__
from pytest_sglang_tune.engine import Live, Measurement
from pytest_sglang_tune.loadgen.workload import Load, Workload
from pytest_sglang_tune.metrics import sample_counts
from pytest_sglang_tune.redact import redact
from pytest_sglang_tune.results import Cost, Point, Result
from pytest_sglang_tune.space import TuneConfig
from pytest_sglang_tune.stats import METHOD_REPEATS, sample_size_warnings
from pytest_sglang_tune.suite import Suite

# Metrics every point gets an interval for, beside its suite's objective and SLO metrics.
KEY_METRICS = ("output_throughput", "output_throughput_per_gpu", "goodput", "ttft_ms.p99", "itl_ms.p95",
               "e2e_ms.p99", "error_rate")


def new_result(*, nodeid: str, display_id: str, suite: Suite, cfg: TuneConfig, workload: Workload,
               load: Load, backend: str, sglang_version: str) -> Result:
    """The fields every result has, known before anything deploys."""
    point = Point(suite=suite.name, workload=workload.name, content_hash=workload.content_hash,
                  concurrency=load.concurrency, request_rate=load.request_rate, config_id=cfg.config_id,
                  time_scale=load.time_scale)
    described: dict[str, Any] = {"endpoint": workload.endpoint, "num_requests": workload.num_requests}
    if workload.trace:
        from pytest_sglang_tune.loadgen.trace import trace_summary

        described["trace"] = trace_summary(workload)
    else:
        described.update({"input_len": str(workload.input_len), "output_len": str(workload.output_len)})
    return Result(
        point=point, test_id=nodeid, display_id=display_id, suite_file=str(suite.path), workload=described,
        server_args={k.lstrip("-"): v for k, v in cfg.server_args}, gpus_required=cfg.gpus, backend=backend,
        sglang_version=sglang_version, model=suite.model_path, tool_version=__version__,
        slos=tuple(str(s) for s in suite.slos), objective=str(suite.objective),
    )


def with_deployment(result: Result, live: Live) -> Result:
    """The result with the facts of the server that measured it (redacted)."""
    d = live.deployment
    facts: dict[str, Any] = {"launch_command": shlex.join(d.launch_command), "ready_s": round(live.ready_s, 3),
                             "endpoint_url": d.endpoint.base_url}
    for k in ("image", "image_digest", "gpus_used", "endpoint_mode", "inference_service", "namespace", "node",
              "pod", "container", "manifest"):
        if k in d.info:
            facts[k] = d.info[k]
    facts.update(live.facts.facts)
    return result.with_(deployment=redact(facts), sglang_version=live.sglang_version or result.sglang_version,
                        perf_model=live.facts.perf_model)


def wanted_metrics(suite: Suite) -> list[str]:
    """The metrics a point gets intervals for: the objective's, the SLOs', then the key metrics."""
    return list(dict.fromkeys([str(suite.objective.metric), *(str(s.metric) for s in suite.slos), *KEY_METRICS]))


def interval_seed(point: Point) -> int:
    """A stable seed per point, so a bootstrap can be repeated (it is recorded with the interval)."""
    return zlib.crc32(repr(point.key).encode())


def combine_runs(runs: Sequence[Measurement], suite: Suite) -> tuple[Measurement, dict[str, Any] | None]:
    """One point's measurement from its repeats: mean metrics, Student-t intervals over the repeats."""
    if len(runs) == 1:
        return runs[0], None
    from pytest_sglang_tune.analysis import combine_repeats, repeat_confidence

    blocks = [r.metrics for r in runs]
    combined = Measurement(
        metrics=combine_repeats(blocks), warnings=tuple(w for r in runs for w in r.warnings),
        e2e_s=tuple(x for r in runs for x in r.e2e_s), server_metrics=runs[-1].server_metrics,
        telemetry=runs[-1].telemetry, replay=runs[-1].replay, deploy_s=sum(r.deploy_s for r in runs),
        measure_s=sum(r.measure_s for r in runs), virtual=runs[-1].virtual,
        confidence=repeat_confidence(blocks, wanted_metrics(suite)),
        confidence_method={"method": METHOD_REPEATS, "repeats": len(runs)})
    repeats = {"n": len(runs), "redeploy": suite.redeploy,
               "mode": "redeployed" if suite.redeploy else "within one deployment"}
    return combined, repeats


def with_measurement(result: Result, m: Measurement, suite: Suite, gpus: int,
                     repeats: Mapping[str, Any] | None = None) -> Result:
    """The result with its metrics, intervals, SLO verdicts, cost and warnings."""
    metrics = dict(m.metrics)
    thr = metrics.get("output_throughput")
    price = suite.gpu_hour_price
    usd = price * gpus / 3600.0 / thr * 1e6 if price and thr else None
    metrics["cost_per_mtok"] = usd
    confidence = dict(m.confidence)
    ci = confidence.get("output_throughput")
    if usd is not None and price and ci and ci[0] > 0:  # cost falls as throughput rises
        confidence["cost_per_mtok"] = [price * gpus / 3600.0 / ci[1] * 1e6, price * gpus / 3600.0 / ci[0] * 1e6]
    slo_results = {str(s): s.check(metrics) for s in suite.slos}
    warnings = [*m.warnings, *sample_size_warnings(suite.slos, sample_counts(metrics))]
    return result.with_(metrics=metrics, confidence=confidence, confidence_method=m.confidence_method,
                        slo_results=slo_results, slo_pass=all(slo_results.values()), warnings=tuple(warnings),
                        e2e_s=m.e2e_s, server_metrics=m.server_metrics, repeats=repeats, telemetry=m.telemetry,
                        replay=m.replay,
                        cost=Cost(usd_per_mtok=usd, deploy_s=m.deploy_s, measure_s=m.measure_s,
                                  gpu_s=round((m.deploy_s + m.measure_s) * gpus, 3), virtual=m.virtual))


def resume_key(result: Result) -> tuple[Any, ...]:
    """What must be equal for an earlier measurement to stand for this point."""
    dep = result.deployment
    return (result.point.key, result.backend, result.sglang_version, dep.get("image"),
            dep.get("image_digest") if dep.get("image") else None, result.tool_version)


def point_name(workload_name: str, cfg: TuneConfig, label: str) -> str:
    """The readable name of a point in test ids and reports: ``chat[mem0.85-lpm-c64]`` (label ``max`` for a load
    search's summary)."""
    return f"{workload_name}[{cfg.display}-{label}]"


def measure_once(engine: Any, suite: Suite, cfg: TuneConfig, table: Any, workload: Workload, load: Load,
                 result: Result) -> Result:
    """``result``'s point measured once on the config's live server (deployed now if it is not): deployment
    facts, metrics with intervals, SLO verdicts, status ``passed``."""
    live = engine.ensure(suite, cfg, table)
    result = with_deployment(result, live)
    m = engine.measure(live, workload, load, suite.slos, cfg.gpus, wanted=wanted_metrics(suite),
                       seed=interval_seed(result.point))
    return with_measurement(result, m, suite, cfg.gpus).with_(status="passed")


def probe_result(result: Result, load: Load, display_id: str) -> Result:
    """A load search's probe of ``result``'s config and workload at ``load`` (``fidelity: probe``)."""
    from dataclasses import replace

    point = replace(result.point, concurrency=load.concurrency, request_rate=load.request_rate,
                    time_scale=load.time_scale, search=None)
    return result.with_(point=point, display_id=display_id, fidelity="probe", max_load=None)
