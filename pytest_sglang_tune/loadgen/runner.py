"""Run one load point: calibrate (chat), warm up, send the measured requests at the load level.

Load levels:
* ``concurrency`` only — closed loop: that many workers, each sending its next request when the last one ends.
* ``request_rate`` — open loop: requests are released at Poisson arrival times (``arrivals.arrival_offsets``);
  with ``concurrency`` as well, at most that many are in flight and a released request waits for a free slot
  (``intended_send`` is the arrival time, ``sent`` when it really went out).
* neither — everything at once.
* a trace workload (``workload.trace``) — open loop on the trace's own arrival times (``trace.trace_offsets``:
  its gaps times ``time_scale``), capped by ``concurrency`` when given.

Open-loop gaps are gamma-distributed with shape ``workload.burstiness`` (1 = Poisson). With ``turns > 1`` the
units sent are chat sessions (``sessions``): closed loop, a worker runs whole sessions; open loop, sessions
start at ``request_rate / turns``.

Warmup requests (``workload.warmup_requests``) go first, closed loop, marked ``warmup=True``.
``workload.max_duration_s`` stops sending new measured requests after that long from the start of the
measured phase (an open loop does not wait for an arrival beyond it; in-flight requests finish).
``warmup_s``/``cooldown_s`` then leave out requests sent in the first / ending in the last seconds
(``windows.apply_windows``: they are marked ``warmup`` and the point's duration shrinks to the window).
``timeout_s`` bounds the whole point: at the deadline in-flight requests are cancelled and marked ``timeout``,
unsent ones are dropped, and a warning says so. A ``watchdog`` is called (in a worker thread, so a slow check
does not stall the event loop) right away and then every ``WATCHDOG_INTERVAL_S``; when it raises, in-flight
requests are cancelled, the session is closed and its exception propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.errors import SuiteError
from pytest_sglang_tune.loadgen.client import (
    SCRAPED_GAUGES,
    make_session,
    metrics_delta,
    probe_prompt_tokens,
    scrape,
    stream_request,
)
from pytest_sglang_tune.loadgen.fastclient import LeanStreamer
from pytest_sglang_tune.loadgen.prompts import PATHS, ChatCalibration, calibrate_chat
from pytest_sglang_tune.loadgen.samples import PointResult, RequestCounter, RequestSample
from pytest_sglang_tune.loadgen.schedule import open_loop_offsets, requests_of
from pytest_sglang_tune.loadgen.sessions import Turn, build_sessions, next_requested_input, session_samples, turn_body
from pytest_sglang_tune.loadgen.windows import finish_point
from pytest_sglang_tune.loadgen.workload import Load, Workload

WATCHDOG_INTERVAL_S = 0.2
GAUGE_INTERVAL_S = 1.0
PRECONNECT_MAX = 4096


def _check_load(load: Load) -> None:
    if load.concurrency is not None and load.concurrency < 1:
        raise SuiteError(f"concurrency {load.concurrency!r} must be at least 1", field="load")
    if load.request_rate is not None and not load.request_rate > 0:
        raise SuiteError(
            f"request_rate {load.request_rate!r} must be a positive number of requests per second",
            field="load",
        )


class _Point:
    """One running point; samples are filled in place, so a cancelled point still has them.

    ``shard=(k, n)``: this process sends only the units (requests, or sessions when ``turns > 1``) whose index
    is ``k`` modulo ``n``, at its share of the concurrency, on the arrival times those units have in the whole
    schedule; ``start_at`` (a ``perf_counter`` time) is when the measured phase starts (after the warmup), so
    several processes start together. ``calibration`` skips the chat probes (the parent did them).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        workload: Workload,
        load: Load,
        session: aiohttp.ClientSession | None,
        scrape_metrics: bool,
        lean: LeanStreamer | None = None,
        *,
        shard: tuple[int, int] = (0, 1),
        calibration: ChatCalibration | None = None,
        start_at: Callable[[], Awaitable[float]] | None = None,
        counter: RequestCounter | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.counter = counter
        self.lean = lean
        self._wire: dict[int, bytes] = {}
        self.workload = workload
        self.load = load
        self._session = session  # created on first use: the lean transport needs none (chat probes do)
        self.scrape_metrics = scrape_metrics
        self.native = workload.endpoint == "generate"
        self.shard = shard
        self.calibration = calibration
        self.start_at = start_at
        self.warm: list[RequestSample] = []
        self.measured: list[RequestSample] = []
        self.indices: list[int] = []  # index of each measured sample in the whole point (for merging)
        self.warnings: list[str] = []
        self.server_metrics: dict[str, float] = {}
        self.wall_started = time.time()
        self.last_end: float | None = None
        self.send_until = float("inf")
        self.session_ended = 0  # measured turns not sent because an earlier turn of their session failed
        self._gauges: dict[str, list[float]] = {}
        self._units: dict[bool, list[Callable[[], Awaitable[None]]]] = {}
        self._cpu0: float | None = None  # process CPU time when the measured phase began
        self._cpu_s: float | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = make_session(self.endpoint, self.load.concurrency)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.lean is not None:
            await self.lean.close()

    def _mine(self, n: int) -> list[int]:
        k, procs = self.shard
        return list(range(k, n, procs))

    def _prepare(self, calibration: ChatCalibration | None) -> None:
        """Build every unit (a request, or a session) of the warmup and the measured phase, as bytes."""
        wl, model = self.workload, self.endpoint.model
        for measured in (False, True):
            samples: list[RequestSample] = []
            units: list[Callable[[], Awaitable[None]]] = []
            if wl.turns > 1:
                plans = build_sessions(wl, calibration, warmup=not measured)
                for u in self._mine(len(plans)):
                    ss = session_samples(plans[u], warmup=not measured)
                    if measured:
                        self.indices.extend(range(u * wl.turns, u * wl.turns + len(ss)))
                    samples.extend(ss)
                    units.append(functools.partial(self._session_unit, plans[u], ss, measured))
            else:
                reqs = requests_of(wl, model, warmup=not measured, calibration=calibration)
                for u in self._mine(len(reqs)):
                    r = reqs[u]
                    sample = RequestSample(r.input_tokens, r.output_tokens, warmup=not measured)
                    wire = self.lean.request_bytes(r.path, r.body) if self.lean is not None else r.body
                    if measured:
                        self.indices.append(u)
                    samples.append(sample)
                    units.append(functools.partial(self._send, r.path, wire, sample, measured))
            self._units[measured] = units
            if measured:
                self.measured = samples
            else:
                self.warm = samples

    async def run(self) -> PointResult:
        calibration = self.calibration
        if calibration is None and self.workload.endpoint == "chat":
            calibration = await self._calibrate()
        self._prepare(calibration)
        warm_units, units = self._units[False], self._units[True]
        conc = self._concurrency()
        if self.lean is not None and (self.load.concurrency or self.load.request_rate is None):
            await self.lean.preconnect(min(conc or len(units), len(units), PRECONNECT_MAX))
        if warm_units:
            await self._closed(warm_units, min(conc or len(warm_units), len(warm_units)), measured=False)
        async with contextlib.AsyncExitStack() as stack:
            before: dict[str, float] = {}
            scraper: aiohttp.ClientSession | None = None
            if self.scrape_metrics:
                scraper = await stack.enter_async_context(aiohttp.ClientSession(headers=self.endpoint.headers()))
                before = await self._scrape(scraper)
                if before:
                    gauge_task = asyncio.create_task(self._sample_gauges(scraper))
                    stack.push_async_callback(_cancel, gauge_task)
                else:  # no /metrics (server without --enable-metrics): do not keep asking
                    scraper = None
            t0 = time.perf_counter()
            if self.start_at is not None:
                t0 = await self.start_at()
                while (delay := t0 - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
            self.wall_started = time.time()
            self._cpu0 = time.process_time()
            if self.workload.max_duration_s is not None:
                self.send_until = t0 + self.workload.max_duration_s
            if self.load.request_rate is not None or self.workload.trace is not None:
                await self._open(units, self.load.request_rate, conc, t0)
            else:
                await self._closed(units, conc or len(units), measured=True)
            self._cpu_s = time.process_time() - self._cpu0
            if scraper is not None:
                after = await self._scrape(scraper)
                if after:
                    self.server_metrics = metrics_delta(before, after, self._gauges)
        return self.result()

    def _concurrency(self) -> int | None:
        """This shard's share of the concurrency (None: unbounded)."""
        c = self.load.concurrency
        if c is None:
            return None
        k, n = self.shard
        return max(1, c // n + (1 if k < c % n else 0))

    def result(self, *, deadline: float | None = None) -> PointResult:
        sent = [s for s in self.measured if s.sent]
        unsent = len(self.measured) - len(sent) - self.session_ended
        if unsent > 0:
            why = (
                f"the point deadline ({deadline:g} s)"
                if deadline is not None
                else f"max_duration_s={self.workload.max_duration_s}"
            )
            self.warnings.append(f"{unsent} of {len(self.measured)} requests were not sent: {why} was reached")
        if self.session_ended:
            self.warnings.append(f"{self.session_ended} later turns were not sent: an earlier turn of their "
                                 "session failed")
        if deadline is not None:
            cut = sum(1 for s in sent if s.error == "timeout")
            self.warnings.append(f"point deadline ({deadline:g} s) reached; {cut} in-flight requests cancelled")
        now = time.perf_counter()
        started = min((s.sent for s in sent), default=now)
        finished = now if deadline is not None else (self.last_end or started)
        cpu = self._cpu_s
        if cpu is None:
            cpu = 0.0 if self._cpu0 is None else time.process_time() - self._cpu0
        return PointResult(
            samples=self.warm + sent,
            started=started,
            finished=finished,
            wall_started=self.wall_started,
            server_metrics=self.server_metrics,
            warnings=self.warnings,
            client_cpu_s=cpu,
        )

    # -- sending --------------------------------------------------------------------------------------------

    async def _send(self, path: str, wire: bytes, sample: RequestSample, measured: bool) -> None:
        if self.lean is not None:
            await self.lean.stream(wire, sample, native=self.native)
        else:
            await stream_request(self.session(), self.endpoint.url(path), wire, sample, native=self.native)
        if measured:
            self.last_end = time.perf_counter()
            if (c := self.counter) is not None:
                c.done += 1
                c.output_tokens += sample.output_tokens or 0
                c.failed += sample.error is not None

    async def _session_unit(self, plan: list[Turn], samples: list[RequestSample], measured: bool) -> None:
        history: list[dict[str, str]] = []
        path = PATHS["chat"]
        for k, (turn, sample) in enumerate(zip(plan, samples, strict=True)):
            if k:
                if measured and not self._may_send():
                    return
                prev = samples[k - 1]
                if not prev.ok:
                    if measured:
                        self.session_ended += len(samples) - k
                    return
                history += [{"role": "user", "content": plan[k - 1].content},
                            {"role": "assistant", "content": "".join(prev.reply or ())}]
                sample.requested_input_tokens = next_requested_input(prev, turn)
                sample.intended_send = time.perf_counter()
            body = turn_body(self.endpoint.model, history, turn)
            wire = self.lean.request_bytes(path, body) if self.lean is not None else body
            await self._send(path, wire, sample, measured)

    def _may_send(self) -> bool:
        return time.perf_counter() < self.send_until

    def _first(self, unit: int, measured: bool) -> RequestSample:
        """The first sample of a unit (the one its send time belongs to): only the last session is short."""
        return (self.measured if measured else self.warm)[unit * self.workload.turns]

    async def _closed(self, units: list[Callable[[], Awaitable[None]]], concurrency: int, *,
                      measured: bool) -> None:
        order = iter(range(len(units)))

        async def worker() -> None:
            for i in order:
                if measured and not self._may_send():
                    return
                self._first(i, measured).intended_send = time.perf_counter()
                await units[i]()

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(units))))))

    async def _open(self, units: list[Callable[[], Awaitable[None]]], rate: float | None, cap: int | None,
                    t0: float) -> None:
        k, n = self.shard
        offsets = open_loop_offsets(self.workload, rate)[k::n]
        slots = asyncio.Semaphore(cap) if cap else None

        async def capped(i: int) -> None:
            if slots is None:
                await units[i]()
                return
            async with slots:
                await units[i]()

        tasks: list[asyncio.Task[None]] = []
        try:
            for i, off in enumerate(offsets):
                target = t0 + off
                if target >= self.send_until:
                    break
                while (delay := target - time.perf_counter()) > 0:  # timers may fire up to ~1 ms early
                    await asyncio.sleep(delay)
                self._first(i, True).intended_send = target
                tasks.append(asyncio.create_task(capped(i)))
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # -- calibration and scraping ---------------------------------------------------------------------------

    async def _calibrate(self) -> ChatCalibration:
        session, endpoint = self.session(), self.endpoint
        try:
            calibration, warning = await calibrate_chat(
                functools.partial(probe_prompt_tokens, session, endpoint), self.workload.input_len.mean)
        except (aiohttp.ClientError, RuntimeError, ValueError, TimeoutError) as exc:
            self.warnings.append(f"chat length calibration failed ({exc}); assuming 1 token per word")
            return ChatCalibration()
        if warning:
            self.warnings.append(warning)
        return calibration

    async def _scrape(self, session: aiohttp.ClientSession) -> dict[str, float]:
        try:
            return await scrape(session, self.endpoint)
        except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
            msg = f"/metrics scrape failed ({exc}); server metrics not recorded (is --enable-metrics set?)"
            if msg not in self.warnings:
                self.warnings.append(msg)
            return {}

    async def _sample_gauges(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(GAUGE_INTERVAL_S)
            values = await self._scrape(session)
            for name in SCRAPED_GAUGES:
                if name in values:
                    self._gauges.setdefault(name, []).append(values[name])


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _watch(watchdog: Callable[[], None]) -> None:
    while True:
        await asyncio.to_thread(watchdog)
        await asyncio.sleep(WATCHDOG_INTERVAL_S)


TRANSPORTS: tuple[str, ...] = ("auto", "lean", "aiohttp")


def _lean_for(endpoint: Endpoint, transport: str) -> LeanStreamer | None:
    """The lean transport for ``http://`` (``auto``/``lean``), else None (aiohttp streams)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
    if transport == "aiohttp" or (transport == "auto" and not endpoint.base_url.startswith("http://")):
        return None
    return LeanStreamer(endpoint.base_url, endpoint.headers())


async def measure_async(
    endpoint: Endpoint,
    workload: Workload,
    load: Load,
    *,
    watchdog: Callable[[], None] | None = None,
    scrape_metrics: bool = False,
    timeout_s: float = 600.0,
    transport: str = "auto",
    shard: tuple[int, int] = (0, 1),
    calibration: ChatCalibration | None = None,
    start_at: Callable[[], Awaitable[float]] | None = None,
    counter: RequestCounter | None = None,
) -> tuple[PointResult, list[int]]:
    """One process's part of a point (all of it for ``shard=(0, 1)``), before the time windows are applied;
    also returns each sent measured sample's index in the whole point."""
    _check_load(load)
    lean = _lean_for(endpoint, transport)
    session = make_session(endpoint, load.concurrency) if lean is None else None
    point = _Point(endpoint, workload, load, session, scrape_metrics, lean, shard=shard, calibration=calibration,
                   start_at=start_at, counter=counter)
    main: asyncio.Task[PointResult] = asyncio.create_task(point.run())
    guard = asyncio.create_task(_watch(watchdog)) if watchdog is not None else None
    try:
        waiting: set[asyncio.Task[Any]] = {main} if guard is None else {main, guard}
        done, _ = await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if main in done:
            result = main.result()
        elif guard is not None and guard in done:
            exc = guard.exception()
            await _cancel(main)
            if exc is not None:
                raise exc
            raise RuntimeError("the watchdog loop ended without an error")  # pragma: no cover
        else:
            await _cancel(main)
            result = point.result(deadline=timeout_s)
        return result, [i for i, s in zip(point.indices, point.measured, strict=True) if s.sent]
    finally:
        await _cancel(guard)
        await _cancel(main)
        await point.close()


async def run_point_async(
    endpoint: Endpoint,
    workload: Workload,
    load: Load,
    *,
    watchdog: Callable[[], None] | None = None,
    scrape_metrics: bool = False,
    timeout_s: float = 600.0,
    transport: str = "auto",
    counter: RequestCounter | None = None,
) -> PointResult:
    """Measure ``workload`` at ``load`` against ``endpoint``; see the module docstring for the rules.

    ``transport``: ``auto`` streams over the lean HTTP/1.1 transport (``fastclient``) for ``http://`` URLs and
    over aiohttp otherwise; ``lean`` and ``aiohttp`` force one (the benchmark compares them).
    """
    point, _ = await measure_async(endpoint, workload, load, watchdog=watchdog, scrape_metrics=scrape_metrics,
                                   timeout_s=timeout_s, transport=transport, counter=counter)
    return finish_point(point, workload)


def new_loop_runner() -> asyncio.Runner:
    """An ``asyncio.Runner`` on uvloop when installed."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - depends on the environment
        factory = None
    return asyncio.Runner(loop_factory=factory)


def run_point_single(
    endpoint: Endpoint,
    workload: Workload,
    load: Load,
    *,
    watchdog: Callable[[], None] | None = None,
    scrape_metrics: bool = False,
    timeout_s: float = 600.0,
    transport: str = "auto",
    counter: RequestCounter | None = None,
) -> PointResult:
    """Synchronous ``run_point_async`` on a fresh event loop (uvloop when installed); not inside a loop.
    (``loadgen.point.run_point`` is the entry point: it also spreads a point over processes.)"""
    coro = run_point_async(
        endpoint, workload, load, watchdog=watchdog, scrape_metrics=scrape_metrics, timeout_s=timeout_s,
        transport=transport, counter=counter,
    )
    with new_loop_runner() as runner:
        return runner.run(coro)
