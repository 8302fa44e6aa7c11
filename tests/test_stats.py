"""The intervals behind ties without repeats (issue 10, bug 3): the percentile bootstrap over requests and
batch means, checked against a plain (slow, obvious) reading of the same resamples."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_sglang_tune.stats import batch_means_interval, bootstrap_interval


def plain_bootstrap(groups: list[list[float]], q: float | None, *, seed: int, resamples: int) -> tuple[float, float]:
    """The same draws as the vectorised code (chunks of 64 resamples of n requests), each resample's requests
    pooled and read with numpy's own mean or percentile."""
    rng = np.random.default_rng(seed)
    n, out = len(groups), []
    for start in range(0, resamples, 64):
        for row in rng.integers(0, n, (min(64, resamples - start), n)):
            pooled = np.concatenate([groups[i] for i in row])
            out.append(pooled.mean() if q is None else np.percentile(pooled, q))
    lo, hi = np.percentile(out, [2.5, 97.5])
    return float(lo), float(hi)


@pytest.mark.parametrize(("statistic", "q"), [("mean", None), ("p50", 50.0), ("p99", 99.0), ("p99_9", 99.9)])
def test_pooled_bootstrap_equals_a_plain_reading_of_the_same_resamples(statistic: str, q: float | None) -> None:
    rng = np.random.default_rng(7)
    groups = [list(rng.gamma(2.0, 5.0, size=rng.integers(3, 40))) for _ in range(30)]  # ITL gaps per request
    got = bootstrap_interval(groups, statistic, seed=11, resamples=200)
    assert got == pytest.approx(plain_bootstrap(groups, q, seed=11, resamples=200), rel=1e-9)


def test_bootstrap_is_reproducible_from_its_seed_and_holds_the_sample_statistic() -> None:
    ttft = [[float(v)] for v in np.random.default_rng(3).lognormal(3.0, 0.4, size=64)]
    a = bootstrap_interval(ttft, "p90", seed=5)
    assert a == bootstrap_interval(ttft, "p90", seed=5) and a != bootstrap_interval(ttft, "p90", seed=6)
    assert a is not None and a[0] <= float(np.percentile([v for (v,) in ttft], 90)) <= a[1]
    assert bootstrap_interval(ttft[:1], "mean", seed=5) is None  # one request: no interval


def test_binned_bootstrap_of_long_outputs_stays_close_to_the_exact_one() -> None:
    rng = np.random.default_rng(9)
    groups = [list(rng.gamma(2.0, 5.0, size=300)) for _ in range(20)]  # 6000 values: past POOLED_EXACT_MAX
    lo, hi = bootstrap_interval(groups, "p95", seed=2, resamples=200) or (0.0, 0.0)
    elo, ehi = plain_bootstrap(groups, 95.0, seed=2, resamples=200)
    assert lo == pytest.approx(elo, rel=0.02) and hi == pytest.approx(ehi, rel=0.02)


def test_batch_means_of_a_steady_rate_is_a_narrow_interval_around_it() -> None:
    events = [(t / 100.0, 5.0) for t in range(1000)]  # 5 tokens every 10 ms for 10 s: 500 tok/s
    lo, hi = batch_means_interval(events, 0.0, 10.0) or (0.0, 0.0)
    assert lo <= 500.0 <= hi and hi - lo < 1.0
    bursty = [(t / 100.0, 10.0 if (t // 100) % 2 else 0.0) for t in range(1000)]  # on/off each second
    blo, bhi = batch_means_interval(bursty, 0.0, 10.0) or (0.0, 0.0)
    assert blo < 500.0 < bhi and bhi - blo > 100.0
    assert batch_means_interval(events, 5.0, 5.0) is None
