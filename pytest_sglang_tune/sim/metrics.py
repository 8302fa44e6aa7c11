"""Prometheus text for ``/metrics`` with SGLang's metric names, types and labels (``--enable-metrics``).

Names follow ``sglang-metrics-<version>.json`` of the reference data: scheduler gauges (running and queued
requests, KV usage, throughput, cache hit rate, capacity), tokenizer counters and histograms (tokens, requests,
TTFT, ITL, TPOT, E2E) and the queue-time histogram. Labels are those of the SGLang version the flags belong to
(0.5.23: ``model_name, engine_type, tp_rank, pp_rank, moe_ep_rank`` for scheduler metrics, ``model_name,
engine_type`` for request metrics, plus ``is_streaming`` where SGLang has it; 0.5.5.post3: fewer). The sim's
own series wear their own prefix so scrapers and dashboards are not misled: ``sglang_sim:lag_seconds{stat=last|max|
p99|mean}`` and ``sglang_sim:late_steps_total`` (not SGLang metrics).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from pytest_sglang_tune.sim.core import EngineStats

__all__ = ["Histogram", "SimMetrics"]

TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0)
ITL_BUCKETS = (
    0.002,
    0.004,
    0.006,
    0.008,
    0.010,
    0.015,
    0.020,
    0.025,
    0.030,
    0.035,
    0.040,
    0.060,
    0.080,
    0.100,
    0.200,
    0.400,
    0.600,
    0.800,
    1.0,
    2.0,
    4.0,
    6.0,
    8.0,
)
E2E_BUCKETS = (
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    2.0,
    4.0,
    6.0,
    8.0,
    10.0,
    20.0,
    40.0,
    60.0,
    80.0,
    100.0,
    200.0,
    400.0,
    800.0,
)
QUEUE_BUCKETS = (
    0.0,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    3.0,
    4.0,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    70.0,
    80.0,
    90.0,
    100.0,
    200.0,
    300.0,
    400.0,
    500.0,
    600.0,
    700.0,
    800.0,
    900.0,
    1000.0,
    1200.0,
    1400.0,
    1600.0,
    1800.0,
    2000.0,
    2500.0,
    3000.0,
)


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v)}.0"
    return repr(float(v))


def _labels(d: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in d.items()) + "}"


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str, labels: dict[str, str]) -> list[str]:
        out = []
        cum = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cum += c
            le = "+Inf" if bound == float("inf") else _fmt(bound)
            out.append(f"{name}_bucket{_labels({**labels, 'le': le})} {_fmt(cum)}")
        out.append(f"{name}_sum{_labels(labels)} {_fmt(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {_fmt(self.count)}")
        return out


class SimMetrics:
    """Counters and histograms fed by the server; gauges read from the engine at scrape time."""

    def __init__(self, *, version: str, model_name: str, dp_size: int = 1) -> None:
        self.new_labels = not version.startswith("0.5.5")
        self.model_name = model_name
        self.dp_size = dp_size
        base = {"model_name": model_name, "engine_type": "unified"}
        if self.new_labels:
            self.sched_labels = {**base, "tp_rank": "0", "pp_rank": "0", "moe_ep_rank": "0"}
            self.tok_labels = dict(base)
        else:
            self.sched_labels = {**base, "tp_rank": "0", "pp_rank": "0"}
            self.tok_labels = {"model_name": model_name}
        self.counters: dict[tuple[str, bool], float] = {}
        self.aborted = 0
        self.cached_total = 0
        self.ttft = {s: Histogram(TTFT_BUCKETS) for s in (True, False)}
        self.e2e = {s: Histogram(E2E_BUCKETS) for s in (True, False)}
        self.tpot = {s: Histogram(ITL_BUCKETS) for s in (True, False)}
        self.itl = Histogram(ITL_BUCKETS)
        self.queue = Histogram(QUEUE_BUCKETS)
        self.gen_throughput = 0.0

    def add(self, name: str, streaming: bool, value: float) -> None:
        key = (name, streaming)
        self.counters[key] = self.counters.get(key, 0.0) + value

    def request_done(
        self,
        *,
        streaming: bool,
        prompt: int,
        completion: int,
        cached: int,
        e2e: float,
        ttft: float,
        queue: float,
        aborted: bool = False,
    ) -> None:
        self.add("prompt_tokens", streaming, prompt)
        self.add("generation_tokens", streaming, completion)
        self.add("num_requests", streaming, 1)
        self.cached_total += cached
        if aborted:
            self.aborted += 1
            return
        self.e2e[streaming].observe(e2e)
        if ttft >= 0:
            self.ttft[streaming].observe(ttft)
        if completion > 1 and ttft >= 0:
            self.tpot[streaming].observe((e2e - ttft) / (completion - 1))
        self.queue.observe(max(0.0, queue))

    def render(self, stats: list[EngineStats], *, context_len: int, page_size: int, lag: dict[str, Any]) -> str:
        lines: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")

        per_rank = [
            ({**self.sched_labels, "dp_rank": str(i)} if self.dp_size > 1 else self.sched_labels, s)
            for i, s in enumerate(stats)
        ]
        gauges: list[tuple[str, str, Any]] = [
            ("num_running_reqs", "The number of running requests.", lambda s: s.running),
            ("num_queue_reqs", "The number of requests in the waiting queue.", lambda s: s.queued),
            ("num_used_tokens", "The number of used tokens.", lambda s: s.used_tokens),
            ("token_usage", "The token usage.", lambda s: round(s.token_usage, 6)),
            ("gen_throughput", "The generation throughput (token/s).", lambda s: self.gen_throughput / len(stats)),
            ("cache_hit_rate", "The prefix cache hit rate.", lambda s: round(s.cache_hit_rate, 6)),
            ("num_retracted_reqs", "The number of retracted requests.", lambda s: s.retracted),
        ]
        if self.new_labels:
            gauges += [
                ("max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.", lambda s: s.capacity),
                ("context_len", "The context length of the model.", lambda s: context_len),
                ("page_size", "The page size of the KV cache.", lambda s: page_size),
            ]
        for name, text, fn in gauges:
            head(f"sglang:{name}", "gauge", text)
            for labels, s in per_rank:
                lines.append(f"sglang:{name}{_labels(labels)} {_fmt(float(fn(s)))}")
        head("sglang:queue_time_seconds", "histogram", "Histogram of queueing time in seconds.")
        lines += self.queue.lines("sglang:queue_time_seconds", self.sched_labels)

        def stream_labels(streaming: bool) -> dict[str, str]:
            if not self.new_labels:
                return self.tok_labels
            return {**self.tok_labels, "is_streaming": "true" if streaming else "false"}

        variants = (True, False) if self.new_labels else (False,)
        for name, text in (
            ("prompt_tokens", "Number of prefill tokens processed."),
            ("generation_tokens", "Number of generation tokens processed."),
            ("num_requests", "Number of requests processed."),
        ):
            head(f"sglang:{name}_total", "counter", text)
            for streaming in variants:
                value = sum(
                    v for (n, s), v in self.counters.items() if n == name and (s == streaming or not self.new_labels)
                )
                lines.append(f"sglang:{name}_total{_labels(stream_labels(streaming))} {_fmt(value)}")
        head("sglang:cached_tokens_total", "counter", "Number of cached prompt tokens.")
        cache_labels = {**self.tok_labels, "cache_source": "device"} if self.new_labels else self.tok_labels
        lines.append(f"sglang:cached_tokens_total{_labels(cache_labels)} {_fmt(self.cached_total)}")
        head("sglang:num_aborted_requests_total", "counter", "Number of requests aborted.")
        lines.append(f"sglang:num_aborted_requests_total{_labels(self.tok_labels)} {_fmt(self.aborted)}")
        hists: list[tuple[str, str, dict[bool, Histogram]]] = [
            ("time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft),
            ("e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds", self.e2e),
        ]
        if self.new_labels:
            hists.append(
                ("request_time_per_output_token_seconds", "Histogram of time per output token in seconds.", self.tpot)
            )
        for name, text, by_stream in hists:
            head(f"sglang:{name}", "histogram", text)
            if self.new_labels:
                for streaming in (True, False):
                    lines += by_stream[streaming].lines(f"sglang:{name}", stream_labels(streaming))
            else:
                merged = Histogram(by_stream[True].bounds)
                for h in by_stream.values():
                    merged.counts = [a + b for a, b in zip(merged.counts, h.counts, strict=True)]
                    merged.sum += h.sum
                    merged.count += h.count
                lines += merged.lines(f"sglang:{name}", self.tok_labels)
        head("sglang:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.")
        lines += self.itl.lines("sglang:inter_token_latency_seconds", self.tok_labels)
        head("sglang_sim:lag_seconds", "gauge", "Simulated server only: how late steps were emitted vs simulated time.")
        for stat in ("last", "max", "p99", "mean"):
            lines.append(
                f"sglang_sim:lag_seconds{_labels({**self.tok_labels, 'stat': stat})} {_fmt(float(lag[stat + '_s']))}"
            )
        head("sglang_sim:late_steps_total", "counter", "Simulated server only: steps emitted later than the tolerance.")
        lines.append(f"sglang_sim:late_steps_total{_labels(self.tok_labels)} {_fmt(float(lag['late_steps']))}")
        return "\n".join(lines) + "\n"
