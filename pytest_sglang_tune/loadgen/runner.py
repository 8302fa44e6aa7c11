"""Run one load point: calibrate (chat), warm up, send the measured requests at the load level.

Load levels:
* ``concurrency`` only — closed loop: that many workers, each sending its next request when the last one ends.
* ``request_rate`` — open loop: requests are released at Poisson arrival times (``arrivals.arrival_offsets``);
  with ``concurrency`` as well, at most that many are in flight and a released request waits for a free slot
  (``intended_send`` is the arrival time, ``sent`` when it really went out).
* neither — everything at once.

Warmup requests (``workload.warmup_requests``) go first, closed loop, marked ``warmup=True``.
``workload.max_duration_s`` stops sending new measured requests after that long (in-flight ones finish).
``timeout_s`` bounds the whole point: at the deadline in-flight requests are cancelled and marked ``timeout``,
unsent ones are dropped, and a warning says so. A ``watchdog`` is called (in a worker thread, so a slow check
does not stall the event loop) right away and then every ``WATCHDOG_INTERVAL_S``; when it raises, in-flight
requests are cancelled, the session is closed and its exception propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.errors import SuiteError
from pytest_sglang_tune.loadgen.arrivals import arrival_offsets
from pytest_sglang_tune.loadgen.client import (
    SCRAPED_GAUGES,
    make_session,
    metrics_delta,
    probe_prompt_tokens,
    scrape,
    stream_request,
)
from pytest_sglang_tune.loadgen.fastclient import LeanStreamer
from pytest_sglang_tune.loadgen.prompts import (
    VOCAB_CANDIDATES,
    VOCAB_PROBE_WORDS,
    ChatCalibration,
    PreparedRequest,
    build_requests,
    probe_text,
    repeated,
)
from pytest_sglang_tune.loadgen.samples import PointResult, RequestSample
from pytest_sglang_tune.loadgen.workload import Load, Workload

WATCHDOG_INTERVAL_S = 0.2
GAUGE_INTERVAL_S = 1.0
PROBE_WORDS_SHORT = 16
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
    """One running point; samples are filled in place, so a cancelled point still has them."""

    def __init__(
        self,
        endpoint: Endpoint,
        workload: Workload,
        load: Load,
        session: aiohttp.ClientSession | None,
        scrape_metrics: bool,
        lean: LeanStreamer | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.lean = lean
        self._wire: dict[int, bytes] = {}
        self.workload = workload
        self.load = load
        self._session = session  # created on first use: the lean transport needs none (chat probes do)
        self.scrape_metrics = scrape_metrics
        self.native = workload.endpoint == "generate"
        self.warm: list[RequestSample] = []
        self.measured: list[RequestSample] = []
        self.warnings: list[str] = []
        self.server_metrics: dict[str, float] = {}
        self.wall_started = time.time()
        self.last_end: float | None = None
        self.send_until = float("inf")
        self._gauges: dict[str, list[float]] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = make_session(self.endpoint, self.load.concurrency)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.lean is not None:
            await self.lean.close()

    async def run(self) -> PointResult:
        calibration = await self._calibrate() if self.workload.endpoint == "chat" else None
        model = self.endpoint.model
        warm_reqs = build_requests(self.workload, model, warmup=True, calibration=calibration)
        reqs = build_requests(self.workload, model, warmup=False, calibration=calibration)
        self.warm = [RequestSample(r.input_tokens, r.output_tokens, warmup=True) for r in warm_reqs]
        self.measured = [RequestSample(r.input_tokens, r.output_tokens) for r in reqs]
        if self.lean is not None:  # whole requests as bytes, built before the clock starts
            for r in warm_reqs + reqs:
                self._wire[id(r)] = self.lean.request_bytes(r.path, r.body)
        if self.lean is not None and (self.load.concurrency or self.load.request_rate is None):
            await self.lean.preconnect(min(self.load.concurrency or len(reqs), len(reqs), PRECONNECT_MAX))
        if warm_reqs:
            conc = min(self.load.concurrency or len(warm_reqs), len(warm_reqs))
            await self._closed(warm_reqs, self.warm, conc, measured=False)
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
            self.wall_started = time.time()
            if self.workload.max_duration_s is not None:
                self.send_until = time.perf_counter() + self.workload.max_duration_s
            if self.load.request_rate is not None:
                await self._open(reqs, self.measured, self.load.request_rate, self.load.concurrency)
            else:
                await self._closed(reqs, self.measured, self.load.concurrency or len(reqs), measured=True)
            if scraper is not None:
                after = await self._scrape(scraper)
                if after:
                    self.server_metrics = metrics_delta(before, after, self._gauges)
        return self.result()

    def result(self, *, deadline: float | None = None) -> PointResult:
        sent = [s for s in self.measured if s.sent]
        unsent = len(self.measured) - len(sent)
        if unsent:
            why = (
                f"the point deadline ({deadline:g} s)"
                if deadline is not None
                else f"max_duration_s={self.workload.max_duration_s}"
            )
            self.warnings.append(f"{unsent} of {len(self.measured)} requests were not sent: {why} was reached")
        if deadline is not None:
            cut = sum(1 for s in sent if s.error == "timeout")
            self.warnings.append(f"point deadline ({deadline:g} s) reached; {cut} in-flight requests cancelled")
        now = time.perf_counter()
        started = min((s.sent for s in sent), default=now)
        finished = now if deadline is not None else (self.last_end or started)
        return PointResult(
            samples=self.warm + sent,
            started=started,
            finished=finished,
            wall_started=self.wall_started,
            server_metrics=self.server_metrics,
            warnings=self.warnings,
        )

    # -- sending --------------------------------------------------------------------------------------------

    async def _send(self, req: PreparedRequest, sample: RequestSample, measured: bool) -> None:
        if self.lean is not None:
            await self.lean.stream(self._wire[id(req)], sample, native=self.native)
        else:
            await stream_request(self.session(), self.endpoint.url(req.path), req.body, sample, native=self.native)
        if measured:
            self.last_end = time.perf_counter()

    def _may_send(self) -> bool:
        return time.perf_counter() < self.send_until

    async def _closed(
        self, reqs: list[PreparedRequest], samples: list[RequestSample], concurrency: int, *, measured: bool
    ) -> None:
        order = iter(range(len(reqs)))

        async def worker() -> None:
            for i in order:
                if measured and not self._may_send():
                    return
                samples[i].intended_send = time.perf_counter()
                await self._send(reqs[i], samples[i], measured)

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(reqs))))))

    async def _open(
        self, reqs: list[PreparedRequest], samples: list[RequestSample], rate: float, cap: int | None
    ) -> None:
        offsets = arrival_offsets(
            rate, len(reqs), random.Random(f"{self.workload.seed}:arrivals"), exact=True
        )
        slots = asyncio.Semaphore(cap) if cap else None

        async def capped(i: int) -> None:
            if slots is None:
                await self._send(reqs[i], samples[i], True)
                return
            async with slots:
                await self._send(reqs[i], samples[i], True)

        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        try:
            for i, off in enumerate(offsets):
                target = t0 + off
                while (delay := target - time.perf_counter()) > 0:  # timers may fire up to ~1 ms early
                    await asyncio.sleep(delay)
                if not self._may_send():
                    break
                samples[i].intended_send = target
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
            one = await probe_prompt_tokens(session, endpoint, "the")
            many = await probe_prompt_tokens(session, endpoint, repeated("the", 33))
            if many - one == 32:  # "the" is one token: the overhead is exact
                overhead = one - 1
                counts = await asyncio.gather(*(
                    probe_prompt_tokens(session, endpoint, repeated(w, VOCAB_PROBE_WORDS)) for w in VOCAB_CANDIDATES
                ))
                vocab = tuple(w for w, c in zip(VOCAB_CANDIDATES, counts, strict=True)
                              if c == overhead + VOCAB_PROBE_WORDS)
                if len(vocab) >= 8:
                    return ChatCalibration(1.0, float(overhead), vocab)
            long = int(min(max(self.workload.input_len.mean, 128), 4096))
            probes: list[tuple[int, int]] = []
            for n in (PROBE_WORDS_SHORT, long):
                probes.append((n, await probe_prompt_tokens(session, endpoint, probe_text(n))))
        except (aiohttp.ClientError, RuntimeError, ValueError, TimeoutError) as exc:
            self.warnings.append(f"chat length calibration failed ({exc}); assuming 1 token per word")
            return ChatCalibration()
        self.warnings.append("chat lengths are approximate: too few one-token words verified on this server")
        return ChatCalibration.fit(probes)

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


async def run_point_async(
    endpoint: Endpoint,
    workload: Workload,
    load: Load,
    *,
    watchdog: Callable[[], None] | None = None,
    scrape_metrics: bool = False,
    timeout_s: float = 600.0,
    transport: str = "auto",
) -> PointResult:
    """Measure ``workload`` at ``load`` against ``endpoint``; see the module docstring for the rules.

    ``transport``: ``auto`` streams over the lean HTTP/1.1 transport (``fastclient``) for ``http://`` URLs and
    over aiohttp otherwise; ``lean`` and ``aiohttp`` force one (the benchmark compares them).
    """
    _check_load(load)
    lean = _lean_for(endpoint, transport)
    session = make_session(endpoint, load.concurrency) if lean is None else None
    point = _Point(endpoint, workload, load, session, scrape_metrics, lean)
    main: asyncio.Task[PointResult] = asyncio.create_task(point.run())
    guard = asyncio.create_task(_watch(watchdog)) if watchdog is not None else None
    try:
        waiting: set[asyncio.Task[Any]] = {main} if guard is None else {main, guard}
        done, _ = await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if main in done:
            return main.result()
        if guard is not None and guard in done:
            exc = guard.exception()
            await _cancel(main)
            if exc is not None:
                raise exc
            raise RuntimeError("the watchdog loop ended without an error")  # pragma: no cover
        await _cancel(main)
        return point.result(deadline=timeout_s)
    finally:
        await _cancel(guard)
        await _cancel(main)
        await point.close()


def run_point(
    endpoint: Endpoint,
    workload: Workload,
    load: Load,
    *,
    watchdog: Callable[[], None] | None = None,
    scrape_metrics: bool = False,
    timeout_s: float = 600.0,
    transport: str = "auto",
) -> PointResult:
    """Synchronous ``run_point_async`` on a fresh event loop (uvloop when installed); not inside a loop."""
    coro = run_point_async(
        endpoint, workload, load, watchdog=watchdog, scrape_metrics=scrape_metrics, timeout_s=timeout_s,
        transport=transport,
    )
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - depends on the environment
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
