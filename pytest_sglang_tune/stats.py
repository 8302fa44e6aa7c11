"""Intervals and the one tie rule (pure). Every comparison of configs — ranking, the HTML report, the terminal
summary, ``sglang-tune diff`` and the in-pytest baseline gate — goes through :func:`tied`.

**Intervals (95 %, two-sided).**

* ``repeats >= 2``: Student's t over the repeats' values of the metric (:func:`student_t_interval`).
* ``repeats == 1``: from the point's own requests.

  - latency statistics (``ttft_ms``, ``itl_ms``, ``tpot_ms``, ``e2e_ms`` with any stat) and ``error_rate``: a
    percentile bootstrap over requests (:func:`bootstrap_interval`): the point's requests are resampled with
    replacement ``BOOTSTRAP_RESAMPLES`` times and the statistic recomputed (ITL pools the resampled requests'
    inter-token latencies); the interval is the 2.5th-97.5th percentile of those values. The seed is recorded.
  - throughputs and goodput: batch means (:func:`batch_means_interval`): the measured window is cut into
    ``BATCHES`` equal spans, the metric is computed in each (tokens or requests that arrived in it / its length),
    and a Student-t interval is taken over the batch values.

**Ties.** Two configs are *tied* when the 95 % interval of the difference of their scores contains 0, or their
scores differ by less than the tie margin (``--sglang-tie-margin``, default 2 %: the run-to-run noise of real
GPUs, which one run cannot see). The difference's interval combines the two intervals' half-widths in
quadrature (independent estimates): ``(a − b) ± sqrt(ha² + hb²)``. Without intervals only the margin applies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_TIE_MARGIN = 0.02
BOOTSTRAP_RESAMPLES = 1000
BATCHES = 10
POOLED_EXACT_MAX = 4096  # up to this many pooled values the bootstrap is exact; beyond, on quantile bins
POOLED_BINS = 1024
METHOD_REPEATS = "student-t over repeats (95%)"
METHOD_SINGLE = "bootstrap over requests (latency, error rate) and batch means (throughput), 95%"

# two-sided 97.5 % quantiles of Student's t for df = 1..30 (df > 30: 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)

Interval = tuple[float, float]


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom."""
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def student_t_interval(values: Sequence[float]) -> Interval | None:
    """95 % t interval of the mean of ``values``; None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def as_interval(value: Any) -> Interval | None:
    """An interval read from a report (``[lo, hi]``), or None when there is none or it is malformed."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return float(value[0]), float(value[1])
    return None


def half_width(interval: Interval) -> float:
    return abs(interval[1] - interval[0]) / 2.0


def difference_interval(a: float, a_ci: Interval | None, b: float, b_ci: Interval | None) -> Interval | None:
    """95 % interval of ``a − b`` from the two estimates' intervals (None unless both have one)."""
    if a_ci is None or b_ci is None:
        return None
    half = math.hypot(half_width(a_ci), half_width(b_ci))
    return (a - b - half, a - b + half)


def tied(a: float | None, a_ci: Interval | None, b: float | None, b_ci: Interval | None, *,
         margin: float = DEFAULT_TIE_MARGIN) -> bool:
    """The tie rule (module docstring). Missing scores are never tied with anything."""
    if a is None or b is None:
        return False
    scale = max(abs(a), abs(b))
    if scale == 0 or abs(a - b) < margin * scale:
        return True
    diff = difference_interval(a, a_ci, b, b_ci)
    return diff is not None and diff[0] <= 0.0 <= diff[1]


# --- single-run intervals ----------------------------------------------------------------------------------------

def _percentile_sorted(xs: Sequence[float], q: float) -> float:
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bootstrap_interval(groups: Sequence[Sequence[float]], statistic: str, *, seed: int,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> Interval | None:
    """Percentile-bootstrap 95 % interval of ``statistic`` over requests.

    ``groups`` holds one list of values per request (one value for TTFT/TPOT/E2E/error, a request's
    inter-token latencies for ITL); a resample draws requests with replacement and pools their values.
    ``statistic`` is ``mean`` or a percentile name (``p50``, ``p99``, ``p99_9``). None for fewer than 2 requests.
    Vectorised: a resample is a vector of request counts, and a pooled percentile is read off the values sorted
    once, weighted by those counts (numpy's linear interpolation on the weighted positions). Beyond
    ``POOLED_EXACT_MAX`` pooled values (ITL of long outputs) the values are read on ``POOLED_BINS`` quantile bins,
    interpolated within a bin: the interval's ends move by at most a bin's width.
    """
    import numpy as np

    groups = [g for g in groups if len(g)]
    n = len(groups)
    if n < 2:
        return None
    q = _quantile_of(statistic)
    rng = np.random.default_rng(seed)
    lengths = np.array([len(g) for g in groups])
    values = np.concatenate([np.asarray(g, dtype=float) for g in groups])
    if (lengths == 1).all():  # one value per request (TTFT, TPOT, E2E, error): resample the values directly
        sample = values[rng.integers(0, n, (resamples, n))]
        out = sample.mean(axis=1) if q is None else np.percentile(sample, q, axis=1)
        lo, hi = np.percentile(out, [2.5, 97.5])
        return float(lo), float(hi)
    owner = np.repeat(np.arange(n), lengths)
    if len(values) > POOLED_EXACT_MAX:  # many values per request (ITL): the same reading on quantile bins
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, POOLED_BINS + 1)))
        values_binned = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
        hist = np.zeros((n, len(edges) - 1))
        np.add.at(hist, (owner, values_binned), 1.0)
        sums = np.bincount(owner, weights=values, minlength=n)
        counts = _counts(rng, n, resamples)
        weights = counts @ hist                                          # (resamples, bins)
        total = weights.sum(axis=1)
        if q is None:
            out = (counts @ sums) / total
        else:
            cum = np.cumsum(weights, axis=1)
            target = (total - 1.0) * q / 100.0 + 1.0                     # 1-based rank of the percentile
            b = np.minimum((cum < target[:, None]).sum(axis=1), len(edges) - 2)
            below = np.where(b > 0, cum[np.arange(resamples), np.maximum(b - 1, 0)], 0.0)
            inside = np.maximum(weights[np.arange(resamples), b], 1e-12)
            frac = np.clip((target - below) / inside, 0.0, 1.0)
            out = edges[b] + (edges[b + 1] - edges[b]) * frac
        lo, hi = np.percentile(out, [2.5, 97.5])
        return float(lo), float(hi)
    order = np.argsort(values, kind="stable")
    values, owner = values[order], owner[order]
    out = np.empty(resamples)
    for start in range(0, resamples, 64):
        k = min(64, resamples - start)
        counts = _counts(rng, n, k)                                                            # (k, n)
        weights = counts[:, owner].astype(float)                                                 # (k, values)
        total = weights.sum(axis=1)
        if q is None:
            out[start:start + k] = (weights * values).sum(axis=1) / total
            continue
        cum = np.cumsum(weights, axis=1)
        # numpy's "linear" percentile of the pooled sample: position (N-1)·q/100, N = pooled size
        pos = (total - 1.0) * q / 100.0
        lo_idx = np.array([np.searchsorted(cum[i], pos[i], side="right") for i in range(k)])
        hi_idx = np.array([np.searchsorted(cum[i], pos[i] + 1.0, side="right") for i in range(k)])
        frac = pos - np.floor(pos)
        lo_v = values[np.minimum(lo_idx, len(values) - 1)]
        hi_v = values[np.minimum(hi_idx, len(values) - 1)]
        out[start:start + k] = lo_v + (hi_v - lo_v) * frac
    lo, hi = np.percentile(out, [2.5, 97.5])
    return float(lo), float(hi)


def _counts(rng: Any, n: int, k: int) -> Any:
    """``k`` bootstrap resamples of ``n`` requests as a (k, n) matrix of how often each request was drawn."""
    import numpy as np

    picks = rng.integers(0, n, (k, n)) + (np.arange(k) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=k * n).reshape(k, n)


def _quantile_of(statistic: str) -> float | None:
    if statistic == "mean":
        return None
    if statistic.startswith("p"):
        try:
            return float(statistic[1:].replace("_", "."))
        except ValueError:
            pass
    raise ValueError(f"unknown statistic {statistic!r}; expected mean or pNN")


def batch_means_interval(events: Iterable[tuple[float, float]], start: float, end: float, *,
                         batches: int = BATCHES, scale: float = 1.0) -> Interval | None:
    """95 % batch-means interval of a rate: ``events`` are (time, amount) pairs in [start, end]; the window is
    cut into ``batches`` equal spans, each span's rate is amount/length × ``scale``, and a t interval is taken
    over the spans. None when the window is empty."""
    span = end - start
    if span <= 0 or batches < 2:
        return None
    sums = [0.0] * batches
    for t, amount in events:
        i = min(batches - 1, max(0, int((t - start) / span * batches)))
        sums[i] += amount
    length = span / batches
    return student_t_interval([s / length * scale for s in sums])


# --- how many samples a statistic needs ----------------------------------------------------------------------------

def samples_needed(statistic: str | None) -> int:
    """Samples a statistic needs to be more than its sample's extreme: ``pQ`` needs ``ceil(100 / (100 − Q))``
    (p99: 100, p95: 20, p90: 10, p50: 2); ``mean`` needs 2."""
    q = None if statistic in (None, "mean", "std") else _quantile_of(str(statistic))
    if q is None:
        return 2
    return math.ceil(100.0 / (100.0 - q) - 1e-9)


SAMPLE_UNITS = {"ttft_ms": "requests", "e2e_ms": "requests", "tpot_ms": "requests", "itl_ms": "inter-token gaps"}


def sample_size_warnings(slos: Iterable[Any], counts: Mapping[str, int]) -> list[str]:
    """Warnings for SLOs that gate a percentile on fewer samples than it needs (``counts``: samples per
    distribution metric, e.g. ``{"ttft_ms": 4, "itl_ms": 900}``)."""
    out = []
    for slo in slos:
        name, stat = slo.metric.name, slo.metric.stat
        if name not in SAMPLE_UNITS or stat is None:
            continue
        have, need = int(counts.get(name, 0)), samples_needed(stat)
        if have < need:
            out.append(f"SLO '{slo}' gates {slo.metric} on {have} {SAMPLE_UNITS[name]}; a {stat} needs at least "
                       f"{need} to be more than the largest value: raise num_requests at this load")
    return out
