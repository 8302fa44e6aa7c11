"""Arrival processes for open-loop load: when each request is meant to be sent, as offsets from the start.

A Poisson process at ``rate`` requests/s has exponential inter-arrival gaps with mean ``1/rate``.
``burstiness`` generalises it as in SGLang's and vLLM's benchmarks: gaps follow a gamma distribution with
shape ``burstiness`` and the same mean (1 is Poisson; below 1 is burstier, above 1 more regular). The first
request goes at offset 0.

``exact=True`` rescales the gaps so the last arrival lands at exactly ``(n - 1) / rate``: the process
conditioned on its n-th arrival time (for Poisson, arrivals are then uniform order statistics, the same shape),
so a finite run achieves the nominal rate instead of a sample of it (±1/sqrt(n) otherwise).
"""

from __future__ import annotations

import math
import random

from pytest_sglang_tune.errors import SuiteError


def interarrival_gaps(rate: float, n: int, rng: random.Random, *, burstiness: float = 1.0) -> list[float]:
    """``n`` gaps (seconds) between consecutive arrivals at ``rate`` req/s; ``rate`` inf gives zeros."""
    if n < 0:
        raise ValueError(f"number of arrivals must be >= 0, got {n}")
    if not rate > 0:
        raise SuiteError(
            f"request_rate {rate!r} must be a positive number of requests per second", field="request_rate"
        )
    if not burstiness > 0:
        raise SuiteError(f"burstiness {burstiness!r} must be positive (1 is Poisson)", field="burstiness")
    if math.isinf(rate):
        return [0.0] * n
    if burstiness == 1.0:
        return [rng.expovariate(rate) for _ in range(n)]
    scale = 1.0 / (rate * burstiness)
    return [rng.gammavariate(burstiness, scale) for _ in range(n)]


def arrival_offsets(
    rate: float, n: int, rng: random.Random, *, burstiness: float = 1.0, exact: bool = False
) -> list[float]:
    """Send offsets (seconds from the start) of ``n`` requests: 0 for the first, then cumulative gaps."""
    if n <= 0:
        return []
    gaps = interarrival_gaps(rate, n - 1, rng, burstiness=burstiness)
    total = math.fsum(gaps)
    if exact and gaps and total > 0 and not math.isinf(rate):
        scale = (n - 1) / rate / total
        gaps = [g * scale for g in gaps]
    offsets = [0.0]
    t = 0.0
    for gap in gaps:
        t += gap
        offsets.append(t)
    return offsets
