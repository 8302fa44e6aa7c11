"""The simulated engine: ``dp_size`` scheduler replicas (:mod:`.scheduler`) behind SGLang's round-robin
dispatcher, with the front end's per-request cost (:mod:`.frontend`). The HTTP server (:mod:`.driver`) and the
virtual clock (:mod:`.virtual`) both run this one engine."""

from __future__ import annotations

import heapq

from pytest_sglang_tune.sim.core import EngineConfig, EngineStats, RequestState, SimRequest, StepRecord
from pytest_sglang_tune.sim.frontend import FrontEnd
from pytest_sglang_tune.sim.perf import StepTimer
from pytest_sglang_tune.sim.scheduler import Scheduler


class Engine:
    """``dp_size`` scheduler replicas behind a round-robin dispatcher (SGLang's default DP load balancing).

    ``frontend`` is the per-request cost before a replica sees a request (:mod:`.frontend`); requests wait
    for it in the engine, not in a replica's queue, as they wait in SGLang's tokenizer manager.
    """

    def __init__(
        self, config: EngineConfig, timer: StepTimer, *, record_steps: bool = False, frontend: FrontEnd | None = None
    ) -> None:
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
