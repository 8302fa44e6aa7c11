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

from dataclasses import dataclass, field
from typing import Any, Protocol

from pytest_sglang_tune.sim.perf import StepShape

__all__ = [
    "Clock",
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
