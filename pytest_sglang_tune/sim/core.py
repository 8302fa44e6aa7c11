"""The discrete-event core of the simulated server: requests, steps, and an engine over DP replicas.

Nothing here reads a clock or does I/O. A driver tells the engine what time it is:

* :meth:`Engine.submit` enters a request at its arrival time; it reaches its scheduler replica after the
  front-end cost (:mod:`.frontend`: a fixed latency plus serial tokenization), at its ``ready`` time;
* :meth:`Engine.next_event_time` says when the next event happens (a step ends, a request becomes ready);
* :meth:`Engine.advance` handles every event at or before ``now`` in time order: completes steps, applies
  their effects (tokens, finished requests, KV frees), hands ready requests to their replica, and starts
  the next step back to back, in simulated time.

The wall-clock HTTP driver (:mod:`.driver`) calls these from an event loop; :mod:`.virtual` drives the same
engine on a :class:`VirtualClock` to replay a trace in a fraction of a second. For a given arrival trace the
result is bit-for-bit deterministic: step times come from a pure function of the batch shape, ties are broken
by request and replica order, and eviction by node creation order.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Protocol

from pytest_sglang_tune.sim.frontend import FrontEnd
from pytest_sglang_tune.sim.perf import StepShape, StepTimer

__all__ = [
    "Clock",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "RequestState",
    "SimRequest",
    "StepRecord",
    "VirtualClock",
]


class Clock(Protocol):
    """Seconds since the engine started; the wall clock for the HTTP server, virtual for prediction."""

    def now(self) -> float: ...


class VirtualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError(f"virtual time cannot go back ({t} < {self._t})")
        self._t = t


class RequestState:
    WAITING = "waiting"
    PREFILL = "prefill"  # being prefilled (possibly in chunks)
    RUNNING = "running"  # decoding
    FINISHED = "finished"
    ABORTED = "aborted"


class SimRequest:
    """One generation request as the scheduler sees it.

    ``output_ids`` is the whole planned output (its length is the number of tokens the request will get);
    ``max_new_tokens`` is the limit the client asked for, which the scheduler reserves KV for.
    """

    __slots__ = (
        "arrival",
        "cached_tokens",
        "computed",
        "fill",
        "finish_reason",
        "finish_time",
        "first_scheduled",
        "first_token_time",
        "handle",
        "input_ids",
        "kv_len",
        "max_new_tokens",
        "node",
        "out_len",
        "output_ids",
        "private",
        "ready",
        "replica",
        "retractions",
        "rid",
        "state",
        "tree_len",
    )

    def __init__(
        self,
        input_ids: list[int],
        output_ids: list[int],
        *,
        max_new_tokens: int | None = None,
        finish_reason: str = "length",
        handle: Any = None,
    ) -> None:
        if not input_ids:
            raise ValueError("a request needs at least one input token")
        self.input_ids = input_ids
        self.output_ids = output_ids
        self.max_new_tokens = max(len(output_ids), max_new_tokens or 0)
        self.finish_reason = finish_reason
        self.handle = handle
        self.rid = -1
        self.arrival = 0.0  # when the client sent it (TTFT and E2E count from here)
        self.ready = 0.0  # when its scheduler replica sees it (after the front-end cost)
        self.replica = 0
        self.state = RequestState.WAITING
        self.fill: list[int] = (
            input_ids  # what must be in the KV cache before decoding (input + output after a retraction)
        )
        self.computed = 0  # tokens of ``fill`` prefilled so far (cached prefix included)
        self.kv_len = 0  # tokens in the KV cache
        self.out_len = 0  # output tokens emitted
        self.cached_tokens = -1  # prefix-cache hit at first scheduling (-1: not scheduled yet)
        self.tree_len = 0  # tokens of this request held in the radix tree (locked via ``node``)
        self.node: Any = None
        self.private = 0  # KV tokens allocated to it outside the tree
        self.retractions = 0
        self.first_scheduled = -1.0
        self.first_token_time = -1.0
        self.finish_time = -1.0

    @property
    def target_len(self) -> int:
        return len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.state in (RequestState.FINISHED, RequestState.ABORTED)

    def __repr__(self) -> str:
        return (
            f"SimRequest(rid={self.rid}, in={len(self.input_ids)}, out={self.out_len}/{self.target_len}, "
            f"state={self.state})"
        )


@dataclass(frozen=True)
class EngineConfig:
    """The scheduler settings SGLang's flags resolve to (see :mod:`.config`)."""

    max_total_tokens: int
    max_running_requests: int
    chunked_prefill_size: int | None = 8192  # None: prompts are not split
    max_prefill_tokens: int = 16384
    page_size: int = 1
    schedule_policy: str = "fcfs"
    disable_radix_cache: bool = False
    mixed_steps: bool = False  # --enable-mixed-chunk: running requests decode inside prefill steps
    overlap_schedule: bool = True  # the next batch is formed while this one runs (SGLang's default)
    schedule_conservativeness: float = 1.0
    dp_size: int = 1
    seed: int = 0


@dataclass(slots=True)
class StepRecord:
    """One completed step of one replica (the engine's event log when ``record_steps`` is on)."""

    replica: int
    start: float
    end: float
    shape: StepShape
    running: int  # requests decoding after the step
    queued: int  # requests waiting after the step
    used_tokens: int  # KV tokens in use after the step (cache included)
    emitted: list[SimRequest] = field(default_factory=list)  # each got one token at ``end``
    finished: list[SimRequest] = field(default_factory=list)

    def key(self) -> tuple[Any, ...]:
        """A plain tuple for comparing event logs."""
        return (
            self.replica,
            self.start,
            self.end,
            self.shape,
            self.running,
            self.queued,
            self.used_tokens,
            tuple(r.rid for r in self.emitted),
            tuple(r.rid for r in self.finished),
        )


@dataclass(frozen=True)
class EngineStats:
    running: int
    queued: int
    used_tokens: int
    cache_tokens: int
    capacity: int
    retracted: int
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int

    @property
    def token_usage(self) -> float:
        return self.used_tokens / self.capacity if self.capacity else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class Engine:
    """``dp_size`` scheduler replicas behind a round-robin dispatcher (SGLang's default DP load balancing).

    ``frontend`` is the per-request cost before a replica sees a request (:mod:`.frontend`); requests wait
    for it in the engine, not in a replica's queue, as they wait in SGLang's tokenizer manager.
    """

    def __init__(
        self, config: EngineConfig, timer: StepTimer, *, record_steps: bool = False, frontend: FrontEnd | None = None
    ) -> None:
        from pytest_sglang_tune.sim.scheduler import Scheduler

        self.config = config
        self.timer = timer
        self.frontend = frontend or FrontEnd()
        self.replicas = [Scheduler(config, timer, i) for i in range(max(1, config.dp_size))]
        self.steps: list[StepRecord] | None = [] if record_steps else None
        self._next_rid = 0
        self._rr = 0
        self._pending: list[tuple[float, int, SimRequest]] = []  # (ready time, rid, request): in the front end
        self._tokenizer_free = 0.0

    def submit(
        self, req: SimRequest, now: float, *, received: float | None = None, tokenized: int | None = None
    ) -> None:
        """Enter ``req`` at ``now`` (times must not decrease between calls).

        ``received``: when the client's request arrived, if earlier than ``now`` (the HTTP server has spent real
        time on it already); ``tokenized``: input tokens the front end tokenizes (default all of them; 0 for
        requests sent as token ids).
        """
        if req.rid >= 0:
            raise ValueError(f"{req!r} was already submitted")
        need = len(req.input_ids) + req.target_len
        if need > self.config.max_total_tokens:
            raise ValueError(
                f"a request of {len(req.input_ids)} input and {req.target_len} output tokens can never fit the "
                f"KV cache of {self.config.max_total_tokens} tokens"
            )
        req.rid = self._next_rid
        self._next_rid += 1
        start = now if received is None else min(received, now)
        req.arrival = start
        fe = self.frontend
        n_tok = len(req.input_ids) if tokenized is None else tokenized
        done = max(start, self._tokenizer_free) + n_tok * fe.tokenize_us_per_token / 1e6
        self._tokenizer_free = done
        req.ready = max(now, done + fe.fixed_ms / 1e3)
        req.replica = self._rr
        self._rr = (self._rr + 1) % len(self.replicas)
        if req.ready <= now:
            self._enter(req)
        else:
            heapq.heappush(self._pending, (req.ready, req.rid, req))

    def _enter(self, req: SimRequest) -> None:
        replica = self.replicas[req.replica]
        replica.add(req)
        replica.maybe_start(req.ready, req.ready)

    def abort(self, req: SimRequest, now: float) -> None:
        """Drop ``req`` wherever it is and free its KV (a client went away)."""
        if req.rid < 0 or req.finished:
            return
        if req.state == RequestState.WAITING and req.ready > now:
            self._pending = [p for p in self._pending if p[2] is not req]
            heapq.heapify(self._pending)
            req.state = RequestState.ABORTED
            req.finish_time = now
            return
        replica = self.replicas[req.replica]
        replica.abort(req, now)

    def next_event_time(self) -> float | None:
        ends = [r.current.end for r in self.replicas if r.current is not None]
        if self._pending:
            ends.append(self._pending[0][0])
        return min(ends) if ends else None

    def advance(self, now: float, max_steps: int | None = None) -> list[StepRecord]:
        """Handle the events at or before ``now`` in time order; return the completed steps."""
        done: list[StepRecord] = []
        pending = self._pending
        while max_steps is None or len(done) < max_steps:
            best = None
            best_end = now
            for r in self.replicas:
                step = r.current
                if step is not None and step.end <= best_end and (best is None or step.end < best_end):
                    best, best_end = r, step.end
            if pending and pending[0][0] <= best_end and (best is None or pending[0][0] < best_end):
                self._enter(heapq.heappop(pending)[2])  # a request reaches its replica before the step ends
                continue
            if best is None:
                break
            record = best.complete()
            best.maybe_start(record.end, now)
            done.append(record)
        if self.steps is not None:
            self.steps.extend(done)
        return done

    def flush_cache(self) -> bool:
        """Empty the prefix caches; refused (False) while any request is queued or running, as in SGLang."""
        if self._pending or any(r.busy for r in self.replicas):
            return False
        for r in self.replicas:
            r.flush()
        return True

    @property
    def idle(self) -> bool:
        return not self._pending and not any(r.busy for r in self.replicas)

    def replica_stats(self) -> list[EngineStats]:
        """One :class:`EngineStats` per DP replica (SGLang reports scheduler metrics per DP rank)."""
        return [
            EngineStats(
                running=r.num_running,
                queued=len(r.waiting),
                used_tokens=r.used,
                cache_tokens=r.tree.total_size if r.tree else 0,
                capacity=r.capacity,
                retracted=r.total_retracted,
                prompt_tokens=r.prompt_tokens,
                cached_tokens=r.cached_prompt_tokens,
                generated_tokens=r.generated_tokens,
            )
            for r in self.replicas
        ]

    def stats(self) -> EngineStats:
        """All replicas together."""
        parts = self.replica_stats()
        return EngineStats(*(sum(getattr(p, f) for p in parts) for f in EngineStats.__dataclass_fields__))
