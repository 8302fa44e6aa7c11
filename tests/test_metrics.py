"""metrics.summarize and percentile on constructed samples."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from typing import Any

import pytest

from pytest_sglang_tune.grammar import parse_slo
from pytest_sglang_tune.loadgen.samples import PointResult, RequestSample
from pytest_sglang_tune.metrics import distribution, percentile, request_value, self_check_warnings, summarize

STATS = {"mean", "std", "p50", "p90", "p95", "p99", "p99_9"}


def mk(
    sent: float = 0.0,
    ttft: float | None = 0.1,
    gaps: Sequence[float] = (),
    ks: Sequence[int] | None = None,
    *,
    out: int | None = None,
    inp: int | None = 100,
    req_in: int = 100,
    req_out: int | None = None,
    error: str | None = None,
    warmup: bool = False,
    tail: float = 0.0,
) -> RequestSample:
    """Sent at ``sent``: first token after ``ttft``, then chunks after ``gaps`` carrying ``ks`` tokens."""
    ks = list(ks) if ks is not None else [1] * len(gaps)
    s = RequestSample(requested_input_tokens=req_in, requested_output_tokens=0, sent=sent, warmup=warmup)
    if ttft is not None:
        t = s.first_token = sent + ttft
        for g in gaps:
            t += g
            s.chunk_times.append(t)
        s.chunk_tokens = ks
        if error is None:
            s.done = t + tail
    s.output_tokens = out if out is not None else (1 + sum(ks) if ttft is not None else None)
    s.requested_output_tokens = req_out if req_out is not None else (s.output_tokens or 1)
    s.input_tokens = inp
    s.error = error
    return s


def point(samples: list[RequestSample], duration: float = 10.0) -> PointResult:
    return PointResult(samples=samples, started=0.0, finished=duration)


# -- percentile --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([4, 1, 3, 2], 0, 1.0),
        ([4, 1, 3, 2], 100, 4.0),
        ([5.0], 99, 5.0),
        (list(range(1, 11)), 90, 9.1),
        (list(range(1, 11)), 99.9, 9.991),
        ([], 50, None),
    ],
)
def test_percentile_table(values: list[float], q: float, expected: float | None) -> None:
    got = percentile(values, q)
    assert got == (None if expected is None else pytest.approx(expected))


def test_percentile_matches_numpy_linear() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(3)
    for n in (1, 2, 7, 100, 1001):
        xs = [rng.expovariate(1.0) for _ in range(n)]
        for q in (0, 1, 50, 90, 95, 99, 99.9, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12, abs=1e-15)


def test_percentile_rejects_q_outside_0_100() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100, got 101"):
        percentile([1.0], 101)


def test_distribution_stats_and_empty() -> None:
    d = distribution([1.0, 2.0, 3.0, 4.0], scale=1000.0)
    assert set(d) == STATS
    assert d["mean"] == 2500.0 and d["std"] == pytest.approx(1000 * math.sqrt(1.25)) and d["p50"] == 2500.0
    assert distribution([]) == dict.fromkeys(STATS)


# -- summarize ---------------------------------------------------------------------------------------------


def test_itl_gap_split_over_tokens_and_pooled() -> None:
    # chunk after 0.1 s with 1 token, then after 0.3 s with 3 tokens: ITL 100, 100, 100, 100 ms
    a = mk(gaps=[0.1, 0.3], ks=[1, 3])
    b = mk(gaps=[0.05])
    m = summarize(point([a, b]), gpus=1)
    assert sorted(a.itl_s()) == pytest.approx([0.1] * 4)
    assert m["itl_ms"]["mean"] == pytest.approx((4 * 100 + 50) / 5)
    assert m["itl_ms"]["p50"] == pytest.approx(100)
    assert m["tpot_ms"]["mean"] == pytest.approx(((0.4 / 4) + 0.05) / 2 * 1000)


@pytest.mark.parametrize(
    ("samples", "tpot_excluded", "tpot_count"),
    [
        ([mk(gaps=[]), mk(gaps=[0.1])], 1, 1),
        ([mk(gaps=[], out=1), mk(gaps=[], out=1)], 2, 0),
        ([mk(gaps=[0.1, 0.1]), mk(gaps=[0.2])], 0, 2),
        ([mk(gaps=[], out=0)], 1, 0),
    ],
)
def test_tpot_excludes_outputs_under_two_tokens(
    samples: list[RequestSample], tpot_excluded: int, tpot_count: int
) -> None:
    m = summarize(point(samples), gpus=1)
    assert m["tpot_excluded"] == tpot_excluded
    assert (m["tpot_ms"]["mean"] is None) == (tpot_count == 0)


def test_tpot_uses_served_output_tokens() -> None:
    s = mk(ttft=0.5, gaps=[0.1] * 4, tail=0.1)  # first token at 0.5, done at 1.0, 5 tokens
    assert summarize(point([s]), gpus=1)["tpot_ms"]["p50"] == pytest.approx(0.5 / 4 * 1000)


def test_throughputs_errors_and_warmup_exclusion() -> None:
    ok = [mk(sent=i, gaps=[0.1] * 9, inp=200) for i in range(4)]  # 10 output tokens each
    bad = [mk(error="http_503", ttft=None), mk(error="timeout", gaps=[0.1]), mk(error="http_503", ttft=None)]
    warm = [mk(warmup=True, gaps=[0.1] * 99), mk(warmup=True, error="timeout", ttft=None)]
    m = summarize(point(ok + bad + warm, duration=2.0), gpus=4)
    assert m["completed"] == 4 and m["failed"] == 3
    assert m["error_rate"] == pytest.approx(3 / 7)
    assert m["errors"] == {"http_503": 2, "timeout": 1}
    assert m["output_throughput"] == pytest.approx(40 / 2.0)
    assert m["output_throughput_per_gpu"] == pytest.approx(40 / 2.0 / 4)
    assert m["input_throughput"] == pytest.approx(800 / 2.0)
    assert m["request_throughput"] == pytest.approx(2.0)
    assert m["goodput"] == pytest.approx(2.0)  # no SLOs: every completed request counts
    assert m["duration_s"] == 2.0
    assert m["ttft_ms"]["mean"] == pytest.approx(100)  # failed and warmup samples left out


def test_served_tokens_fall_back_to_requested() -> None:
    s = mk(gaps=[0.1], inp=None, req_in=321)
    assert summarize(point([s], duration=1.0), gpus=1)["input_throughput"] == pytest.approx(321)


def good() -> RequestSample:
    """TTFT 100 ms, ITL 20 ms, TPOT 20 ms, E2E 280 ms."""
    return mk(ttft=0.1, gaps=[0.02] * 9)


@pytest.mark.parametrize(
    ("slos", "samples", "good"),
    [
        pytest.param(["ttft_ms.p99 <= 200"], [good(), mk(ttft=0.3, gaps=[0.02])], 1, id="ttft"),
        pytest.param(["e2e_ms.p50 < 250"], [good(), mk(ttft=0.1, gaps=[0.02] * 5)], 1, id="e2e"),
        pytest.param(["tpot_ms.mean <= 25"], [good(), mk(ttft=0.1, gaps=[0.05] * 3)], 1, id="tpot"),
        # the request's own p95 ITL: one 200 ms stall in 10 gaps fails p95, in 40 gaps it does not
        pytest.param(
            ["itl_ms.p95 <= 50"],
            [mk(ttft=0.1, gaps=[0.02] * 9 + [0.2]), mk(ttft=0.1, gaps=[0.02] * 39 + [0.2])],
            1,
            id="itl-own-p95",
        ),
        pytest.param(["itl_ms.mean <= 50"], [mk(ttft=0.1, gaps=[0.02] * 9 + [0.2])], 1, id="itl-own-mean"),
        # single-token outputs have no ITL/TPOT: they cannot violate those SLOs
        pytest.param(["itl_ms.p99 <= 1", "tpot_ms.p99 <= 1"], [mk(gaps=[], out=1), good()], 1, id="vacuous"),
        pytest.param(
            ["ttft_ms.p99 <= 200", "itl_ms.p99 <= 30"],
            [good(), mk(ttft=0.3, gaps=[0.02]), mk(ttft=0.1, gaps=[0.04])],
            1,
            id="all-must-hold",
        ),
        # aggregate SLOs do not enter goodput
        pytest.param(["error_rate <= 0", "output_throughput >= 1e9"], [good(), good()], 2, id="aggregate"),
        pytest.param(
            ["ttft_ms.p99 <= 200"],
            [good(), mk(error="timeout", ttft=0.05, gaps=[0.01])],
            1,
            id="failed-never-good",
        ),
    ],
)
def test_goodput_per_request_slos(slos: list[str], samples: list[RequestSample], good: int) -> None:
    m = summarize(point(samples, duration=2.0), gpus=1, slos=[parse_slo(s) for s in slos])
    assert m["goodput"] == pytest.approx(good / 2.0)


def test_request_value_uses_the_requests_own_stat() -> None:
    s = mk(ttft=0.1, gaps=[0.01] * 9 + [0.1])
    assert request_value(s, parse_slo("itl_ms.p50 <= 1")) == pytest.approx(10)
    assert request_value(s, parse_slo("itl_ms.mean <= 1")) == pytest.approx(19)
    assert request_value(s, parse_slo("ttft_ms.p90 <= 1")) == pytest.approx(100)
    with pytest.raises(ValueError, match="not a per-request SLO"):
        request_value(s, parse_slo("error_rate <= 0"))


def test_self_check_counts_mismatches() -> None:
    samples = [
        mk(gaps=[0.1] * 9, req_out=10, inp=100, req_in=100),
        mk(gaps=[0.1] * 7, req_out=10, inp=103, req_in=100),
        mk(gaps=[0.1] * 9, req_out=10, inp=None, req_in=100),
    ]
    sc = summarize(point(samples), gpus=1)["self_check"]
    assert sc["requested_input_mean"] == 100 and sc["served_input_mean"] == pytest.approx(101.5)
    assert sc["input_mismatches"] == 1 and sc["input_max_abs_diff"] == 3 and sc["input_unreported"] == 1
    assert sc["requested_output_mean"] == 10 and sc["served_output_mean"] == pytest.approx(28 / 3)
    assert sc["output_mismatches"] == 1
    out, inp = self_check_warnings(sc, exact_input=True)
    assert out.startswith("self-check: 1 of 3 completed requests were served a different output length")
    assert "served mean 9.3 vs requested 10.0 tokens" in out
    assert "1 of 3" in inp and "served mean 101.5 vs requested 100.0 tokens, largest difference 3" in inp
    assert self_check_warnings(sc, exact_input=False) == [out]  # estimated inputs (datasets, sessions)
    clean = summarize(point([mk(gaps=[0.1] * 9, req_out=10, inp=100, req_in=100)]), gpus=1)["self_check"]
    assert self_check_warnings(clean, exact_input=True) == []


@pytest.mark.parametrize(
    "samples",
    [
        [],
        [mk(warmup=True, gaps=[0.1])],
        [mk(error="http_500", ttft=None), mk(error="connection_error", ttft=None)],
    ],
)
def test_empty_and_all_failed_give_null_stats_never_nan(samples: list[RequestSample]) -> None:
    m: dict[str, Any] = summarize(PointResult(samples=samples, started=5.0, finished=5.0), gpus=2)
    for name in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert m[name] == dict.fromkeys(STATS)
    json.dumps(m, allow_nan=False)  # raises on NaN/inf
    measured = [s for s in samples if not s.warmup]
    assert m["completed"] == 0 and m["failed"] == len(measured)
    assert m["error_rate"] == (1.0 if measured else None)
    assert m["output_throughput"] == 0.0 and m["goodput"] == 0.0


def test_block_has_the_report_keys() -> None:
    m = summarize(point([good()]), gpus=1)
    assert {
        "ttft_ms",
        "itl_ms",
        "tpot_ms",
        "e2e_ms",
        "output_throughput",
        "output_throughput_per_gpu",
        "input_throughput",
        "request_throughput",
        "goodput",
        "error_rate",
        "completed",
        "failed",
        "tpot_excluded",
        "self_check",
    } <= set(m)
    json.dumps(m, allow_nan=False)


def test_gpus_must_be_positive() -> None:
    with pytest.raises(ValueError, match="gpus must be at least 1, got 0"):
        summarize(point([]), gpus=0)
