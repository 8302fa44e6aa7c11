"""The benchmark's ground-truth server: what it logs as the truth is what a client receives, on every endpoint
and in both ways of streaming with ITL 0 (``burst``: all tokens in one send; ``step``: one per loop turn)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import requests
from servers import serving

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.loadgen.point import run_point
from pytest_sglang_tune.loadgen.prompts import build_requests
from pytest_sglang_tune.loadgen.workload import Load, Workload, parse_scenario

GROUNDTRUTH = [__import__("sys").executable, str(Path(__file__).resolve().parents[1] / "benchmarks" /
                                                  "groundtruth_server.py")]


def _workload(endpoint: str, n: int = 8) -> Workload:
    inp, out = parse_scenario("D(24,16)")
    return Workload("gt", inp, out, num_requests=n, warmup_requests=0, endpoint=endpoint, seed=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["burst", "step"])
@pytest.mark.parametrize("endpoint", ["completions", "chat", "generate"])
def test_zero_itl_truth_matches_what_the_client_reads(mode: str, endpoint: str) -> None:
    wl = _workload(endpoint)
    with serving([*GROUNDTRUTH, "--ttft-ms", "0", "--itl-ms", "0", "--zero-itl", mode]) as url:
        point = run_point(Endpoint(url, "gt"), wl, Load(concurrency=4))
        truth = requests.get(url + "/gt/log", timeout=10).json()["requests"]
        stats = requests.get(url + "/gt/stats", timeout=10).json()
    samples = [s for s in point.samples if not s.warmup]
    assert len(samples) == 8 and all(s.ok for s in samples), [s.error_detail for s in samples]
    assert [s.output_tokens for s in samples] == [16] * 8
    assert all(len(s.itl_s()) == 15 for s in samples)
    assert len(truth) == 8
    if endpoint != "chat":  # (chat bodies depend on the calibration probes the runner makes first)
        keys = {zlib.crc32(r.body) for r in build_requests(wl, "gt")}
        assert {t["key"] for t in truth} == keys  # one log entry per request, keyed by its body
    assert all(len(t["chunks"]) == 16 for t in truth)
    assert stats["tokens"] == 8 * 16
    for t in truth:
        chunks = t["chunks"]
        assert chunks == sorted(chunks) and chunks[0] >= t["recv"]
        if mode == "burst":  # every token was due at the first-token time: one send, one true time
            assert len(set(chunks)) == 1
    if mode == "burst":  # ... so the client read each response whole: every gap it saw is zero
        assert all(set(s.itl_s()) == {0.0} for s in samples)


def test_zero_output_tokens_still_ends_the_stream() -> None:
    with serving([*GROUNDTRUTH, "--ttft-ms", "0", "--itl-ms", "0"]) as url:
        body = {"model": "gt", "prompt": [1, 2, 3], "max_tokens": 0, "stream": True}
        r = requests.post(url + "/v1/completions", json=body, timeout=10)
        truth = requests.get(url + "/gt/log", timeout=10).json()["requests"]
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    assert '"completion_tokens":0' in r.text
    assert [t["chunks"] for t in truth] == [[]]
