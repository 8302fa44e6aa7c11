"""One SGLang scheduler replica: continuous batching over a KV pool with a radix prefix cache.

Behaviour follows SGLang 0.5.x's ``Scheduler.get_next_batch_to_run`` in the respects the tuned flags touch:

* A step is a **prefill** batch when one can be formed (prefill has priority), else a **decode** step of every
  running request. By default (SGLang's) a prefill step carries no decodes: running requests stall behind it,
  so a long prompt or a large ``--chunked-prefill-size`` shows up as an ITL spike. With
  ``--enable-mixed-chunk`` (and chunked prefill on) the running requests decode inside each prefill step (a
  mixed step, priced as one forward pass) and, as in SGLang's ``PrefillAdder``, the step's prompt budget
  (``--chunked-prefill-size`` and ``--max-prefill-tokens``) shrinks by one token per running request.
  ``SGLANG_SIM_PREFILL=strict|mixed`` overrides the flag (sim only, see :mod:`.config`).
* Prefill batches follow ``PrefillAdder``: the request being chunked continues first; then waiting requests in
  ``--schedule-policy`` order are added while ``--max-running-requests`` allows, while the prompt budget
  ``--max-prefill-tokens`` lasts, and while the KV pool (free + evictable cache, minus the decode reservation
  of running requests: ``min(max_new - out, 4096) * new_token_ratio``) holds the request's uncached tokens and
  its own ``min(max_new, 4096)``. A prompt longer than what is left of ``--chunked-prefill-size`` is split;
  one request is chunked at a time.
* ``lpm`` orders the queue by cached-prefix length and pushes back requests that share an uncached prefix with
  one ahead of them (SGLang's in-batch prefix check, thresholds 32/32), so the second one hits the cache; the
  queue falls back to ``fcfs`` above 128 requests. ``random`` shuffles (seeded), ``lof`` serves the longest
  output first; other policies run as ``fcfs``.
* A decode step needs one KV slot per request; when the pool is short, requests are **retracted** (fewest
  output tokens first) back to the queue and ``new_token_ratio`` is re-estimated, as in ``retract_decode``.
* Finished and prefilled sequences are inserted into the radix tree; unlocked entries are evicted LRU.
* With the overlap scheduler (default; ``--disable-overlap-schedule`` turns it off) the next batch is formed
  while the current one runs, so a request that arrives during step k can join step k+2 at the earliest (the
  TTFT cost SGLang's maintainers name in sgl-project/sglang#2067: "we delayed the processing of the first
  batch in favor of launching the kernels for the next batch first"); an idle replica takes it at once.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from pytest_sglang_tune.sim.core import EngineConfig, RequestState, SimRequest, StepRecord
from pytest_sglang_tune.sim.perf import StepShape, StepTimer
from pytest_sglang_tune.sim.radix import RadixCache

_ENDED = (RequestState.FINISHED, RequestState.ABORTED)

__all__ = ["Scheduler"]

CLIP_MAX_NEW_TOKENS = 4096  # SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION
RETRACT_DECODE_STEPS = 20
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
LPM_MAX_QUEUE = 128
IN_BATCH_PREFIX_CHECK = 32
IN_BATCH_DEPRIORITIZE = 32


@dataclass(slots=True)
class _Step:
    start: float
    end: float
    shape: StepShape
    prefill: list[tuple[SimRequest, int]]
    decode: list[SimRequest]


class Scheduler:
    """See the module docstring."""

    def __init__(self, config: EngineConfig, timer: StepTimer, index: int = 0) -> None:
        self.cfg = config
        self.timer = timer
        self.index = index
        self.page = max(1, config.page_size)
        self.capacity = config.max_total_tokens - config.max_total_tokens % self.page
        self.tree: RadixCache | None = None if config.disable_radix_cache else RadixCache(self.page)
        self.private = 0
        self.waiting: list[SimRequest] = []
        self._waiting_keys: list[tuple[float, int]] = []
        self.running: list[SimRequest] = []
        self.chunked: SimRequest | None = None
        self.current: _Step | None = None
        self.init_ratio = min(INIT_NEW_TOKEN_RATIO * config.schedule_conservativeness, 1.0)
        self.min_ratio = min(self.init_ratio * MIN_NEW_TOKEN_RATIO_FACTOR, 1.0)
        self.ratio_decay = (self.init_ratio - self.min_ratio) / NEW_TOKEN_RATIO_DECAY_STEPS
        self.new_token_ratio = self.init_ratio
        self.rng = random.Random(f"sim-scheduler-{config.seed}-{index}")
        self._cutoff: float | None = None  # overlap: requests ready after this were not seen when the batch formed
        self.total_retracted = 0
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.generated_tokens = 0

    # -- pool accounting ---------------------------------------------------------------------------------------
    @property
    def used(self) -> int:
        return self.private + (self.tree.total_size if self.tree else 0)

    @property
    def available(self) -> int:
        free = self.capacity - self.used
        return free + (self.tree.evictable_size if self.tree else 0)

    @property
    def num_running(self) -> int:
        """Requests decoding or being prefilled."""
        inflight = {id(r) for r, _ in self.current.prefill} if self.current else set()
        if self.chunked is not None:
            inflight.add(id(self.chunked))
        return len(self.running) + len(inflight)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running or self.chunked or self.current)

    def _pages(self, n: int) -> int:
        return -(-n // self.page) * self.page

    def _grow(self, req: SimRequest, kv_len: int) -> None:
        """Allocate KV so that ``req`` can hold ``kv_len`` tokens (evicting cache if needed)."""
        need = self._pages(kv_len) - req.tree_len - req.private
        if need <= 0:
            return
        free = self.capacity - self.used
        if free < need and self.tree is not None:
            self.tree.evict(need - free)
        if self.capacity - self.used < need:  # pragma: no cover - budgets make this unreachable
            raise RuntimeError(f"KV pool overcommitted allocating {need} tokens for {req!r}")
        req.private += need
        self.private += need

    def _fits(self, req: SimRequest, avail: int) -> int:
        """How many more tokens ``req`` can prefill with ``avail`` free slots (page aligned)."""
        held = req.tree_len + req.private
        top = held + max(0, avail)
        return top - top % self.page - req.computed

    def _cache(self, req: SimRequest, key: list[int], now: float) -> None:
        """Move ``req``'s computed tokens ``key`` into the radix tree (SGLang's ``cache_unfinished_req``)."""
        tree = self.tree
        if tree is None:
            return
        aligned = len(key) - len(key) % self.page
        if aligned <= req.tree_len:
            return
        _, node = tree.insert(key, now)
        moved = aligned - req.tree_len
        req.private -= moved
        self.private -= moved
        tree.lock(node)
        if req.node is not None:
            tree.unlock(req.node)
        req.node, req.tree_len = node, aligned

    def _release(self, req: SimRequest, now: float, *, insert: bool) -> None:
        """Free ``req``'s KV: its sequence stays in the cache (unlocked) when ``insert``."""
        if insert and req.kv_len:
            seq = req.fill if req.kv_len <= len(req.fill) else req.input_ids + req.output_ids[: req.out_len]
            self._cache(req, seq[: req.kv_len], now)
        if req.node is not None and self.tree is not None:
            self.tree.unlock(req.node)
        self.private -= req.private
        req.private, req.node, req.tree_len = 0, None, 0

    # -- queue -------------------------------------------------------------------------------------------------
    def add(self, req: SimRequest) -> None:
        key = (req.ready, req.rid)
        i = bisect.bisect(self._waiting_keys, key)
        self._waiting_keys.insert(i, key)
        self.waiting.insert(i, req)
        req.state = RequestState.WAITING

    def _remove_waiting(self, req: SimRequest) -> None:
        i = bisect.bisect_left(self._waiting_keys, (req.ready, req.rid))
        assert self.waiting[i] is req
        del self.waiting[i]
        del self._waiting_keys[i]

    def abort(self, req: SimRequest, now: float) -> None:
        if req.state == RequestState.WAITING:
            self._remove_waiting(req)
        if self.chunked is req:
            self.chunked = None
        if req in self.running:
            self.running.remove(req)
        self._release(req, now, insert=False)
        req.state = RequestState.ABORTED
        req.finish_time = now

    def flush(self) -> None:
        if self.tree is not None:
            self.tree.reset()

    # -- stepping ----------------------------------------------------------------------------------------------
    def maybe_start(self, t: float, horizon: float) -> None:
        """Start the next step at ``t`` if there is work (or at the first arrival up to ``horizon``)."""
        if self.current is not None:
            return
        cutoff, self._cutoff = self._cutoff, None
        step = self._schedule(t, t if cutoff is None else cutoff)
        if step is None and cutoff is not None:  # nothing else to run: the loop takes the new requests now
            step = self._schedule(t, t)
        if step is None and self.waiting and not self.running and self.chunked is None:
            first = self._waiting_keys[0][0]
            if t < first <= horizon:
                step = self._schedule(first, first)
        self.current = step

    def _schedule(self, t: float, cutoff: float) -> _Step | None:
        prefill = self._prefill_batch(t, cutoff) if (self.waiting or self.chunked) else []
        decode: list[SimRequest] = []
        if self.running and (not prefill or self.cfg.mixed_steps):
            decode = self._prepare_decode(t)
            if not decode and not prefill and (self.waiting or self.chunked):
                prefill = self._prefill_batch(t, cutoff)  # everything was retracted: start over from the queue
        if not prefill and not decode:
            if not self.running:
                self.new_token_ratio = self.init_ratio
            return None
        p_tokens = sum(n for _, n in prefill)
        p_context = sum(r.computed for r, _ in prefill)
        shape = StepShape(
            prefill_reqs=len(prefill),
            prefill_tokens=p_tokens,
            prefill_context=p_context,
            decode_reqs=len(decode),
            decode_context=sum(r.kv_len for r in decode) + len(decode),
        )
        return _Step(t, t + self.timer.step_seconds(shape), shape, prefill, decode)

    def _order(self, queue: list[SimRequest]) -> list[SimRequest]:
        policy = self.cfg.schedule_policy
        if policy == "lpm" and self.tree is not None and len(queue) <= LPM_MAX_QUEUE:
            tree = self.tree
            hits = {r.rid: tree.peek(r.fill) for r in queue}
            pushed_back: set[int] = set()
            seen: set[tuple[int, ...]] = set()  # first tokens of the queued prompts ahead (in-batch check)
            for r in queue:
                if hits[r.rid] <= IN_BATCH_PREFIX_CHECK and len(r.fill) >= IN_BATCH_DEPRIORITIZE:
                    head = tuple(r.fill[:IN_BATCH_DEPRIORITIZE])
                    if head in seen:
                        pushed_back.add(r.rid)
                    else:
                        seen.add(head)
            return sorted(queue, key=lambda r: (r.rid in pushed_back, -hits[r.rid]))
        if policy == "random":
            shuffled = list(queue)
            self.rng.shuffle(shuffled)
            return shuffled
        if policy == "lof":
            return sorted(queue, key=lambda r: -r.max_new_tokens)
        return queue

    def _reserved(self) -> float:
        """KV the running requests may still need (SGLang's decode reservation)."""
        total = 0
        for r in self.running:
            total += min(r.max_new_tokens - r.out_len, CLIP_MAX_NEW_TOKENS)
        return total * self.new_token_ratio

    def _prefill_batch(self, t: float, cutoff: float) -> list[tuple[SimRequest, int]]:
        cfg = self.cfg
        batch: list[tuple[SimRequest, int]] = []
        rem_chunk = cfg.chunked_prefill_size if cfg.chunked_prefill_size and cfg.chunked_prefill_size > 0 else None
        rem_input = cfg.max_prefill_tokens
        if cfg.mixed_steps and rem_chunk is not None and self.running:  # PrefillAdder's mixed_with_decode_tokens
            rem_chunk -= len(self.running)
            rem_input -= len(self.running)
            if rem_chunk <= 0:
                return []
        reserve = self._reserved()
        chunked = self.chunked
        if chunked is not None:
            left = len(chunked.fill) - chunked.computed
            n = left if rem_chunk is None else min(left, rem_chunk)
            n = min(n, self._fits(chunked, int(self.available - reserve)))  # memory short: what fits, aligned
            if n <= 0:
                return []
            self._grow(chunked, chunked.computed + n)
            batch.append((chunked, n))
            if rem_chunk is not None:
                rem_chunk -= n
            rem_input -= n
            if n < left:
                return batch
            self.chunked = None
        n_admissible = bisect.bisect_right(self._waiting_keys, (cutoff, float("inf")))
        if n_admissible == 0 or len(self.running) + len(batch) >= cfg.max_running_requests:
            return batch
        if rem_chunk is not None and rem_chunk < self.page:
            return batch
        if self.available - reserve <= 0 and (self.running or batch):
            return batch
        tree = self.tree
        for req in self._order(self.waiting[:n_admissible]):
            if len(self.running) + len(batch) >= cfg.max_running_requests:
                break
            fill = req.fill
            prefix, node = (0, None)
            if tree is not None:
                prefix, node = tree.match_prefix(fill, t)
                if prefix >= len(fill):  # the last token must be computed to sample from it
                    prefix = (len(fill) - 1) - (len(fill) - 1) % self.page
                    node = None
                    if prefix:
                        prefix, node = tree.match_prefix(fill[:prefix], t)
            extend = len(fill) - prefix
            take = extend
            if rem_chunk is not None and extend > rem_chunk:
                take = rem_chunk - rem_chunk % self.page
            if node is not None and tree is not None:
                tree.lock(node)  # the matched prefix is no longer evictable: budget after locking it
            avail = self.available
            need = extend + min(req.max_new_tokens - req.out_len, CLIP_MAX_NEW_TOKENS)
            system_empty = not self.running and not batch and self.chunked is None
            refuse = (
                (need >= avail - reserve and not system_empty)  # SGLang's NO_TOKEN
                or self._pages(prefix + take) - prefix > avail  # cannot fit even alone yet
                or (extend > rem_input and bool(batch))
                or take <= 0
                or (take < extend and self.chunked is not None)  # one chunked request at a time
            )
            if refuse:
                if node is not None and tree is not None:
                    tree.unlock(node)
                break
            # admit
            self._remove_waiting(req)
            req.state = RequestState.PREFILL
            if req.first_scheduled < 0:
                req.first_scheduled = t
            if node is not None:
                req.node, req.tree_len = node, prefix
            req.computed = prefix
            if req.cached_tokens < 0:
                req.cached_tokens = prefix
                self.prompt_tokens += len(req.input_ids)
                self.cached_prompt_tokens += min(prefix, len(req.input_ids))
            self._grow(req, prefix + take)
            batch.append((req, take))
            reserve += min(req.max_new_tokens - req.out_len, CLIP_MAX_NEW_TOKENS)
            rem_input -= take
            if take < extend:
                self.chunked = req
                break
            if rem_chunk is not None:
                rem_chunk -= take
                if rem_chunk < self.page:
                    break
        return batch

    def _prepare_decode(self, t: float) -> list[SimRequest]:
        """Reserve one KV slot per running request, retracting requests while the pool is short."""
        page = self.page
        while self.running:
            if page == 1:
                need = len(self.running)
            else:
                need = sum(1 for r in self.running if (r.kv_len % page) == 0) * page
            if need <= self.available:
                break
            self._retract_one(t)
        # one slot each; when the free pool covers them all, no request's growth evicts anything (the same
        # allocation as growing them one by one), so allocate in one pass
        grow = [(r, n) for r in self.running if (n := -(-(r.kv_len + 1) // page) * page - r.tree_len - r.private) > 0]
        if sum(n for _, n in grow) <= self.capacity - self.used:
            for r, n in grow:
                r.private += n
            self.private += sum(n for _, n in grow)
        else:
            for r, _ in grow:
                self._grow(r, r.kv_len + 1)
        self.new_token_ratio = max(self.new_token_ratio - self.ratio_decay, self.min_ratio)
        return list(self.running)

    def _retract_one(self, t: float) -> None:
        victim = min(self.running, key=lambda r: (r.out_len, -len(r.input_ids), -r.rid))
        self.running.remove(victim)
        self._release(victim, t, insert=False)
        victim.fill = victim.input_ids + victim.output_ids[: victim.out_len]
        victim.computed = victim.kv_len = 0
        victim.retractions += 1
        self.total_retracted += 1
        self.add(victim)
        decoded = sum(r.out_len for r in self.running)
        max_new = sum(r.max_new_tokens for r in self.running) or 1
        self.new_token_ratio = min(1.0, (decoded + RETRACT_DECODE_STEPS * len(self.running)) / max_new)

    def complete(self) -> StepRecord:
        """Apply the effects of the step in flight at its end time."""
        step = self.current
        assert step is not None
        self.current = None
        t = step.end
        if self.cfg.overlap_schedule:
            self._cutoff = step.start  # the next batch was formed when this one was launched
        emitted: list[SimRequest] = []
        finished: list[SimRequest] = []
        for req, n in step.prefill:
            if req.finished:
                continue
            req.computed += n
            req.kv_len = req.computed
            self._cache(req, req.fill[: req.computed], t)
            if req.computed < len(req.fill):
                continue
            req.out_len += 1
            emitted.append(req)
            if req.first_token_time < 0:
                req.first_token_time = t
            if req.out_len >= req.target_len:
                finished.append(req)
            else:
                req.state = RequestState.RUNNING
                self.running.append(req)
        for req in step.decode:  # the hot loop: SimRequest.finished and .target_len inlined
            if req.state in _ENDED:
                continue
            req.kv_len += 1
            req.out_len += 1
            emitted.append(req)
            if req.out_len >= len(req.output_ids):
                finished.append(req)
        if finished:
            done = {id(r) for r in finished}
            self.running = [r for r in self.running if id(r) not in done]
            for req in finished:
                self._release(req, t, insert=True)
                req.state = RequestState.FINISHED
                req.finish_time = t
        self.generated_tokens += len(emitted)
        return StepRecord(
            replica=self.index,
            start=step.start,
            end=t,
            shape=step.shape,
            running=len(self.running),
            queued=len(self.waiting),
            used_tokens=self.used,
            emitted=emitted,
            finished=finished,
        )
