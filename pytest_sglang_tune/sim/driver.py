"""Run the discrete-event core on the wall clock inside an asyncio event loop, and say when it falls behind.

Simulated time is ``time.perf_counter() - t0`` (not ``loop.time()``: uvloop's is cached per iteration in
whole milliseconds). Steps are scheduled back to back in simulated time, so lateness never
accumulates into the schedule by itself: a late wake-up delays that step's tokens (the *lag*) but not the next
step's start. Timers are armed :data:`EARLY_S` before a step ends and the last stretch is slept precisely,
because the selector rounds timeouts up to whole milliseconds.

When the process cannot keep up (too little CPU, a stalled loop, or ``SGLANG_SIM_FORCE_LAG_MS``), emissions run
late: every step's lag (wall time of emission minus simulated end) goes into :class:`LagStats`, exposed as
``sglang_sim:lag_seconds`` in ``/metrics`` and as ``sim.lag`` (with a ``warning``) in ``/server_info``.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable
from typing import Any

from pytest_sglang_tune.sim.core import SimRequest, StepRecord
from pytest_sglang_tune.sim.engine import Engine

__all__ = ["LAG_TOLERANCE_S", "LagStats", "WallClockDriver"]

EARLY_S = 0.001  # arm timers this much before a step ends, then sleep the rest precisely
MAX_STEPS_PER_TICK = 8  # when behind, yield to the event loop (I/O) after this many steps
LAG_TOLERANCE_S = 0.005  # a step emitted later than this is "late"
LATE_FRACTION_WARN = 0.01  # warn when more than 1 % of steps are late ...
MAX_LAG_WARN_S = 0.25  # ... or when any step is this late
MIN_STEPS_FOR_FRACTION = 50
_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0)


class LagStats:
    """How late steps were emitted relative to their simulated end times."""

    def __init__(self) -> None:
        self.count = 0
        self.late = 0
        self.total = 0.0
        self.last = 0.0
        self.max = 0.0
        self.counts = [0] * (len(_BUCKETS) + 1)

    def observe(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.count += 1
        self.total += lag
        self.last = lag
        if lag > self.max:
            self.max = lag
        if lag > LAG_TOLERANCE_S:
            self.late += 1
        self.counts[bisect.bisect_left(_BUCKETS, lag)] += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile ``q`` (0..1)."""
        if not self.count:
            return 0.0
        need = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= need:
                return _BUCKETS[i] if i < len(_BUCKETS) else self.max
        return self.max

    def warning(self) -> str | None:
        frac = self.late / self.count if self.count else 0.0
        behind = (self.count >= MIN_STEPS_FOR_FRACTION and frac > LATE_FRACTION_WARN) or self.max > MAX_LAG_WARN_S
        if not behind:
            return None
        return (
            f"simulated server fell behind real time: {self.late} of {self.count} steps "
            f"({100 * frac:.1f}%) were emitted more than {LAG_TOLERANCE_S * 1e3:.0f} ms late, "
            f"worst {self.max * 1e3:.1f} ms, p99 <= {self.quantile(0.99) * 1e3:.1f} ms; wall-clock latencies "
            "are inflated (give the sim more CPU or lower the load)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.count,
            "late_steps": self.late,
            "tolerance_s": LAG_TOLERANCE_S,
            "last_s": round(self.last, 6),
            "max_s": round(self.max, 6),
            "mean_s": round(self.total / self.count, 6) if self.count else 0.0,
            "p99_s": round(self.quantile(0.99), 6),
            "warning": self.warning(),
        }


class WallClockDriver:
    """Drives an :class:`Engine` from an asyncio loop; ``on_step`` receives each completed step."""

    def __init__(
        self,
        engine: Engine,
        on_step: Callable[[StepRecord, float], None],
        *,
        force_lag_ms: float = 0.0,
    ) -> None:
        self.engine = engine
        self.on_step = on_step
        self.force_lag_s = max(0.0, force_lag_ms) / 1e3
        self.lag = LagStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._t0 = time.perf_counter()

    def now(self) -> float:
        """Simulated time: seconds since :meth:`start` (the :class:`~.core.Clock` of the HTTP server)."""
        return time.perf_counter() - self._t0

    def submit(self, req: SimRequest, *, received: float | None = None, tokenized: int | None = None) -> None:
        """Enter ``req`` now; ``received``/``tokenized`` as in :meth:`.engine.Engine.submit`."""
        self.engine.submit(req, self.now(), received=received, tokenized=tokenized)
        self._arm()

    def abort(self, req: SimRequest) -> None:
        self.engine.abort(req, self.now())
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        t = self.engine.next_event_time()
        if t is None or t == self._armed_for:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._armed_for = t
        self._timer = self._loop.call_later(max(0.0, t - self.now() - EARLY_S), self._tick)

    def _tick(self) -> None:
        self._timer, self._armed_for = None, None
        t = self.engine.next_event_time()
        if t is None:
            return
        wait = t - self.now()
        if wait > 2 * EARLY_S:  # woke up too early (coarse timer): re-arm
            self._arm()
            return
        if wait > 0:
            time.sleep(wait)
        for _ in range(MAX_STEPS_PER_TICK):
            now = self.now()
            done = self.engine.advance(now, max_steps=1)
            if not done:
                break
            record = done[0]
            self.lag.observe(now - record.end)
            if self.force_lag_s:
                time.sleep(self.force_lag_s)
            self.on_step(record, now)
        self._arm()
