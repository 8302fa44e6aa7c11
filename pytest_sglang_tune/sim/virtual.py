"""Drive the scheduler core on a virtual clock: replay a trace in milliseconds of CPU, no HTTP, no sleeping.

This is what ``sglang-tune predict`` will build on, and what the directional tests use. Two load shapes:

* :func:`run_open_loop` — requests arrive at given times (a Poisson trace, a recorded trace);
* :func:`run_closed_loop` — ``concurrency`` clients each send the next request as soon as the previous one
  finishes (the load generator's concurrency mode).

Results carry per-token emission times, so TTFT, ITL, TPOT, E2E and throughput come out exactly as a client on
a perfect network would measure them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pytest_sglang_tune.sim.core import Engine, SimRequest, StepRecord, VirtualClock

__all__ = ["RunResult", "TraceRequest", "percentile", "run_closed_loop", "run_open_loop"]


@dataclass(frozen=True)
class TraceRequest:
    arrival: float
    input_ids: list[int]
    output_ids: list[int]
    max_new_tokens: int | None = None


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
        engine.submit(req, item.arrival)
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
) -> RunResult:
    """``concurrency`` clients; request ``i`` is ``make_request(i)`` -> (input ids, output ids)."""
    clock = clock or VirtualClock()
    times: dict[int, list[float]] = {}
    reqs: list[SimRequest] = []
    steps: list[StepRecord] = []

    def send(now: float) -> None:
        i = len(reqs)
        input_ids, output_ids = make_request(i)
        req = SimRequest(input_ids, output_ids)
        engine.submit(req, now)
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
