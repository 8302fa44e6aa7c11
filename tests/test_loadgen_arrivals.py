"""Arrival processes: Poisson and gamma inter-arrival gaps with a fixed seed."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from pytest_sglang_tune.errors import SuiteError
from pytest_sglang_tune.loadgen.arrivals import arrival_offsets, interarrival_gaps


def ks_exponential(gaps: list[float], rate: float) -> float:
    """Kolmogorov-Smirnov distance between the gaps and Exp(rate)."""
    xs = sorted(gaps)
    n = len(xs)
    d = 0.0
    for i, x in enumerate(xs):
        cdf = 1.0 - math.exp(-rate * x)
        d = max(d, (i + 1) / n - cdf, cdf - i / n)
    return d


@pytest.mark.parametrize("rate", [0.5, 4.0, 250.0])
def test_poisson_gaps_are_exponential_with_mean_one_over_rate(rate: float) -> None:
    n = 5000
    gaps = interarrival_gaps(rate, n, random.Random(1234))
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1 / rate, rel=0.07)  # exponential: std == mean
    assert ks_exponential(gaps, rate) < 1.36 / math.sqrt(n)  # KS at the 5% level


def test_a_wrong_distribution_fails_the_same_ks_check() -> None:
    n = 5000
    rng = random.Random(1)
    uniform = [rng.uniform(0, 2) for _ in range(n)]  # same mean (1), not exponential
    assert ks_exponential(uniform, 1.0) > 1.36 / math.sqrt(n)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_burstiness_keeps_the_mean_and_sets_the_spread(burstiness: float) -> None:
    gaps = interarrival_gaps(10.0, 5000, random.Random(7), burstiness=burstiness)
    assert statistics.fmean(gaps) == pytest.approx(0.1, rel=0.06)
    cv = statistics.stdev(gaps) / statistics.fmean(gaps)
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.08)


def test_offsets_start_at_zero_accumulate_and_are_deterministic() -> None:
    a = arrival_offsets(5.0, 50, random.Random("s"))
    b = arrival_offsets(5.0, 50, random.Random("s"))
    gaps = interarrival_gaps(5.0, 49, random.Random("s"))
    assert a == b and len(a) == 50 and a[0] == 0.0
    assert all(y >= x for x, y in itertools.pairwise(a))
    assert a[-1] == pytest.approx(sum(gaps))
    assert arrival_offsets(5.0, 0, random.Random()) == []
    assert arrival_offsets(5.0, 1, random.Random()) == [0.0]


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets(math.inf, 4, random.Random()) == [0.0] * 4


@pytest.mark.parametrize(
    ("rate", "burstiness", "message"),
    [
        (0.0, 1.0, "request_rate 0.0 must be a positive number"),
        (-1.0, 1.0, "request_rate -1.0 must be a positive number"),
        (math.nan, 1.0, "request_rate nan must be a positive number"),
        (1.0, 0.0, "burstiness 0.0 must be positive"),
    ],
)
def test_invalid_parameters(rate: float, burstiness: float, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        interarrival_gaps(rate, 3, random.Random(), burstiness=burstiness)
