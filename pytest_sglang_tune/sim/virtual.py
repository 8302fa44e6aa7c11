"""Drive the scheduler core on a virtual clock: replay a trace in milliseconds of CPU, no HTTP, no sleeping.

This is what ``sglang-tune predict`` will build on, and what the directional tests use. :func:`virtual_engine`
resolves SGLang flags and the ``SGLANG_SIM_*`` environment exactly as the HTTP server does and builds the same
engine (same perf model, step timer and front-end cost, :mod:`.loader`). Two load shapes:

* :func:`run_open_loop` — requests arrive at given times (a Poisson trace, a recorded trace);
* :func:`run_closed_loop` — ``concurrency`` clients each send the next request as soon as the previous one
  finishes (the load generator's concurrency mode).

Results carry per-token emission times, so TTFT, ITL, TPOT, E2E and throughput come out exactly as a client on
a perfect network would measure them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_sglang_tune.sim.core import SimRequest, StepRecord, VirtualClock
from pytest_sglang_tune.sim.engine import Engine

__all__ = [
    "RunResult",
    "TraceRequest",
    "VirtualServer",
    "percentile",
    "run_closed_loop",
    "run_open_loop",
    "virtual_engine",
]

_PERF_CACHE: dict[tuple[Any, ...], tuple[Any, str | None]] = {}


@dataclass
class VirtualServer:
    """A resolved server and its engine on the virtual clock (what the HTTP server would run)."""

    cfg: Any  # config.ResolvedServer
    engine: Engine
    perf_model: dict[str, Any]  # /server_info's sim.perf_model


def virtual_engine(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    record_steps: bool = False,
    frontend: Any = None,
) -> VirtualServer:
    """SGLang flags + ``SGLANG_SIM_*`` settings -> the sim's engine on a virtual clock.

    Perf models are cached per (settings, model, GPU, parallelism, version), so a grid of configurations pays
    the ~1 s of building ``aiconfigurator-core``'s model once per distinct shape. ``frontend`` overrides the
    front-end cost (:class:`~.frontend.FrontEnd`; default SGLang's).
    """
    from pytest_sglang_tune.sim.config import SimSettings, parse_server_args, resolve_server
    from pytest_sglang_tune.sim.loader import build_engine, load_perf
    from pytest_sglang_tune.sim.perf import perf_model_info

    settings = SimSettings.from_env(env or {})
    values, given, version = parse_server_args(list(argv), settings.sglang_version)
    cfg = resolve_server(values, given, version, settings)
    key = (
        settings.perf_model,
        cfg.model,
        cfg.gpu.name,
        cfg.args.get("tp_size"),
        cfg.args.get("pp_size"),
        cfg.args.get("ep_size"),
        cfg.sglang_version,
    )
    if key not in _PERF_CACHE:
        _PERF_CACHE[key] = load_perf(cfg)
    perf, reason = _PERF_CACHE[key]
    engine = build_engine(cfg, perf, record_steps=record_steps, frontend=frontend)
    return VirtualServer(cfg, engine, perf_model_info(perf, cfg.gpu.name, reason))


@dataclass(frozen=True)
class TraceRequest:
    arrival: float
    input_ids: list[int]
    output_ids: list[int]
    max_new_tokens: int | None = None
    tokenized: int | None = None  # input tokens the front end tokenizes (None: all; 0: sent as token ids)


@dataclass
class RunResult:
    requests: list[SimRequest]
    token_times: dict[int, list[float]]  # rid -> emission time of each output token
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def duration(self) -> float:
        if not self.requests:
            return 0.0
        return max(r.finish_time for r in self.requests) - min(r.arrival for r in self.requests)

    def summary(self) -> dict[str, float]:
        """Client-side metrics (seconds, tokens per second)."""
        ttft = [r.first_token_time - r.arrival for r in self.requests]
        e2e = [r.finish_time - r.arrival for r in self.requests]
        itl: list[float] = []
        tpot: list[float] = []
        for r in self.requests:
            times = self.token_times[r.rid]
            itl.extend(b - a for a, b in itertools.pairwise(times))
            if len(times) > 1:
                tpot.append((times[-1] - times[0]) / (len(times) - 1))
        out_tokens = sum(len(self.token_times[r.rid]) for r in self.requests)
        dur = self.duration or 1.0
        return {
            "requests": float(len(self.requests)),
            "duration_s": dur,
            "output_throughput": out_tokens / dur,
            "request_throughput": len(self.requests) / dur,
            "ttft_p50": percentile(ttft, 50),
            "ttft_p99": percentile(ttft, 99),
            "itl_p50": percentile(itl, 50),
            "itl_p99": percentile(itl, 99),
            "tpot_mean": sum(tpot) / len(tpot) if tpot else 0.0,
            "e2e_p50": percentile(e2e, 50),
            "e2e_p99": percentile(e2e, 99),
            "queue_p50": percentile([r.first_scheduled - r.arrival for r in self.requests], 50),
            "cached_fraction": sum(max(0, r.cached_tokens) for r in self.requests)
            / max(1, sum(len(r.input_ids) for r in self.requests)),
            "retractions": float(sum(r.retractions for r in self.requests)),
            "steps": float(len(self.steps)),
        }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _collect(records: list[StepRecord], times: dict[int, list[float]]) -> None:
    for rec in records:
        for r in rec.emitted:
            times[r.rid].append(rec.end)


def run_open_loop(engine: Engine, trace: Iterable[TraceRequest], clock: VirtualClock | None = None) -> RunResult:
    """Submit each request at its arrival time, then run until every request has finished."""
    clock = clock or VirtualClock()
    times: dict[int, list[float]] = {}
    reqs: list[SimRequest] = []
    steps: list[StepRecord] = []
    for item in sorted(trace, key=lambda x: x.arrival):
        while (t := engine.next_event_time()) is not None and t <= item.arrival:
            clock.set(max(clock.now(), t))
            recs = engine.advance(t)
            _collect(recs, times)
            steps.extend(recs)
        clock.set(max(clock.now(), item.arrival))
        req = SimRequest(item.input_ids, item.output_ids, max_new_tokens=item.max_new_tokens)
        engine.submit(req, item.arrival, tokenized=item.tokenized)
        times[req.rid] = []
        reqs.append(req)
    while (t := engine.next_event_time()) is not None:
        clock.set(max(clock.now(), t))
        recs = engine.advance(t)
        _collect(recs, times)
        steps.extend(recs)
    return RunResult(reqs, times, steps)


def run_closed_loop(
    engine: Engine,
    make_request: Callable[[int], tuple[list[int], list[int]]],
    *,
    concurrency: int,
    num_requests: int,
    clock: VirtualClock | None = None,
    tokenized: bool = True,
) -> RunResult:
    """``concurrency`` clients; request ``i`` is ``make_request(i)`` -> (input ids, output ids).

    ``tokenized``: whether the front end tokenizes the prompts (False: they are sent as token ids).
    """
    clock = clock or VirtualClock()
    times: dict[int, list[float]] = {}
    reqs: list[SimRequest] = []
    steps: list[StepRecord] = []

    def send(now: float) -> None:
        i = len(reqs)
        input_ids, output_ids = make_request(i)
        req = SimRequest(input_ids, output_ids)
        engine.submit(req, now, tokenized=None if tokenized else 0)
        times[req.rid] = []
        reqs.append(req)

    for _ in range(min(concurrency, num_requests)):
        send(0.0)
    while (t := engine.next_event_time()) is not None:
        clock.set(max(clock.now(), t))
        recs = engine.advance(t)
        _collect(recs, times)
        steps.extend(recs)
        for rec in recs:
            for _ in rec.finished:
                if len(reqs) < num_requests:
                    send(rec.end)
    return RunResult(reqs, times, steps)
