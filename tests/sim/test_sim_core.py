"""The sim's scheduler core on a virtual clock: radix cache, determinism, SGLang's defaults, and the physics."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from pytest_sglang_tune.sim.config import SimSettings, parse_server_args, resolve_server
from pytest_sglang_tune.sim.core import EngineConfig, SimRequest, VirtualClock
from pytest_sglang_tune.sim.driver import LagStats
from pytest_sglang_tune.sim.engine import Engine
from pytest_sglang_tune.sim.frontend import FrontEnd
from pytest_sglang_tune.sim.loader import build_engine, make_perf_model
from pytest_sglang_tune.sim.models import GPUS, SimConfigError, load_model_spec
from pytest_sglang_tune.sim.perf import (
    PerfModel,
    RooflinePerf,
    StepShape,
    StepTimer,
    cuda_graph_batch_sizes,
)
from pytest_sglang_tune.sim.radix import RadixCache
from pytest_sglang_tune.sim.virtual import RunResult, TraceRequest, run_closed_loop, run_open_loop

MODEL = "Qwen/Qwen3-8B"
MakeRequest = Callable[[int], tuple[list[int], list[int]]]

try:
    import aiconfigurator_core  # noqa: F401

    PERF_MODELS = ["aiconfigurator", "roofline"]
except ImportError:  # pragma: no cover - non-x86 machines
    PERF_MODELS = ["roofline"]

_PERF_CACHE: dict[tuple[str, int], PerfModel] = {}


def perf_for(kind: str, tp: int = 1) -> PerfModel:
    key = (kind, tp)
    if key not in _PERF_CACHE:
        model = load_model_spec(MODEL)
        _PERF_CACHE[key] = make_perf_model(kind, model, GPUS["h100_sxm"], tp=tp)[0]
    return _PERF_CACHE[key]


def build(
    flags: list[str],
    *,
    perf: str = "roofline",
    env: dict[str, str] | None = None,
    record: bool = False,
    frontend: FrontEnd | None = None,
) -> tuple[Engine, StepTimer]:
    """The engine the server would build for ``flags`` (the loader's one code path), with a cached perf model."""
    values, given, version = parse_server_args(["--model-path", MODEL, *flags], None)
    cfg = resolve_server(values, given, version, SimSettings.from_env(env or {}))
    engine = build_engine(cfg, perf_for(perf, int(cfg.args["tp_size"])), record_steps=record, frontend=frontend)
    return engine, engine.timer


def workload(*, inp: int, out: tuple[int, int], groups: int = 0, prefix: int = 0, seed: int = 7) -> MakeRequest:
    """Random prompts (optionally ``groups`` shared prefixes of ``prefix`` tokens) and output lengths."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(1000, 8000) for _ in range(prefix)] for _ in range(groups)]

    def make(i: int) -> tuple[list[int], list[int]]:
        head = prefixes[rng.randrange(groups)] if groups else []
        n = rng.randint(inp // 2, inp * 3 // 2) if not groups else inp
        ids = head + [rng.randrange(1000, 8000) for _ in range(max(1, n))]
        return ids, [5] * rng.randint(*out)

    return make


def closed(engine: Engine, make: MakeRequest, concurrency: int, n: int) -> RunResult:
    return run_closed_loop(engine, make, concurrency=concurrency, num_requests=n)


# -- radix cache ----------------------------------------------------------------------------------------------
def test_radix_match_insert_split_and_lock() -> None:
    tree = RadixCache()
    assert tree.insert([1, 2, 3, 4], 0.0)[0] == 0
    assert tree.total_size == 4 and tree.evictable_size == 4
    assert tree.insert([1, 2, 9], 1.0)[0] == 2  # shares [1, 2]; the edge is split
    assert tree.total_size == 5
    n, node = tree.match_prefix([1, 2, 3, 7], 2.0)
    assert n == 3
    tree.lock(node)
    assert tree.evictable_size == 5 - 3  # [1, 2] and [3] are protected, [4] and [9] are not
    assert tree.evict(100) == 2  # only the unlocked leaves go
    assert tree.total_size == 3
    tree.unlock(node)
    assert tree.evictable_size == 3
    assert tree.peek([1, 2, 3]) == 3


@pytest.mark.parametrize(
    ("page", "key", "cached", "expected"),
    [
        (1, [1, 2, 3, 4, 5], [1, 2, 3, 9], 3),
        (2, [1, 2, 3, 4, 5], [1, 2, 3, 9], 2),  # only whole pages are shared
        (4, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8], 4),
        (4, [1, 2, 3], [1, 2, 3, 4], 0),
    ],
)
def test_radix_page_alignment(page: int, key: list[int], cached: list[int], expected: int) -> None:
    tree = RadixCache(page)
    tree.insert(cached, 0.0)
    assert tree.peek(key) == expected
    assert tree.match_prefix(key, 1.0)[0] == expected


def test_radix_evicts_least_recently_used_first() -> None:
    tree = RadixCache()
    tree.insert([1, 1, 1], 0.0)
    tree.insert([2, 2, 2], 1.0)
    tree.match_prefix([1, 1, 1], 5.0)  # touch the older one
    assert tree.evict(1) == 3
    assert tree.peek([1, 1, 1]) == 3 and tree.peek([2, 2, 2]) == 0


# -- determinism and conservation ------------------------------------------------------------------------------
def _trace(seed: int) -> list[TraceRequest]:
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(120):
        t += rng.expovariate(12.0)
        ids = [rng.randrange(1000, 8000) for _ in range(rng.randint(200, 2500))]
        if rng.random() < 0.5:
            ids = [42] * 300 + ids  # a shared prefix for half of them
        out.append(TraceRequest(t, ids, [5] * rng.randint(10, 300)))
    return out


@pytest.mark.parametrize("policy", ["fcfs", "lpm"])
def test_same_arrival_trace_gives_identical_event_log(policy: str) -> None:
    logs = []
    for _ in range(2):
        engine, _ = build(["--schedule-policy", policy, "--max-total-tokens", "60000"], record=True)
        run_open_loop(engine, _trace(3), VirtualClock())
        assert engine.steps is not None
        logs.append([s.key() for s in engine.steps])
    assert logs[0] == logs[1]
    assert len(logs[0]) > 100


def test_every_request_gets_exactly_its_tokens_and_the_pool_drains() -> None:
    engine, _ = build(["--max-total-tokens", "20000", "--page-size", "4"])
    result = run_open_loop(engine, _trace(5))
    assert all(len(result.token_times[r.rid]) == r.target_len for r in result.requests)
    assert all(r.state == "finished" for r in result.requests)
    assert any(r.retractions for r in result.requests)  # 20k tokens is tight: some requests were retracted
    for replica in engine.replicas:
        assert replica.private == 0
        assert replica.tree is not None and replica.tree.protected_size == 0
        assert replica.used <= replica.capacity


@pytest.mark.parametrize("prefill", ["strict", "mixed"])
@pytest.mark.parametrize(("page", "policy", "chunk"), [("1", "fcfs", "64"), ("16", "lpm", "512"), ("1", "lpm", "4096")])
def test_a_tiny_kv_pool_neither_overcommits_nor_deadlocks(prefill: str, page: str, policy: str, chunk: str) -> None:
    """Requests up to nearly the whole pool, arriving faster than it drains: retractions, then a clean finish."""
    engine, _ = build(
        [
            "--max-total-tokens",
            "3000",
            "--page-size",
            page,
            "--schedule-policy",
            policy,
            "--chunked-prefill-size",
            chunk,
        ],
        env={"SGLANG_SIM_PREFILL": prefill},
    )
    rng = random.Random(f"{prefill}{page}{policy}")
    t, trace = 0.0, []
    for _ in range(80):
        t += rng.expovariate(40)
        ids = [rng.randrange(1000, 1010) for _ in range(rng.randint(1, 1500))]  # few distinct tokens: cache hits
        trace.append(TraceRequest(t, ids, [5] * rng.randint(1, 600)))
    result = run_open_loop(engine, trace)
    assert all(r.state == "finished" and len(result.token_times[r.rid]) == r.target_len for r in result.requests)
    assert sum(r.retractions for r in result.requests) > 0
    replica = engine.replicas[0]
    assert replica.private == 0 and replica.tree is not None and replica.tree.protected_size == 0
    assert not replica.busy


def test_abort_frees_the_request_kv() -> None:
    engine, _ = build([])
    reqs = [SimRequest([7] * 3000, [5] * 50) for _ in range(3)]
    for r in reqs:
        engine.submit(r, 0.0)
    engine.advance(engine.next_event_time() or 0.0)
    engine.abort(reqs[0], 0.5)
    while (t := engine.next_event_time()) is not None:
        engine.advance(t)
    assert reqs[0].state == "aborted" and reqs[0].out_len < 50
    assert reqs[1].out_len == 50 and reqs[2].out_len == 50
    assert engine.replicas[0].private == 0


def test_engine_refuses_a_request_that_can_never_fit() -> None:
    engine, _ = build(["--max-total-tokens", "1000"])
    with pytest.raises(ValueError, match="can never fit the KV cache of 1000 tokens"):
        engine.submit(SimRequest([1] * 900, [5] * 101), 0.0)
    engine.submit(SimRequest([1] * 900, [5] * 100), 0.0)


# -- SGLang's defaults and refusals ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gpu", "flags", "expected"),
    [
        (
            "h100_sxm",
            [],
            {
                "mem_fraction_static": 0.835,
                "chunked_prefill_size": 8192,
                "cuda_graph_max_bs_decode": 256,
                "max_running_requests": 4096,
            },
        ),
        ("h200_sxm", [], {"mem_fraction_static": 0.907, "chunked_prefill_size": 8192}),
        ("b200_sxm", [], {"chunked_prefill_size": 16384, "cuda_graph_max_bs_decode": 512}),
        ("l40s", [], {"chunked_prefill_size": 4096, "cuda_graph_max_bs_decode": 32}),
        ("h100_sxm", ["--tp-size", "4"], {"cuda_graph_max_bs_decode": 512, "mem_fraction_static": 0.824}),
        ("h100_sxm", ["--chunked-prefill-size", "2048"], {"mem_fraction_static": 0.874}),
        ("h100_sxm", ["--max-running-requests", "48"], {"max_running_requests": 48}),
    ],
)
def test_defaults_resolve_like_sglang(gpu: str, flags: list[str], expected: dict[str, object]) -> None:
    values, given, version = parse_server_args(["--model-path", MODEL, *flags], "0.5.23")
    cfg = resolve_server(values, given, version, SimSettings(gpu=gpu))
    assert {k: cfg.args[k] for k in expected} == expected


def test_kv_capacity_follows_mem_fraction_and_max_total_tokens() -> None:
    def capacity(*flags: str) -> int:
        values, given, version = parse_server_args(["--model-path", MODEL, *flags], None)
        return resolve_server(values, given, version, SimSettings()).max_total_num_tokens

    default = capacity()
    assert 300_000 < default < 450_000  # Qwen3-8B on one H100: ~144 KiB of KV per token
    assert capacity("--mem-fraction-static", "0.5") < default / 2
    assert capacity("--max-total-tokens", "50000") == 50_000
    assert capacity("--tp-size", "2") > 2 * default  # half the weights and half the KV heads per GPU


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--tp-size", "4", "--dp-size", "4"], {"SGLANG_SIM_NUM_GPUS": "8"}, "needs tp_size*dp_size*pp_size"),
        (["--tp-size", "3"], {}, "must be divisible by tensor parallel size (3)"),
        (["--mem-fraction-static", "0.15"], {}, "Not enough memory"),
    ],
)
def test_configs_sglang_would_refuse(flags: list[str], env: dict[str, str], message: str) -> None:
    values, given, version = parse_server_args(["--model-path", MODEL, *flags], None)
    with pytest.raises(SimConfigError) as info:
        resolve_server(values, given, version, SimSettings.from_env(env))
    assert message in str(info.value)


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(SimConfigError, match="Qwen/Qwen3-8B"):
        load_model_spec("acme/NoSuchModel-7B")


def test_flags_not_modelled_are_listed() -> None:
    values, given, version = parse_server_args(
        ["--model-path", MODEL, "--quantization", "fp8", "--schedule-policy", "dfs-weight", "--tp-size", "2"], None
    )
    cfg = resolve_server(values, given, version, SimSettings())
    assert "quantization" not in cfg.not_modelled  # weights counted at FP8 width (issue 11)
    assert "schedule_policy=dfs-weight (runs as fcfs)" in cfg.not_modelled
    assert "tp_size" not in cfg.not_modelled


# -- perf model ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape",
    [
        StepShape(decode_reqs=1, decode_context=1000),
        StepShape(decode_reqs=64, decode_context=64_000),
        StepShape(prefill_reqs=1, prefill_tokens=1000),
        StepShape(prefill_reqs=1, prefill_tokens=8192),
        StepShape(prefill_reqs=1, prefill_tokens=2048, decode_reqs=64, decode_context=70_000),
    ],
)
def test_roofline_stays_close_to_aiconfigurator(shape: StepShape) -> None:
    if "aiconfigurator" not in PERF_MODELS:
        pytest.skip("aiconfigurator-core is not installed (Linux x86-64 only)")
    aic = perf_for("aiconfigurator").forward_ms(shape)
    roof = RooflinePerf(load_model_spec(MODEL), GPUS["h100_sxm"], tp=1).forward_ms(shape)
    assert 0.8 < roof / aic < 1.25, (shape, aic, roof)


@pytest.mark.parametrize("kind", PERF_MODELS)
def test_step_prices_are_plausible_for_an_8b_model_on_h100(kind: str) -> None:
    f = perf_for(kind).forward_ms
    decode1 = f(StepShape(decode_reqs=1, decode_context=1000))
    assert 5.0 < decode1 < 9.0  # ~16 GB of weights at ~2.7 TB/s
    assert decode1 < f(StepShape(decode_reqs=64, decode_context=64_000)) < 3 * decode1
    prefill = f(StepShape(prefill_reqs=1, prefill_tokens=1000))
    assert 15.0 < prefill < 35.0
    assert f(StepShape(prefill_reqs=1, prefill_tokens=8192)) > 7 * prefill


def test_cuda_graph_sizes_and_padding() -> None:
    sizes = cuda_graph_batch_sizes(256)
    assert sizes[:6] == (1, 2, 4, 8, 12, 16) and sizes[-1] == 256 and 24 in sizes
    timer = StepTimer(perf_for("roofline"), num_layers=36, graph_batch_sizes=sizes)
    padded = timer.forward_ms(StepShape(decode_reqs=17, decode_context=17_000))
    assert padded == timer.forward_ms(StepShape(decode_reqs=24, decode_context=17_000))


@pytest.mark.parametrize("kind", PERF_MODELS)
def test_decode_batches_above_the_cuda_graph_cap_are_slower(kind: str) -> None:
    timer = StepTimer(perf_for(kind), num_layers=36, graph_batch_sizes=cuda_graph_batch_sizes(32))
    inside = timer.step_seconds(StepShape(decode_reqs=32, decode_context=32_000)) / 32
    above = timer.step_seconds(StepShape(decode_reqs=33, decode_context=33_000)) / 33
    assert above > 1.1 * inside  # per token, one request more costs the graph
    make = workload(inp=500, out=(200, 300))
    small_cap, _ = build(["--cuda-graph-max-bs-decode", "16"], perf=kind)
    big_cap, _ = build(["--cuda-graph-max-bs-decode", "64"], perf=kind)
    slow = closed(small_cap, make, 32, 96).summary()
    fast = closed(big_cap, workload(inp=500, out=(200, 300)), 32, 96).summary()
    assert slow["itl_p50"] > 1.1 * fast["itl_p50"]
    assert slow["output_throughput"] < fast["output_throughput"]


# -- directional physics ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PERF_MODELS)
def test_lpm_beats_fcfs_only_with_shared_prefixes(kind: str) -> None:
    tight = ["--max-total-tokens", "80000", "--max-running-requests", "48"]

    def run(policy: str, groups: int) -> dict[str, float]:
        engine, _ = build(["--schedule-policy", policy, *tight], perf=kind)
        make = (
            workload(inp=200, out=(50, 150), groups=groups, prefix=1500)
            if groups
            else workload(inp=1700, out=(50, 150))
        )
        return closed(engine, make, 160, 700).summary()

    shared_lpm, shared_fcfs = run("lpm", 40), run("fcfs", 40)
    assert shared_lpm["cached_fraction"] > shared_fcfs["cached_fraction"] + 0.03
    assert shared_lpm["output_throughput"] > 1.05 * shared_fcfs["output_throughput"]
    plain_lpm, plain_fcfs = run("lpm", 0), run("fcfs", 0)
    assert plain_lpm["cached_fraction"] < 0.01
    assert plain_lpm["output_throughput"] == pytest.approx(plain_fcfs["output_throughput"], rel=0.02)


@pytest.mark.parametrize("kind", PERF_MODELS)
def test_chunk_size_trades_itl_for_throughput_only_with_mixed_chunk(kind: str) -> None:
    """Mixed steps: a larger chunk means longer steps (p99 ITL up) and fewer of them (throughput up). SGLang's
    default strict prefill runs a prompt's chunks back to back ahead of decodes, so a small chunk does not
    shorten the stall (it only adds steps)."""

    def run(chunk: int, *flags: str) -> dict[str, float]:
        engine, _ = build(["--chunked-prefill-size", str(chunk), *flags], perf=kind)
        return closed(engine, workload(inp=4000, out=(20, 80)), 64, 200).summary()

    small, large = run(256, "--enable-mixed-chunk"), run(2048, "--enable-mixed-chunk")
    assert large["request_throughput"] > 1.05 * small["request_throughput"]
    assert large["itl_p99"] > 2 * small["itl_p99"]
    strict_small, strict_large = run(256), run(2048)
    assert strict_large["request_throughput"] > 1.05 * strict_small["request_throughput"]
    assert strict_small["itl_p99"] > 0.8 * strict_large["itl_p99"]


def test_prefill_steps_carry_no_decodes_unless_mixed_chunk() -> None:
    """SGLang's default; --enable-mixed-chunk mixes, and SGLANG_SIM_PREFILL overrides either way."""
    kinds = {}
    for name, flags, env in (
        ("default", [], {}),
        ("flag", ["--enable-mixed-chunk"], {}),
        ("env strict", ["--enable-mixed-chunk"], {"SGLANG_SIM_PREFILL": "strict"}),
        ("env mixed", [], {"SGLANG_SIM_PREFILL": "mixed"}),
    ):
        engine, _ = build(flags, env=env, record=True)
        closed(engine, workload(inp=2000, out=(20, 200)), 32, 120)
        assert engine.steps is not None
        kinds[name] = {s.shape.kind for s in engine.steps}
    assert "mixed" not in kinds["default"] and "mixed" not in kinds["env strict"]
    assert "mixed" in kinds["flag"] and "mixed" in kinds["env mixed"]


@pytest.mark.parametrize("kind", PERF_MODELS)
def test_lower_mem_fraction_static_causes_queueing(kind: str) -> None:
    def run(frac: str) -> tuple[dict[str, float], int]:
        engine, _ = build(["--mem-fraction-static", frac], perf=kind)
        return closed(engine, workload(inp=1000, out=(150, 350)), 128, 400).summary(), engine.replicas[0].capacity

    roomy, roomy_cap = run("0.85")
    tight, tight_cap = run("0.24")
    assert tight_cap < roomy_cap / 10
    assert tight["queue_p50"] > 10 * max(roomy["queue_p50"], 0.01)
    assert tight["ttft_p50"] > 2 * roomy["ttft_p50"]
    assert tight["output_throughput"] < roomy["output_throughput"]


def test_max_running_requests_caps_the_batch() -> None:
    engine, _ = build(["--max-running-requests", "8"], record=True)
    result = closed(engine, workload(inp=300, out=(50, 100)), 32, 64)
    assert engine.steps is not None
    assert max(s.shape.decode_reqs + s.shape.prefill_reqs for s in engine.steps) <= 8
    assert max(s.queued for s in engine.steps) >= 20
    assert result.summary()["queue_p50"] > 0.1


def test_tensor_parallelism_speeds_up_steps() -> None:
    one, _ = build([])
    two, _ = build(["--tp-size", "2"])
    make = workload(inp=1000, out=(100, 200))
    assert (
        closed(two, make, 16, 48).summary()["itl_p50"]
        < 0.8 * closed(one, workload(inp=1000, out=(100, 200)), 16, 48).summary()["itl_p50"]
    )


def test_data_parallel_replicas_share_the_load_round_robin() -> None:
    engine, _ = build(["--dp-size", "2"])
    result = closed(engine, workload(inp=500, out=(50, 60)), 8, 40)
    assert {r.replica for r in result.requests} == {0, 1}
    assert sum(r.replica for r in result.requests) == 20


# -- lag accounting --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lags_ms", "warns"),
    [
        ([0.1] * 1000, False),
        ([0.1] * 995 + [8.0] * 5, False),  # 0.5 % late: within the tolerance
        ([0.1] * 900 + [8.0] * 100, True),  # 10 % late
        ([0.1] * 10 + [400.0], True),  # one huge stall
    ],
)
def test_lag_warning_thresholds(lags_ms: list[float], warns: bool) -> None:
    stats = LagStats()
    for lag in lags_ms:
        stats.observe(lag / 1e3)
    assert (stats.warning() is not None) is warns
    assert stats.as_dict()["max_s"] == pytest.approx(max(lags_ms) / 1e3)


def test_engine_config_defaults_are_sglangs() -> None:
    cfg = EngineConfig(max_total_tokens=1000, max_running_requests=10)
    assert (cfg.chunked_prefill_size, cfg.max_prefill_tokens, cfg.schedule_policy) == (8192, 16384, "fcfs")
