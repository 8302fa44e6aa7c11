"""One point over several load-generator processes: the same requests, the same schedule, merged exactly."""

from __future__ import annotations

import time

import pytest
from test_loadgen_workloads import MODEL, sim_url  # noqa: F401  (the module-scoped sim fixture)

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.errors import ServerCrashed
from pytest_sglang_tune.loadgen.multiproc import merge, shares, shift_sample
from pytest_sglang_tune.loadgen.point import run_point
from pytest_sglang_tune.loadgen.samples import PointResult, RequestSample
from pytest_sglang_tune.loadgen.workload import Load, Workload, parse_scenario
from pytest_sglang_tune.metrics import summarize


def wl(scenario: str = "U(20,60)/(2,9)", **kw: object) -> Workload:
    inp, out = parse_scenario(scenario)
    return Workload(name="w", input_len=inp, output_len=out,
                    **{"endpoint": "completions", "num_requests": 12, "warmup_requests": 2, **kw})  # type: ignore[arg-type]


def measured(point: PointResult) -> list[RequestSample]:
    return [s for s in point.samples if not s.warmup]


@pytest.mark.parametrize(
    ("num_requests", "turns", "concurrency", "procs", "expected"),
    [(10, 1, None, 4, 4), (10, 1, 2, 4, 2), (3, 1, None, 8, 3), (9, 3, None, 8, 3), (10, 1, 16, 1, 1)],
)
def test_shares(num_requests: int, turns: int, concurrency: int | None, procs: int, expected: int) -> None:
    w = wl("D(8,2)", num_requests=num_requests, turns=turns, endpoint="chat")
    assert shares(w, Load(concurrency=concurrency), procs) == expected


def test_merge_orders_by_index_and_spans_all_processes() -> None:
    def s(sent: float, warm: bool = False) -> RequestSample:
        return RequestSample(1, 1, sent=sent, done=sent + 1, warmup=warm)

    a = PointResult([s(-1, True), s(0.0), s(2.0)], started=0.0, finished=3.0, wall_started=5.0, warnings=["x"],
                    client_cpu_s=0.5)
    b = PointResult([s(1.0), s(3.0)], started=1.0, finished=4.0, wall_started=4.0, warnings=["x", "y"],
                    client_cpu_s=0.25)
    empty = PointResult([], started=99.0, finished=99.0)
    out = merge([(a, [0, 2]), (b, [1, 3]), (empty, [])], now=50.0)
    assert [x.sent for x in out.samples] == [-1, 0.0, 1.0, 2.0, 3.0]
    assert (out.started, out.finished, out.wall_started) == (0.0, 4.0, 4.0)  # the empty part does not count
    assert out.warnings == ["x", "y"]
    assert (out.client_cpu_s, out.client_procs) == (0.75, 3)  # CPU of every process, utilisation per process
    with pytest.raises(RuntimeError, match="returned 2 samples for 1 indices"):
        merge([(a, [0])], now=0.0)


def test_shift_sample_moves_every_time() -> None:
    x = RequestSample(1, 3, intended_send=1.0, sent=1.5, first_token=2.0, done=4.0, chunk_times=[3.0, 4.0],
                      chunk_tokens=[1, 1])
    shift_sample(x, 10.0)
    assert (x.intended_send, x.sent, x.first_token, x.done, x.chunk_times) == (11.0, 11.5, 12.0, 14.0, [13.0, 14.0])


@pytest.mark.parametrize("load", [Load(concurrency=4), Load(request_rate=60), Load(request_rate=60, concurrency=3)])
def test_two_processes_measure_the_same_requests_as_one(sim_url: str, load: Load) -> None:  # noqa: F811
    ep = Endpoint(sim_url, MODEL)
    one = run_point(ep, wl(), load)
    two = run_point(ep, wl(), load, procs=2)
    m1, m2 = measured(one), measured(two)
    assert len(m2) == len(m1) == 12 and all(s.ok for s in m2), [s.error_detail for s in m2]
    assert sum(s.warmup for s in two.samples) == 2
    key = [(s.requested_input_tokens, s.requested_output_tokens) for s in m1]
    assert [(s.requested_input_tokens, s.requested_output_tokens) for s in m2] == key
    assert [(s.input_tokens, s.output_tokens) for s in m2] == key  # served exactly, in request order
    if load.request_rate is not None and load.concurrency is None:  # the one arrival schedule, split
        base1, base2 = m1[0].intended_send, m2[0].intended_send
        assert [s.intended_send - base2 for s in m2] == pytest.approx([s.intended_send - base1 for s in m1],
                                                                       abs=1e-9)
    # one clock: the merged samples lie within the merged point's span, and the metrics are sane
    assert all(two.started <= s.sent < s.first_token <= s.done <= two.finished + 1e-9 for s in m2)  # type: ignore[operator]
    mm = summarize(two, gpus=1)
    assert mm["completed"] == 12 and mm["failed"] == 0 and mm["self_check"]["output_mismatches"] == 0
    assert two.client_procs == 2 and 0 < mm["client_cpu_util"] < 1.5
    assert 0 < mm["ttft_ms"]["p50"] < 1000 and mm["duration_s"] > 0


def test_sessions_over_processes(sim_url: str) -> None:  # noqa: F811
    w = wl("D(30,4)", endpoint="chat", num_requests=9, turns=3, warmup_requests=0)
    point = run_point(Endpoint(sim_url, MODEL), w, Load(concurrency=3), procs=3)
    ms = measured(point)
    assert len(ms) == 9 and all(s.ok for s in ms)
    assert [s.input_tokens == 30 for s in ms] == [True, False, False] * 3  # session-major order is kept


def test_a_failing_process_is_reported(sim_url: str) -> None:  # noqa: F811
    with pytest.raises(RuntimeError, match=r"load-generator process 0 of 2 failed: ValueError: transport 'bogus'"):
        run_point(Endpoint(sim_url, MODEL), wl(), Load(concurrency=2), procs=2, transport="bogus")


def test_the_watchdog_stops_a_multi_process_point(sim_url: str) -> None:  # noqa: F811
    calls = []

    def watchdog() -> None:
        calls.append(time.monotonic())
        if len(calls) > 3:
            raise ServerCrashed("the server died")

    t0 = time.monotonic()
    with pytest.raises(ServerCrashed, match="the server died"):
        run_point(Endpoint(sim_url, MODEL), wl(num_requests=1000), Load(request_rate=5), procs=2, watchdog=watchdog)
    assert time.monotonic() - t0 < 10
