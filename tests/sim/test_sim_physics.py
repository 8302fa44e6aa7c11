"""Issue 11, items 1-3 as directional physics: strict prefill stalls decodes, the front end costs every request,
the overlap scheduler admits one step late, and tensor parallelism pays for its logits all-gather."""

from __future__ import annotations

import itertools

import pytest

from pytest_sglang_tune.sim.core import SimRequest
from pytest_sglang_tune.sim.frontend import FRONT_END_FIXED_MS, TOKENIZE_US_PER_TOKEN, FrontEnd
from pytest_sglang_tune.sim.perf import StepShape
from pytest_sglang_tune.sim.virtual import TraceRequest, run_open_loop, virtual_engine

MODEL = "meta-llama/Meta-Llama-3.1-8B"


def decode_gaps_around_a_long_prompt(*flags: str, env: dict[str, str] | None = None) -> list[float]:
    """ITLs (ms) of a request that is decoding when a 8000-token prompt arrives."""
    vs = virtual_engine(["--model-path", MODEL, *flags], env, frontend=FrontEnd.none())
    trace = [TraceRequest(0.0, [7] * 100, [5] * 200), TraceRequest(0.3, list(range(1000, 9000)), [5] * 5)]
    result = run_open_loop(vs.engine, trace)
    times = result.token_times[result.requests[0].rid]
    return [(b - a) * 1e3 for a, b in itertools.pairwise(times)]


# -- item 1 -------------------------------------------------------------------------------------------------------
def test_strict_prefill_stalls_decodes_behind_a_long_prefill_mixed_chunk_does_not() -> None:
    chunk = ("--chunked-prefill-size", "2048")
    strict = decode_gaps_around_a_long_prompt(*chunk)
    mixed = decode_gaps_around_a_long_prompt(*chunk, "--enable-mixed-chunk")
    step = sorted(strict)[len(strict) // 2]
    assert max(strict) > 8 * step  # the decoding request waits out all four chunks of the 8000-token prompt
    assert max(mixed) < 0.5 * max(strict)  # it decodes inside each chunk's step instead
    env_mixed = decode_gaps_around_a_long_prompt(*chunk, env={"SGLANG_SIM_PREFILL": "mixed"})
    assert max(env_mixed) == pytest.approx(max(mixed), rel=0.05)


def test_the_old_strict_prefill_switch_is_refused_with_its_replacement() -> None:
    from pytest_sglang_tune.sim.config import SimSettings
    from pytest_sglang_tune.sim.models import SimConfigError

    with pytest.raises(SimConfigError, match="SGLANG_SIM_PREFILL=strict\\|mixed"):
        SimSettings.from_env({"SGLANG_SIM_STRICT_PREFILL": "1"})
    with pytest.raises(SimConfigError, match="choose one of: strict, mixed"):
        SimSettings.from_env({"SGLANG_SIM_PREFILL": "chunky"})


# -- item 2 -------------------------------------------------------------------------------------------------------
def ttft_ms(frontend: FrontEnd | None, *, tokenized: int | None = None, n: int = 1, prompt: int = 1000) -> list[float]:
    vs = virtual_engine(["--model-path", MODEL], frontend=frontend)
    trace = [TraceRequest(0.0, [7 + i] * prompt, [5] * 4, tokenized=tokenized) for i in range(n)]
    result = run_open_loop(vs.engine, trace)
    return [(r.first_token_time - r.arrival) * 1e3 for r in result.requests]


def test_every_request_pays_the_front_end_before_the_scheduler_sees_it() -> None:
    bare = ttft_ms(FrontEnd.none())[0]
    paid = ttft_ms(None)[0]
    assert paid - bare == pytest.approx(FRONT_END_FIXED_MS + 1000 * TOKENIZE_US_PER_TOKEN / 1e3, abs=0.01)
    token_ids = ttft_ms(None, tokenized=0)[0]  # sent as token ids: nothing to tokenize
    assert paid - token_ids == pytest.approx(1000 * TOKENIZE_US_PER_TOKEN / 1e3, abs=0.01)


def test_one_tokenizer_manager_tokenizes_a_burst_serially() -> None:
    slow = FrontEnd(fixed_ms=0.0, tokenize_us_per_token=50.0)  # 50 ms per 1000-token prompt
    ttfts = ttft_ms(slow, n=4)
    assert ttfts[3] - ttfts[0] > 3 * 50 * 0.9


# -- item 3 -------------------------------------------------------------------------------------------------------
def test_the_overlap_scheduler_admits_a_new_request_one_step_late() -> None:
    def ttft(*flags: str) -> float:
        vs = virtual_engine(["--model-path", MODEL, *flags], frontend=FrontEnd.none())
        busy = [TraceRequest(0.0, [7] * 100, [5] * 400) for _ in range(8)]
        late = TraceRequest(0.5, list(range(2000, 2300)), [5] * 2)
        result = run_open_loop(vs.engine, [*busy, late])
        r = result.requests[-1]
        return r.first_token_time - r.arrival

    timer = virtual_engine(["--model-path", MODEL]).engine.timer
    step = timer.step_seconds(StepShape(decode_reqs=8, decode_context=8 * 400))
    assert ttft() - ttft("--disable-overlap-schedule") > 0.5 * step


def test_tensor_parallel_steps_pay_the_logits_all_gather() -> None:
    tp1 = virtual_engine(["--model-path", MODEL]).engine.timer
    tp2 = virtual_engine(["--model-path", MODEL, "--tp-size", "2"]).engine.timer
    shape = StepShape(decode_reqs=256, decode_context=256 * 500)
    assert tp1.gather_ms == 0.0 and tp2.gather_ms > 0.0
    assert tp2.step_seconds(shape) * 1e3 > tp2.forward_ms(shape) + tp2.gather_ms_per_row * 256


def test_a_small_model_gains_less_from_tp2_than_its_gpu_step_when_the_scheduler_cpu_is_exposed() -> None:
    """The published TP2/TP1 ratio for Llama-3.1-8B at infinite rate is ~1.1 (sglang#1639 vs #1738): without the
    overlap scheduler the per-step CPU and the logits all-gather do not shrink with tp (the sim: ~1.5x)."""

    def run(tp: int) -> tuple[float, float]:
        vs = virtual_engine(["--model-path", MODEL, "--tp-size", str(tp), "--disable-overlap-schedule"],
                            frontend=FrontEnd.none())
        trace = [TraceRequest(0.0, [7 + i % 50] * 200, [5] * 200) for i in range(1500)]
        gpu = vs.engine.timer.forward_ms(StepShape(decode_reqs=256, decode_context=256 * 300))  # graph-captured
        return run_open_loop(vs.engine, trace).summary()["output_throughput"], gpu

    (thr1, gpu1), (thr2, gpu2) = run(1), run(2)
    assert 1.0 < thr2 / thr1 < 0.97 * gpu1 / gpu2 < 1.8


def test_step_time_is_max_of_gpu_and_cpu_with_overlap_and_their_sum_without() -> None:
    on = virtual_engine(["--model-path", MODEL]).engine.timer
    off = virtual_engine(["--model-path", MODEL, "--disable-overlap-schedule"]).engine.timer
    shape = StepShape(decode_reqs=64, decode_context=64 * 500)
    gpu = on.forward_ms(shape)
    assert on.step_seconds(shape) * 1e3 == pytest.approx(max(gpu + 0.1, on.cpu_ms + on.cpu_ms_per_req * 64))
    assert off.step_seconds(shape) * 1e3 == pytest.approx(gpu + off.cpu_ms + off.cpu_ms_per_req * 64)


def test_abort_of_a_request_still_in_the_front_end() -> None:
    vs = virtual_engine(["--model-path", MODEL])
    req = SimRequest([7] * 100, [5] * 10)
    vs.engine.submit(req, 0.0)
    assert not vs.engine.idle and req.ready > 0.0
    vs.engine.abort(req, 0.001)
    assert req.state == "aborted" and vs.engine.idle and vs.engine.next_event_time() is None
