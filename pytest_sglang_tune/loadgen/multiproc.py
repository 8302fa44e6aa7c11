"""One load point spread over several processes (``--sglang-loadgen-procs``), merged exactly.

When one core cannot keep up with the streams (the client's own CPU inflates the latencies it measures), the
point runs in ``procs`` spawned processes. The work is divided by *units* (requests, or sessions when
``turns > 1``): process ``k`` sends the units whose index is ``k`` modulo ``procs``, with its share of the
concurrency (the shares add up to it), and in open loop at the arrival times those units have in the whole
schedule, so the union of the processes' sends is exactly the single-process arrival process (not ``procs``
independent ones). The requests themselves are built from the same seed in every process.

Sequence: the parent calibrates the chat lengths once (the children reuse it); each child warms up with its
share of the warmup requests and reports ready; the parent then scrapes ``/metrics`` and announces a common
start time a little ahead (``START_LEAD_S``); the children wait for it and run; the parent keeps calling the
watchdog and sampling gauges meanwhile, then collects every child's samples.

Clocks: samples hold ``time.perf_counter()`` times. On Linux that is ``CLOCK_MONOTONIC``, one clock for every
process on the machine, so the merged times need no conversion. Elsewhere each child reports the offset between
its ``perf_counter`` and ``time.monotonic_ns()`` (system-wide), and the parent shifts its samples onto its own
``perf_counter``. Measured samples are merged in index order, so the result has the same samples in the same
order as a single process would have produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.loadgen.prompts import ChatCalibration
from pytest_sglang_tune.loadgen.runner import (
    _cancel,
    _check_load,
    _Point,
    _watch,
    measure_async,
    new_loop_runner,
    run_point_single,
)
from pytest_sglang_tune.loadgen.samples import PointResult, RequestSample
from pytest_sglang_tune.loadgen.workload import Load, Workload

START_LEAD_S = 0.05  # the start time announced lies this far ahead (messages reach every child first)
JOIN_GRACE_S = 30.0  # beyond the point's timeout, how long the parent waits for a child's result
SAME_CLOCK = (time.get_clock_info("perf_counter").implementation
              == time.get_clock_info("monotonic").implementation)


def _clock_offset() -> float:
    """``monotonic - perf_counter`` in seconds (0 when they are the same clock)."""
    if SAME_CLOCK:
        return 0.0
    return time.monotonic_ns() / 1e9 - time.perf_counter()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _recv(conn: Connection, who: str = "a load-generator process") -> Any:
    """``conn.recv()`` without blocking the event loop while nothing has arrived."""
    loop = asyncio.get_running_loop()
    fd = conn.fileno()
    while not conn.poll():
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"{who} exited without a result (crashed or killed)") from None


async def _recv_all(conns: list[Connection]) -> list[Any]:
    return list(await asyncio.gather(*(_recv(c, f"load-generator process {k}") for k, c in enumerate(conns))))


def _child(conn: Connection, endpoint: Endpoint, workload: Workload, load: Load, shard: tuple[int, int],
           calibration: ChatCalibration | None, timeout_s: float, transport: str) -> None:
    """A load-generator process: its shard of the point, then ``("result", point, indices, offset)``."""

    async def start_at() -> float:
        conn.send(("ready",))
        msg = await _recv(conn)
        return float(msg[1]) - _clock_offset()  # monotonic → this process's perf_counter

    try:
        with new_loop_runner() as runner:
            point, indices = runner.run(measure_async(
                endpoint, workload, load, timeout_s=timeout_s, transport=transport, shard=shard,
                calibration=calibration, start_at=start_at))
        conn.send(("result", point, indices, _clock_offset()))
    except BaseException as exc:  # report everything, KeyboardInterrupt included, then exit
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def shift_sample(s: RequestSample, d: float) -> None:
    """Move every time of ``s`` by ``d`` seconds."""
    if not d:
        return
    s.intended_send += d
    s.sent += d
    if s.first_token is not None:
        s.first_token += d
    if s.done is not None:
        s.done += d
    s.chunk_times = [t + d for t in s.chunk_times]


def merge(parts: list[tuple[PointResult, list[int]]], *, now: float) -> PointResult:
    """Children's results (times already on one clock) → one point: warmups first, then measured samples in
    their index order; the duration spans the first send to the last end over all processes."""
    warm: list[RequestSample] = []
    measured: list[tuple[int, RequestSample]] = []
    starts, ends, walls = [], [], []
    warnings: list[str] = []
    cpu = 0.0
    for point, indices in parts:
        cpu += point.client_cpu_s
        ms = [s for s in point.samples if not s.warmup]
        warm.extend(s for s in point.samples if s.warmup)
        if len(ms) != len(indices):
            raise RuntimeError(f"a load-generator process returned {len(ms)} samples for {len(indices)} indices")
        measured.extend(zip(indices, ms, strict=True))
        if ms:
            starts.append(point.started)
            ends.append(point.finished)
            walls.append(point.wall_started)
        for w in point.warnings:
            if w not in warnings:
                warnings.append(w)
    measured.sort(key=lambda p: p[0])
    return PointResult(
        samples=warm + [s for _, s in measured],
        started=min(starts, default=now),
        finished=max(ends, default=now),
        wall_started=min(walls, default=time.time()),
        warnings=warnings,
        client_cpu_s=cpu,
        client_procs=len(parts),
    )


def shares(workload: Workload, load: Load, procs: int) -> int:
    """How many processes a point can use: no more than its units (requests or sessions), nor its concurrency."""
    units = workload.sessions if workload.turns > 1 else workload.num_requests
    n = min(procs, units)
    if load.concurrency is not None:
        n = min(n, load.concurrency)
    return max(1, n)


async def _parent(endpoint: Endpoint, workload: Workload, load: Load, n: int, *,
                  watchdog: Callable[[], None] | None, scrape_metrics: bool, timeout_s: float,
                  transport: str) -> PointResult:
    import aiohttp

    from pytest_sglang_tune.loadgen.client import metrics_delta

    probe = _Point(endpoint, workload, load, None, scrape_metrics)  # calibration, scrapes and warnings
    calibration = await probe._calibrate() if workload.endpoint == "chat" else None
    ctx = mp.get_context("spawn")
    conns: list[Connection] = []
    children: list[Any] = []
    guard = asyncio.create_task(_watch(watchdog)) if watchdog is not None else None
    gauges: asyncio.Task[None] | None = None
    finished = False
    scraper: aiohttp.ClientSession | None = None
    try:
        for k in range(n):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_child, name=f"sglang-loadgen-{k}", daemon=True,
                            args=(theirs, endpoint, workload, load, (k, n), calibration, timeout_s, transport))
            p.start()
            theirs.close()
            conns.append(mine)
            children.append(p)

        async def collect() -> PointResult:
            for k, msg in enumerate(await _recv_all(conns)):
                if msg[0] == "error":
                    raise RuntimeError(f"load-generator process {k} of {n} failed: {msg[1]}\n{msg[2]}")
            before: dict[str, float] = {}
            nonlocal gauges, scraper
            if scrape_metrics:
                scraper = aiohttp.ClientSession(headers=endpoint.headers())
                before = await probe._scrape(scraper)
                if before:
                    gauges = asyncio.create_task(probe._sample_gauges(scraper))
            start = time.monotonic_ns() / 1e9 + START_LEAD_S
            for c in conns:
                c.send(("start", start))
            parts: list[tuple[PointResult, list[int]]] = []
            offset = _clock_offset()
            for k, msg in enumerate(await _recv_all(conns)):
                if msg[0] == "error":
                    raise RuntimeError(f"load-generator process {k} of {n} failed: {msg[1]}\n{msg[2]}")
                _, point, indices, child_offset = msg
                d = child_offset - offset  # child perf_counter → ours
                for s in point.samples:
                    shift_sample(s, d)
                point.started += d
                point.finished += d
                parts.append((point, indices))
            merged = merge(parts, now=time.perf_counter())
            if scraper is not None and before:
                after = await probe._scrape(scraper)
                if after:
                    merged.server_metrics = metrics_delta(before, after, probe._gauges)
            merged.warnings[:0] = [w for w in probe.warnings if w not in merged.warnings]
            return merged

        main = asyncio.create_task(collect())
        waiting: set[asyncio.Task[Any]] = {main} if guard is None else {main, guard}
        done, _ = await asyncio.wait(waiting, timeout=timeout_s + JOIN_GRACE_S, return_when=asyncio.FIRST_COMPLETED)
        if main in done:
            result = main.result()
            finished = True
            return result
        await _cancel(main)
        if guard is not None and guard in done and guard.exception() is not None:
            raise guard.exception()  # type: ignore[misc]
        raise RuntimeError(f"load-generator processes did not finish within {timeout_s + JOIN_GRACE_S:g} s")
    finally:
        await _cancel(guard)
        await _cancel(gauges)
        if scraper is not None:
            await scraper.close()
        await probe.close()
        for p in children:
            if not finished and p.is_alive():  # aborted (watchdog, a failed sibling, timeout): stop them now
                p.terminate()
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for c in conns:
            c.close()


def run_point_procs(endpoint: Endpoint, workload: Workload, load: Load, *, procs: int,
                    watchdog: Callable[[], None] | None = None, scrape_metrics: bool = False,
                    timeout_s: float = 600.0, transport: str = "auto") -> PointResult:
    """``runner.run_point_single`` over ``procs`` processes (fewer when the point has fewer units or streams)."""
    from pytest_sglang_tune.loadgen.windows import finish_point

    _check_load(load)
    if procs < 1:
        raise ValueError(f"procs must be at least 1, got {procs!r}")
    n = shares(workload, load, procs)
    if n == 1:
        return run_point_single(endpoint, workload, load, watchdog=watchdog, scrape_metrics=scrape_metrics,
                                timeout_s=timeout_s, transport=transport)
    with new_loop_runner() as runner:
        point = runner.run(_parent(endpoint, workload, load, n, watchdog=watchdog, scrape_metrics=scrape_metrics,
                                   timeout_s=timeout_s, transport=transport))
    return finish_point(point, workload)
