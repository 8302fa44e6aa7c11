"""One point on the sim's virtual clock: the suite's exact requests through the sim's own engine, measured as the
load generator measures them. No HTTP and no sleeping: the same physics as the sim server (same flag resolution,
perf model, scheduler and front-end cost, :func:`pytest_sglang_tune.sim.virtual.virtual_engine`), the same request
stream (``loadgen.schedule``: prompts, shared prefixes, datasets, traces, open-loop arrival times) and the same
statistics (``metrics.summarize`` over ``RequestSample`` values, SSE chunks as the server would send them).

What differs from a sim run over HTTP: no network or client time (tens of µs), and requests of one point do not
interleave with another point's. Multi-turn sessions (``turns > 1``) are not predicted yet.
"""

from __future__ import annotations

import asyncio
import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_sglang_tune.loadgen.prompts import ChatCalibration, PreparedRequest, calibrate_chat
from pytest_sglang_tune.loadgen.samples import PointResult, RequestSample
from pytest_sglang_tune.loadgen.schedule import open_loop_offsets, requests_of
from pytest_sglang_tune.loadgen.windows import finish_point
from pytest_sglang_tune.loadgen.workload import Load, Workload


class NotPredicted(Exception):
    """The point cannot be predicted (a workload shape the virtual clock does not run)."""


@dataclass(frozen=True)
class Prepared:
    """A workload's requests as the sim's engine sees them: token ids in, the output it will produce."""

    input_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    tokenized: int | None  # input tokens the front end tokenizes (0: sent as token ids)
    requested_input: int
    requested_output: int
    warmup: bool


class VirtualClient:
    """Turns a workload's prepared requests into what the sim's engine is given, with the sim's tokenizer and the
    same output plan (length, stop) the sim server would make for each body."""

    def __init__(self, tokenizer: Any, context_len: int) -> None:
        self.tok = tokenizer
        self.context_len = context_len
        self._cal: dict[float, ChatCalibration] = {}

    def calibration(self, workload: Workload) -> ChatCalibration | None:
        """What the load generator's probes would find on this server (chat only)."""
        if workload.endpoint != "chat":
            return None
        key = float(workload.input_len.mean)
        if key not in self._cal:
            async def count(text: str) -> int:
                return len(self.tok.encode(self.tok.apply_chat_template([{"role": "user", "content": text}])))
            self._cal[key] = asyncio.run(calibrate_chat(count, key))[0]
        return self._cal[key]

    def prepare(self, workload: Workload, model: str) -> list[Prepared]:
        """Warm-up then measured requests, in send order."""
        if workload.turns > 1:
            raise NotPredicted(f"workload {workload.name!r}: multi-turn sessions (turns={workload.turns}) are not "
                               "predicted yet")
        cal = self.calibration(workload)
        out = []
        for warmup in (True, False):
            for r in requests_of(workload, model, warmup=warmup, calibration=cal):
                out.append(self._one(r))
        return out

    def _one(self, r: PreparedRequest) -> Prepared:
        body = json.loads(r.body)
        if r.path.endswith("/chat/completions"):
            ids, tokenized = self.tok.encode(self.tok.apply_chat_template(body["messages"])), None
        elif r.path.endswith("/completions"):
            prompt = body["prompt"]
            ids, tokenized = (list(prompt), 0) if isinstance(prompt, list) else (self.tok.encode(prompt), None)
        else:  # /generate
            ids, tokenized = (list(body["input_ids"]), 0) if body.get("input_ids") is not None else \
                (self.tok.encode(body["text"]), None)
        params = body.get("sampling_params") or body
        max_new = params.get("max_new_tokens") or params.get("max_completion_tokens") or params.get("max_tokens")
        max_new = int(max_new) if max_new else self.context_len - len(ids)
        plan = self.tok.plan_output(ids, max_new, ignore_eos=bool(params.get("ignore_eos")),
                                    min_new_tokens=int(params.get("min_tokens") or params.get("min_new_tokens") or 0))
        return Prepared(tuple(ids), tuple(plan.output_ids), tokenized, r.input_tokens, r.output_tokens, r.warmup)


def _chunks(times: Sequence[float], interval: int) -> tuple[list[float], list[int]]:
    """The SSE chunks a client sees after the first token: as the sim server sends them (a chunk once
    ``stream_interval`` tokens are pending, and the last one)."""
    chunk_times: list[float] = []
    chunk_tokens: list[int] = []
    pending = 0
    for i, t in enumerate(times[1:], start=1):
        pending += 1
        if pending >= interval or i == len(times) - 1:
            chunk_times.append(t)
            chunk_tokens.append(pending)
            pending = 0
    return chunk_times, chunk_tokens


def simulate_point(engine: Any, prepared: Sequence[Prepared], workload: Workload, load: Load, *,
                   stream_interval: int = 1) -> PointResult:
    """Run a point's requests on ``engine`` (fresh) on the virtual clock: warm-up requests closed-loop first, then
    the measured ones closed-loop at ``load.concurrency`` or open-loop on the workload's arrival times (capped
    by ``load.concurrency``). Returns what the load generator would have measured."""
    from pytest_sglang_tune.sim.core import SimRequest

    warm = [p for p in prepared if p.warmup]
    measured = [p for p in prepared if not p.warmup]
    samples: list[RequestSample] = []
    times: dict[int, list[float]] = {}
    live: dict[int, tuple[SimRequest, RequestSample]] = {}

    def submit(p: Prepared, now: float, intended: float) -> None:
        req = SimRequest(list(p.input_ids), list(p.output_ids), max_new_tokens=len(p.output_ids))
        engine.submit(req, now, tokenized=p.tokenized)
        sample = RequestSample(p.requested_input, p.requested_output, intended_send=intended, sent=now,
                               warmup=p.warmup)
        times[req.rid] = []
        live[req.rid] = (req, sample)
        samples.append(sample)

    def step(until: float | None) -> list[float]:
        """Advance the engine to its next event (or up to ``until``); returns the finish times it produced."""
        t = engine.next_event_time()
        if t is None or (until is not None and t > until):
            return []
        finished = []
        for rec in engine.advance(t):
            for r in rec.emitted:
                times[r.rid].append(rec.end)
            for r in rec.finished:
                req, sample = live.pop(r.rid)
                tt = times[r.rid]
                sample.first_token = tt[0] if tt else None
                sample.done = rec.end
                sample.chunk_times, sample.chunk_tokens = _chunks(tt, stream_interval)
                sample.input_tokens, sample.output_tokens = len(req.input_ids), len(tt)
                finished.append(rec.end)
        return finished

    now = 0.0
    queue = list(warm)  # warm-up: closed loop, all at once up to the concurrency
    width = min(load.concurrency or len(queue) or 1, len(queue) or 1)
    for p in queue[:width]:
        submit(p, now, now)
    queue = queue[width:]
    while live:
        for end in step(None):
            now = max(now, end)
            if queue:
                submit(queue.pop(0), end, end)
    t0 = now
    if load.request_rate is not None or workload.trace is not None:
        arrivals = [t0 + o for o in open_loop_offsets(workload, load.request_rate)][:len(measured)]
        cap = load.concurrency
        waiting: list[tuple[float, int]] = []  # released but over the cap: (intended time, index)
        nxt = 0
        while nxt < len(arrivals) or waiting or live:
            t_arr = arrivals[nxt] if nxt < len(arrivals) else None
            t_ev = engine.next_event_time()
            if t_arr is not None and (t_ev is None or t_arr <= t_ev):
                heapq.heappush(waiting, (t_arr, nxt))
                nxt += 1
                now = t_arr
            else:
                for end in step(None):
                    now = max(now, end)
            while waiting and (cap is None or len(live) < cap):
                intended, i = heapq.heappop(waiting)
                submit(measured[i], max(now, intended), intended)
    else:
        conc = load.concurrency or len(measured)
        queue = list(measured)
        for p in queue[:conc]:
            submit(p, t0, t0)
        queue = queue[conc:]
        while live:
            for end in step(None):
                if queue:
                    submit(queue.pop(0), end, end)
    sent = [s for s in samples if not s.warmup]
    started = min((s.sent for s in sent), default=t0)
    finished = max((s.done or s.sent for s in sent), default=t0)
    point = PointResult(samples=samples, started=started, finished=finished)
    return finish_point(point, workload)


def duration_of(point: PointResult) -> float:
    """Virtual seconds the whole point took, warm-up included (what it holds a GPU for)."""
    if not point.samples:
        return 0.0
    first = min(s.sent for s in point.samples)
    last = max((s.done or s.sent) for s in point.samples)
    return max(0.0, last - first)
