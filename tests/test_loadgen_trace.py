"""Trace replay: reading Mooncake/Azure traces, windows, schedules, implied cache hits, exact prompts, hashes."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import SIM, serving

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.bench import flush_cache
from pytest_sglang_tune.errors import SuiteError
from pytest_sglang_tune.loadgen.point import run_point
from pytest_sglang_tune.loadgen.prompts import TOKEN_ID_RANGE, ChatCalibration
from pytest_sglang_tune.loadgen.samples import PointResult
from pytest_sglang_tune.loadgen.trace import (
    BLOCK_TOKENS,
    TraceError,
    TraceRequest,
    build_trace_requests,
    implied_cached_tokens,
    implied_hit_fraction,
    load_trace,
    mean_rate,
    parse_timestamp,
    replay_stats,
    schedule,
    select,
    trace_offsets,
    uniquified,
    workload_trace_requests,
)
from pytest_sglang_tune.loadgen.workload import FROM_DATASET, Load, Workload
from pytest_sglang_tune.ranking import load_label

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
MOONCAKE20 = TRACES / "mooncake_synthetic_real20.jsonl"
AZURE20 = TRACES / "azure_conv_real20.csv"


def mooncake_line(ts: float, n_in: int, n_out: int, ids: list[int] | None = None) -> str:
    ids = ids if ids is not None else list(range(-(-n_in // BLOCK_TOKENS)))
    return json.dumps({"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": ids})


def trace_workload(path: Path | str, **kw: object) -> Workload:
    fields: dict[str, object] = {"endpoint": "generate", "num_requests": 1, "warmup_requests": 0, **kw}
    return Workload("t", FROM_DATASET, FROM_DATASET, trace=str(path), **fields)  # type: ignore[arg-type]


# -- reading ---------------------------------------------------------------------------------------------------


def test_the_shipped_real_lines_read_as_the_public_files_say() -> None:
    moon = load_trace(MOONCAKE20)
    assert moon.format == "mooncake" and len(moon.requests) == 20
    first, last = moon.requests[0], moon.requests[-1]
    assert (first.offset_s, first.input_len, first.output_len, first.hash_ids[:2]) == (0.0, 30575, 8, (1145, 1146))
    assert last.offset_s == pytest.approx((17317 - 12709) / 1000)  # ms → s from the first line
    assert all(len(r.hash_ids or ()) == -(-r.input_len // BLOCK_TOKENS) for r in moon.requests)
    az = load_trace(AZURE20)
    assert az.format == "azure" and len(az.requests) == 20 and az.requests[0].hash_ids is None
    assert (az.requests[0].input_len, az.requests[0].output_len) == (374, 44)
    assert az.requests[1].offset_s == pytest.approx(50.9951690 - 46.6805900, abs=1e-6)  # 7-digit fractions
    assert [r.line for r in az.requests[:2]] == [2, 3]  # the header is line 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2023-11-16 18:15:46.6805900", dt.datetime(2023, 11, 16, 18, 15, 46, 680590)),
     ("2024-05-10 00:00:00", dt.datetime(2024, 5, 10)),
     ("2024-05-10T00:00:01.5+00:00", dt.datetime(2024, 5, 10, 0, 0, 1, 500000, tzinfo=dt.UTC))],
)
def test_azure_timestamps(text: str, expected: dt.datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("t.jsonl", mooncake_line(0, 10, 2) + "\n{oops\n", "t.jsonl:2: not valid JSON"),
        ("t.jsonl", "[1, 2]\n", "t.jsonl:1: expected a JSON object with timestamp, input_length, output_length"),
        ("t.jsonl", '{"timestamp": 0, "output_length": 3}\n', "t.jsonl:1: input_length: missing input_length"),
        ("t.jsonl", mooncake_line(5, 10, 2) + "\n" + mooncake_line(4, 10, 2) + "\n",
         "t.jsonl:2: timestamp: timestamp 4 is earlier than the line before (line 1); a trace must be sorted"),
        ("t.jsonl", mooncake_line(0, 1025, 2, [1, 2]), "t.jsonl:1: hash_ids: hash_ids has 2 ids but input_length 1025 "
         "needs 3 (one per 512-token block)"),
        ("t.jsonl", mooncake_line(0, 10, 2, ["a"]), "t.jsonl:1: hash_ids: hash_ids must be a list of integers"),
        ("t.jsonl", '{"timestamp": 0, "input_length": true, "output_length": 3}',
         "t.jsonl:1: input_length: input_length must be an integer >= 1, got True"),
        ("t.jsonl", '{"timestamp": "noon", "input_length": 3, "output_length": 3}',
         "t.jsonl:1: timestamp: timestamp must be a number of milliseconds, got 'noon'"),
        ("t.jsonl", "\n\n", "t.jsonl: trace: the trace holds no request"),
        ("t.csv", "TIMESTAMP,GeneratedTokens\n2023-11-16 18:15:46,3\n",
         "t.csv:1: ContextTokens: missing column ContextTokens; an Azure LLM inference trace has the columns "
         "TIMESTAMP, ContextTokens, GeneratedTokens (found: TIMESTAMP, GeneratedTokens)"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3,4\nyesterday,3,4\n",
         "t.csv:3: TIMESTAMP: TIMESTAMP 'yesterday' is not a date-time like 2023-11-16 18:15:46.6805900"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:47,3,4\n2023-11-16 18:15:46,3,4\n",
         "t.csv:3: TIMESTAMP: TIMESTAMP '2023-11-16 18:15:46' is earlier than the line before (line 2)"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:47,-3,4\n",
         "t.csv:2: ContextTokens: ContextTokens must be an integer >= 1, got -3"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:47,3\n",
         "t.csv:2: 2 cells, the header has 3"),
        ("t.csv", "", "t.csv:1: the file is empty; an Azure trace starts with the header"),
        ("t.txt", "x", "t.txt' is not a trace this tool reads: the extension must be .jsonl (Mooncake trace) or "
         ".csv (Azure LLM inference trace), got '.txt'"),
    ],
)
def test_malformed_traces_name_file_line_field_and_value(tmp_path: Path, name: str, body: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(TraceError) as excinfo:
        load_trace(path)
    assert message in str(excinfo.value)
    assert str(path) in str(excinfo.value)  # the whole path of the file, not only its name


def test_a_missing_trace_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"cannot read the trace .*nowhere\.jsonl"):
        load_trace(tmp_path / "nowhere.jsonl")


# -- window, schedule, rate -----------------------------------------------------------------------------------


def test_window_and_max_requests_select_and_the_schedule_keeps_the_trace_offsets() -> None:
    trace = load_trace(MOONCAKE20)
    offsets = [r.offset_s for r in trace.requests]
    picked = select(trace, (1.0, 3.0))
    assert [r.offset_s for r in picked] == [o for o in offsets if 1.0 <= o < 3.0]
    assert select(trace, (1.0, None), 3) == picked[:3]
    assert schedule(picked) == [o - picked[0].offset_s for o in [r.offset_s for r in picked]]
    assert schedule(picked, 0.5) == [(r.offset_s - picked[0].offset_s) * 0.5 for r in picked]
    assert mean_rate(picked, 2.0) == pytest.approx((len(picked) - 1) / ((picked[-1].offset_s - picked[0].offset_s) * 2))
    with pytest.raises(TraceError, match=r"window: the window \[100, 200\) s holds no request; the trace's requests "
                                         r"lie between 0 and 4.608 s"):
        select(trace, (100.0, 200.0))


def test_the_runner_schedule_is_the_trace_offsets_times_time_scale() -> None:
    wl = trace_workload(MOONCAKE20, num_requests=20, loads=(Load(time_scale=0.25),)).at_load(0)
    assert wl.time_scale == 0.25
    expected = [(r.offset_s - 0.0) * 0.25 for r in load_trace(MOONCAKE20).requests]
    assert trace_offsets(wl) == expected  # exactly: no Poisson draw, no rescaling


# -- what the trace's hash_ids imply --------------------------------------------------------------------------


def req(n_in: int, ids: tuple[int, ...] | None) -> TraceRequest:
    return TraceRequest(0.0, n_in, 1, ids)


@pytest.mark.parametrize(
    ("requests", "cached"),
    [
        ([req(1024, (1, 2)), req(1024, (1, 2))], [0, 1023]),  # the same prompt: all but the last token
        ([req(1024, (1, 2)), req(1500, (1, 2, 3))], [0, 1024]),  # a continuation shares the whole first prompt
        ([req(1500, (1, 2, 3)), req(700, (1, 2))], [0, 699]),  # a shorter prompt inside a longer one
        ([req(700, (1, 2)), req(1500, (1, 2, 3))], [0, 700]),  # a partial block shares as far as both have it
        ([req(1024, (1, 2)), req(1024, (1, 9))], [0, 512]),  # diverges after the first block
        ([req(1024, (1, 2)), req(1024, (2, 1))], [0, 0]),  # the same ids elsewhere share nothing: prefixes only
        ([req(1024, (1, 2)), req(1024, (3, 4)), req(1024, (3, 4))], [0, 0, 1023]),
        ([req(100, None), req(100, None)], [0, 0]),  # no hash_ids: content of its own
    ],
)
def test_implied_cached_tokens(requests: list[TraceRequest], cached: list[int]) -> None:
    assert implied_cached_tokens(requests) == cached


def test_uniquified_ids_imply_no_hits_and_the_real_lines_imply_theirs() -> None:
    reqs = load_trace(MOONCAKE20).requests
    assert implied_hit_fraction(reqs) == pytest.approx((57 * 512 + 28 * 512) / sum(r.input_len for r in reqs))
    assert implied_hit_fraction(uniquified(reqs)) == 0.0
    assert [r.input_len for r in uniquified(reqs)] == [r.input_len for r in reqs]


# -- prompts --------------------------------------------------------------------------------------------------


def ids_of(body: bytes) -> list[int]:
    return list(json.loads(body)["input_ids"])


def test_prompts_are_exact_and_equal_ids_mean_equal_blocks() -> None:
    wl = trace_workload(MOONCAKE20, num_requests=20)
    reqs = load_trace(MOONCAKE20).requests
    built = build_trace_requests(wl, "m")
    prompts = [ids_of(r.body) for r in built]
    assert [len(p) for p in prompts] == [r.input_len for r in reqs]
    assert [b.output_tokens for b in built] == [r.output_len for r in reqs]
    lo, hi = TOKEN_ID_RANGE
    assert all(lo <= t <= hi for p in prompts for t in p)
    # lines 43 and 50 of the public file share 57 blocks, then differ
    shared = 57 * 512
    assert prompts[7][:shared] == prompts[0][:shared] and prompts[7][shared:][:512] != prompts[0][shared:][:512]
    # a prompt's measured common prefix with every earlier one is what the hash ids imply (one more: the last
    # token, which a server never serves from its cache, can still be equal)
    for i, cached in enumerate(implied_cached_tokens(reqs)):
        common = max((_common(prompts[i], prompts[j]) for j in range(i)), default=0)
        assert min(common, reqs[i].input_len - 1) == cached
    assert build_trace_requests(wl, "m") == built  # deterministic
    other = build_trace_requests(trace_workload(MOONCAKE20, num_requests=20, seed=1), "m")
    assert ids_of(other[0].body) != prompts[0]


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_warmup_prompts_share_nothing_with_the_trace() -> None:
    wl = trace_workload(MOONCAKE20, num_requests=20, warmup_requests=3)
    warm = build_trace_requests(wl, "m", warmup=True)
    measured = [ids_of(r.body) for r in build_trace_requests(wl, "m")]
    assert [r.warmup for r in warm] == [True] * 3 and [r.input_tokens for r in warm] == [2048, 913, 2048]  # capped
    assert all(_common(ids_of(w.body), m) < 4 for w in warm for m in measured)


def test_azure_rows_and_chat_prompts() -> None:
    wl = trace_workload(AZURE20, num_requests=20)
    built = build_trace_requests(wl, "m")
    assert [len(ids_of(b.body)) for b in built] == [r.input_len for r in load_trace(AZURE20).requests]
    cal = ChatCalibration(1.0, 7.0, ("the", "of", "and"))
    chat = build_trace_requests(trace_workload(MOONCAKE20, num_requests=20, endpoint="chat"), "m", calibration=cal)
    text = json.loads(chat[0].body)["messages"][0]["content"]
    assert len(text.split()) == 30575 - 7 and set(text.split()) <= {"the", "of", "and"}


# -- the workload's identity ----------------------------------------------------------------------------------


def test_the_content_hash_covers_bytes_window_time_scale_and_max_requests_never_the_path(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "renamed.jsonl"
    copy.parent.mkdir()
    shutil.copy(MOONCAKE20, copy)
    base = trace_workload(MOONCAKE20)
    assert trace_workload(copy).content_hash == base.content_hash
    assert str(MOONCAKE20) not in json.dumps(base.content_dict()) and "real20" not in json.dumps(base.content_dict())
    changed = [trace_workload(MOONCAKE20, time_scale=0.5), trace_workload(MOONCAKE20, max_requests=5),
               trace_workload(MOONCAKE20, trace_window=(1.0, None)), trace_workload(MOONCAKE20, seed=1)]
    assert len({base.content_hash, *(w.content_hash for w in changed)}) == 5
    copy.write_text(copy.read_text().replace('"output_length": 8', '"output_length": 9', 1))
    assert trace_workload(copy).content_hash != base.content_hash


def test_a_trace_level_reads_ts_in_ids_and_reports() -> None:
    load = Load(request_rate=8.24653, time_scale=0.5)
    assert load.label() == "ts0.5" and Load(concurrency=8, time_scale=1.0).label() == "ts1-c8"
    assert load.to_dict() == {"concurrency": None, "request_rate": 8.24653, "time_scale": 0.5}
    assert Load(concurrency=4).to_dict() == {"concurrency": 4, "request_rate": None}  # unchanged for the rest
    assert load_label(load.to_dict()) == "ts0.5" and load_label({"time_scale": 2, "concurrency": 4}) == "ts2-c4"


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"time_scale": 0.0}, "time_scale: time_scale 0.0 must be a positive number"),
     ({"max_requests": 0}, "max_requests: max_requests 0 must be at least 1"),
     ({"trace_window": (5.0, 5.0)}, "window: window [5.0, 5.0] must be [start_s, end_s] with 0 <= start_s < end_s"),
     ({"turns": 2, "endpoint": "chat"}, "turns: turns 2 cannot be combined with trace")],
)
def test_bad_trace_workloads(kw: dict[str, object], message: str) -> None:
    with pytest.raises(SuiteError, match=message.replace("[", r"\[").replace("]", r"\]")):
        trace_workload(MOONCAKE20, **kw)


# -- against the simulated server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with serving(SIM) as url:
        yield url


def write_trace(path: Path, requests: list[TraceRequest]) -> Path:
    path.write_text("".join(mooncake_line(r.offset_s * 1000, r.input_len, r.output_len, list(r.hash_ids or ()))
                            + "\n" for r in requests))
    return path


def replay(url: str, path: Path | str, time_scale: float, **kw: object) -> tuple[PointResult, Workload]:
    reqs = select(load_trace(path), kw.get("trace_window"), kw.get("max_requests"))  # type: ignore[arg-type]
    wl = trace_workload(path, num_requests=len(reqs), loads=(Load(time_scale=time_scale),), **kw).at_load(0)
    assert flush_cache(Endpoint(url, "m"))  # each replay sees only its own sharing
    return run_point(Endpoint(url, "m"), wl, wl.loads[0]), wl


@pytest.mark.parametrize(("trace", "window"), [(MOONCAKE20, None), (TRACES / "mooncake_sample.jsonl", (10.0, 14.0))])
def test_the_sim_cache_hits_are_what_the_hash_ids_imply(sim: str, tmp_path: Path, trace: Path,
                                                         window: tuple[float, float] | None) -> None:
    point, wl = replay(sim, trace, 1.0, trace_window=window)
    stats = replay_stats(point, wl)
    implied = stats["implied_cache_hit_fraction"]
    assert implied > 0.2 and stats["sent"] == wl.num_requests
    assert stats["cache_hit_fraction"] == pytest.approx(implied, rel=0.10)
    measured = [s for s in point.samples if not s.warmup]
    assert all(s.ok for s in measured) and [s.input_tokens for s in measured] == [
        s.requested_input_tokens for s in measured]
    # the same lengths and times with every block id unique: nothing to hit (a first token may collide by chance)
    control = write_trace(tmp_path / "unique.jsonl", uniquified(workload_trace_requests(wl)[:10]))
    point, wl = replay(sim, control, 1.0)
    assert implied_hit_fraction(load_trace(control).requests) == 0.0
    assert replay_stats(point, wl)["cache_hit_fraction"] < 0.001


def test_open_loop_sends_on_the_trace_offsets(sim: str) -> None:
    point, wl = replay(sim, AZURE20, 0.1)
    measured = sorted((s for s in point.samples if not s.warmup), key=lambda s: s.intended_send)
    t0 = measured[0].intended_send
    assert [s.intended_send - t0 for s in measured] == pytest.approx(trace_offsets(wl), abs=1e-9)
    assert all(s.sent >= s.intended_send for s in measured)


def test_bench_replays_a_trace(sim: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "pytest_sglang_tune.cli", "bench", "--url", sim, "--model", "m", "--trace",
           str(AZURE20), "--max-requests", "6", "--time-scale", "0.25", "--time-scale", "0.1", "--concurrency", "4",
           "--endpoint", "generate", "--warmup-requests", "0", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "trace azure_conv_real20.csv (azure, 6 requests over" in proc.stdout
    assert "  replay: sent 6 at" in proc.stdout and "cache hit 0.000 (trace implies 0.000)" in proc.stdout
    results = json.loads(out.read_text())["results"]
    assert [r["test_id"] for r in results] == ["bench[ts0.25-c4]", "bench[ts0.1-c4]"]
    assert [r["load"]["time_scale"] for r in results] == [0.25, 0.1]
    assert results[0]["workload"]["trace"]["requests"] == 6 and results[0]["replay"]["sent"] == 6
    assert results[0]["workload"]["content_hash"] != results[1]["workload"]["content_hash"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--scenario", "D(8,2)"], "--scenario cannot be combined with --trace: lengths come from the trace"),
     (["--request-rate", "3"], "--request-rate/--rate-sweep cannot be combined with --trace"),
     (["--window", "9:3"], "--window '9:3': need START:END with 0 <= START < END"),
     (["--window", "50:60"], "the window [50, 60) s holds no request"),
     (["--time-scale", "2", "--time-scale", "1", "--concurrency", "1", "--concurrency", "2"],
      "give several --time-scale or several --concurrency, not both")],
)
def test_bench_trace_usage_errors(extra: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "pytest_sglang_tune.cli", "bench", "--url", "http://127.0.0.1:9", "--model", "m",
           "--trace", str(AZURE20), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
