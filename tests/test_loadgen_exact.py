"""Workload lengths are exact against the real simulated server, the self-check fires on a server that stops
early, and ``sglang-tune bench --url`` runs against the sim and against the benchmark's ground-truth server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import serving

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.loadgen.point import run_point
from pytest_sglang_tune.loadgen.workload import Load, SharedPrefix, Workload, parse_scenario
from pytest_sglang_tune.metrics import summarize

REPO = Path(__file__).resolve().parents[1]
GROUNDTRUTH = REPO / "benchmarks" / "groundtruth_server.py"
SHAREGPT = str(Path(__file__).parent / "fixtures" / "sharegpt_small.json")


def _serve(cmd: list[str]) -> Iterator[str]:
    with serving(cmd) as url:
        yield url


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    yield from _serve([sys.executable, "-m", "pytest_sglang_tune.sim", "--model-path", "Qwen/Qwen3-8B"])


@pytest.fixture
def truncating_url() -> Iterator[str]:
    """The ground-truth server playing a server that stops every stream after 5 tokens."""
    yield from _serve([sys.executable, str(GROUNDTRUTH), "--ttft-ms", "5", "--itl-ms", "1", "--cap-output", "5"])


@pytest.fixture(scope="module")
def groundtruth_url() -> Iterator[str]:
    yield from _serve([sys.executable, str(GROUNDTRUTH), "--ttft-ms", "20", "--itl-ms", "2"])


@pytest.mark.parametrize("endpoint", ["chat", "completions", "generate"])
@pytest.mark.parametrize("scenario", ["U(40,300)/(1,24)", "N(120,40)/(8,3)"])
def test_served_lengths_equal_requested_on_the_sim(sim_url: str, endpoint: str, scenario: str) -> None:
    inp, out = parse_scenario(scenario)
    wl = Workload("exact", inp, out, num_requests=10, warmup_requests=1, endpoint=endpoint,  # type: ignore[arg-type]
                  shared_prefix=SharedPrefix(2, 30), seed=7)
    point = run_point(Endpoint(sim_url, "Qwen/Qwen3-8B"), wl, Load(concurrency=4))
    measured = [s for s in point.samples if not s.warmup]
    assert len(measured) == 10 and all(s.ok for s in measured), [s.error_detail for s in measured]
    assert [s.input_tokens for s in measured] == [s.requested_input_tokens for s in measured]
    assert [s.output_tokens for s in measured] == [s.requested_output_tokens for s in measured]
    check = summarize(point, gpus=1)["self_check"]
    assert check["input_mismatches"] == 0 and check["output_mismatches"] == 0
    assert point.warnings == []


def test_self_check_fires_on_a_server_that_stops_early(truncating_url: str) -> None:
    inp, out = parse_scenario("D(64,12)")
    wl = Workload("trunc", inp, out, num_requests=6, warmup_requests=0, endpoint="completions")
    point = run_point(Endpoint(truncating_url, "gt"), wl, Load(concurrency=2))
    m = summarize(point, gpus=1)
    check = m["self_check"]
    assert m["completed"] == 6  # the streams end properly (finish_reason length, [DONE]) ...
    assert check["output_mismatches"] == 6  # ... but with 5 tokens instead of 12
    assert check["requested_output_mean"] == 12 and check["served_output_mean"] == 5
    assert check["input_mismatches"] == 0
    assert [w for w in point.warnings if w.startswith("self-check")] == [
        "self-check: 6 of 6 completed requests were served a different output length than requested (served mean "
        "5.0 vs requested 12.0 tokens): the server stops early or ignores max_tokens/ignore_eos; throughputs and "
        "TPOT describe what was served"]


def test_self_check_warns_when_the_server_counts_the_prompt_differently() -> None:
    with serving([sys.executable, str(GROUNDTRUTH), "--ttft-ms", "1", "--itl-ms", "1", "--prompt-delta", "3"]) as url:
        exact = run_point(Endpoint(url, "gt"), _wl("D(64,4)"), Load(concurrency=2))
        ds = run_point(Endpoint(url, "gt"), _wl("D(64,4)", dataset=SHAREGPT), Load(concurrency=2))
    (w,) = [w for w in exact.warnings if w.startswith("self-check")]
    assert "6 of 6 completed requests were served a different input length" in w
    assert "served mean 67.0 vs requested 64.0 tokens, largest difference 3" in w
    assert not [w for w in ds.warnings if w.startswith("self-check")]  # dataset inputs are estimates: no warning


def _wl(scenario: str, **kw: object) -> Workload:
    inp, out = parse_scenario(scenario)
    return Workload("w", inp, out, num_requests=6, warmup_requests=0, endpoint="completions", **kw)  # type: ignore[arg-type]


def _bench(url: str, tmp_path: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pytest_sglang_tune.cli", "bench", "--url", url, "--model", "q",
                           "--scenario", "D(100,8)", "--num-requests", "6", "-o", str(out), *extra],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(out.read_text()))


@pytest.mark.parametrize("endpoint", ["chat", "completions", "generate"])
def test_bench_url_against_the_sim(sim_url: str, tmp_path: Path, endpoint: str) -> None:
    report = _bench(sim_url, tmp_path, "--endpoint", endpoint, "--concurrency", "3")
    (r,) = report["results"]
    assert r["metrics"]["completed"] == 6 and r["metrics"]["failed"] == 0
    assert r["metrics"]["self_check"]["input_mismatches"] == 0
    assert r["metrics"]["self_check"]["served_input_mean"] == 100


def test_bench_url_against_the_groundtruth_server(groundtruth_url: str, tmp_path: Path) -> None:
    report = _bench(groundtruth_url, tmp_path, "--request-rate", "40", "--request-rate", "80")
    assert [r["load"]["request_rate"] for r in report["results"]] == [40, 80]
    for r in report["results"]:
        m = r["metrics"]
        assert m["completed"] == 6 and m["failed"] == 0
        assert m["self_check"]["output_mismatches"] == 0
        # the server's schedule: first token 20 ms after arrival, then one every 2 ms
        assert 19.5 <= m["ttft_ms"]["p50"] <= 40
        assert 1.0 <= m["itl_ms"]["p50"] <= 4.0
