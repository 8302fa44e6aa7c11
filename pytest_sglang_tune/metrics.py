"""Samples → the report's ``metrics`` block (pure functions, plain builtins out, never NaN).

Definitions (warmup samples are left out of everything; "completed" means the stream ended normally):

* ``ttft_ms``: per completed request, first content chunk − send.
* ``itl_ms``: pooled over completed requests; a chunk carrying k tokens after a gap g contributes k samples
  g/k.
* ``tpot_ms``: per completed request with at least 2 output tokens, (E2E − TTFT) / (output tokens − 1);
  ``tpot_excluded`` counts completed requests with fewer than 2.
* ``e2e_ms``: per completed request, end of stream − send.
* Each distribution: ``mean, std`` (population), ``p50, p90, p95, p99, p99_9`` (``percentile``), all None when
  there are no values.
* Throughputs divide by the point's duration (first measured send → last measured end): ``output_throughput``
  and ``input_throughput`` count the served tokens (usage; requested when the server did not say) of completed
  requests; ``request_throughput`` counts completed requests.
* ``goodput``: completed requests per second that meet every per-request SLO (``SLO.per_request``), each
  checked on the request's *own* value of that metric: its TTFT, TPOT and E2E (one value each, so the SLO's
  stat does not matter), and for ``itl_ms.<stat>`` the stat over its own ITL samples (``itl_ms.p95 <= 50``:
  the request's p95 ITL). A request with no value for a metric (one output token: no ITL, no TPOT) cannot
  violate that SLO. Aggregate SLOs (error rate, throughputs) do not enter goodput. Without per-request SLOs
  goodput equals ``request_throughput``.
* ``itl_samples``: how many inter-token gaps ``itl_ms`` rests on (a p99 needs at least 100).
* ``error_rate``: failed / measured requests (None when nothing was measured); ``errors``: failures by class.
* ``self_check``: requested vs served token means and how many requests differ, to catch a server (or a
  workload) that does not produce the lengths asked for; a difference becomes a warning of the point
  (``self_check_warnings``: outputs always, inputs when the workload's are exact by construction).
* ``client_cpu_util``: the load generator's CPU seconds per process per second of the point (before the
  warm-up/cool-down windows); near 1 the client was saturated and its timestamps may trail the truth (the
  point then carries a warning). None when not measured.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_sglang_tune.grammar import SLO
from pytest_sglang_tune.loadgen.samples import PointResult, RequestSample

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p99_9", 99.9),
)
STAT_KEYS: tuple[str, ...] = ("mean", "std", *(k for k, _ in PERCENTILES))


def _pct_sorted(xs: Sequence[float], q: float) -> float:
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks (numpy's default,
    ``method="linear"``): position ``(n-1)·q/100`` in the sorted values. None for no values."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q!r}")
    xs = sorted(values)
    if not xs:
        return None
    return _pct_sorted(xs, q)


def distribution(values: Iterable[float], scale: float = 1.0) -> dict[str, float | None]:
    """``{mean, std, p50, p90, p95, p99, p99_9}`` of ``values × scale``; every stat None when empty."""
    xs = sorted(v * scale for v in values)
    if not xs:
        return dict.fromkeys(STAT_KEYS)
    n = len(xs)
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / n
    out: dict[str, float | None] = {"mean": mean, "std": math.sqrt(var)}
    for key, q in PERCENTILES:
        out[key] = _pct_sorted(xs, q)
    return out


def _stat(values: Sequence[float], stat: str) -> float | None:
    """One stat (grammar's names) of a request's own values."""
    if not values:
        return None
    if stat == "mean":
        return math.fsum(values) / len(values)
    q = dict(PERCENTILES).get(stat)
    if q is None:
        raise ValueError(f"unknown stat {stat!r}; valid: mean, {', '.join(k for k, _ in PERCENTILES)}")
    return _pct_sorted(sorted(values), q)


def request_value(sample: RequestSample, slo: SLO) -> float | None:
    """A request's own value (ms) of a per-request SLO's metric; None when it has none."""
    name = slo.metric.name
    if name == "ttft_ms":
        v = sample.ttft_s
    elif name == "e2e_ms":
        v = sample.e2e_s
    elif name == "tpot_ms":
        v = sample.tpot_s
    elif name == "itl_ms":
        v = _stat(sample.itl_s(), slo.metric.stat or "mean")
    else:
        raise ValueError(f"{slo} is not a per-request SLO")
    return None if v is None else v * 1000.0


def meets_slos(sample: RequestSample, slos: Sequence[SLO]) -> bool:
    """Whether a completed request meets every per-request SLO (missing values cannot violate)."""
    for slo in slos:
        v = request_value(sample, slo)
        if v is not None and not slo.check_value(v):
            return False
    return True


def _mean(xs: Sequence[float]) -> float | None:
    return math.fsum(xs) / len(xs) if xs else None


def self_check_warnings(check: dict[str, Any], *, exact_input: bool) -> list[str]:
    """The report's warnings for a ``self_check`` block: served lengths that differ from the requested ones.
    ``exact_input``: the workload's input lengths are exact by construction (synthetic, single-turn); dataset
    prompts and multi-turn histories are estimates, so only their output lengths are checked."""
    n = check["completed"]
    out: list[str] = []
    if check["output_mismatches"]:
        out.append(
            f"self-check: {check['output_mismatches']} of {n} completed requests were served a different output "
            f"length than requested (served mean {check['served_output_mean']:.1f} vs requested "
            f"{check['requested_output_mean']:.1f} tokens): the server stops early or ignores max_tokens/"
            "ignore_eos; throughputs and TPOT describe what was served")
    if exact_input and check["input_mismatches"]:
        out.append(
            f"self-check: {check['input_mismatches']} of {n} completed requests were served a different input "
            f"length than requested (served mean {check['served_input_mean']:.1f} vs requested "
            f"{check['requested_input_mean']:.1f} tokens, largest difference {check['input_max_abs_diff']}): "
            "the server counts the prompt differently (chat template, tokenizer, or a prompt it altered)")
    return out


def self_check(samples: Sequence[RequestSample]) -> dict[str, Any]:
    """Requested vs served input/output tokens over the completed requests."""
    served_in = [(s.requested_input_tokens, s.input_tokens) for s in samples if s.input_tokens is not None]
    served_out = [(s.requested_output_tokens, s.output_tokens) for s in samples if s.output_tokens is not None]
    return {
        "completed": len(samples),
        "requested_input_mean": _mean([s.requested_input_tokens for s in samples]),
        "served_input_mean": _mean([float(b) for _, b in served_in]),
        "input_mismatches": sum(1 for a, b in served_in if a != b),
        "input_max_abs_diff": max((abs(a - b) for a, b in served_in), default=None),
        "requested_output_mean": _mean([s.requested_output_tokens for s in samples]),
        "served_output_mean": _mean([float(b) for _, b in served_out]),
        "output_mismatches": sum(1 for a, b in served_out if a != b),
        "input_unreported": len(samples) - len(served_in),
        "output_unreported": len(samples) - len(served_out),
    }


def summarize(point: PointResult, *, gpus: int, slos: Sequence[SLO] = ()) -> dict[str, Any]:
    """The report's ``metrics`` block for one point (see the module docstring for every definition)."""
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus!r}")
    measured = [s for s in point.samples if not s.warmup]
    ok = [s for s in measured if s.ok]
    failed = len(measured) - len(ok)
    duration = point.duration_s

    ttft = [v for s in ok if (v := s.ttft_s) is not None]
    e2e = [v for s in ok if (v := s.e2e_s) is not None]
    tpot = [v for s in ok if (v := s.tpot_s) is not None]
    itl: list[float] = []
    for s in ok:
        itl.extend(s.itl_s())
    tpot_excluded = sum(1 for s in ok if s.output_tokens is None or s.output_tokens < 2)

    out_tokens = sum(s.output_tokens if s.output_tokens is not None else s.requested_output_tokens for s in ok)
    in_tokens = sum(s.input_tokens if s.input_tokens is not None else s.requested_input_tokens for s in ok)
    per_request = [slo for slo in slos if slo.per_request]
    good = sum(1 for s in ok if meets_slos(s, per_request))
    output_throughput = out_tokens / duration if measured else 0.0

    return {
        "ttft_ms": distribution(ttft, 1000.0),
        "itl_ms": distribution(itl, 1000.0),
        "tpot_ms": distribution(tpot, 1000.0),
        "e2e_ms": distribution(e2e, 1000.0),
        "output_throughput": output_throughput,
        "output_throughput_per_gpu": output_throughput / gpus,
        "input_throughput": in_tokens / duration if measured else 0.0,
        "request_throughput": len(ok) / duration if measured else 0.0,
        "goodput": good / duration if measured else 0.0,
        "error_rate": failed / len(measured) if measured else None,
        "completed": len(ok),
        "failed": failed,
        "errors": dict(sorted(Counter(s.error or "incomplete" for s in measured if not s.ok).items())),
        "duration_s": duration,
        "tpot_excluded": tpot_excluded,
        "itl_samples": len(itl),
        "self_check": self_check(ok),
        "client_cpu_util": point.client_cpu_util,
    }


# --- 95 % intervals of one point (repeats = 1; see stats) ----------------------------------------------------------

_PER_REQUEST_SECONDS = {"ttft_ms": "ttft_s", "e2e_ms": "e2e_s", "tpot_ms": "tpot_s"}
_RATES = ("output_throughput", "output_throughput_per_gpu", "input_throughput", "request_throughput", "goodput")


def _rate_events(name: str, ok: Sequence[RequestSample], slos: Sequence[SLO]) -> list[tuple[float, float]]:
    """(time, amount) of what a rate metric counts: output tokens as they arrive, input tokens at the first
    token, requests (good ones for goodput) when they end."""
    if name in ("output_throughput", "output_throughput_per_gpu"):
        events: list[tuple[float, float]] = []
        for s in ok:
            if s.first_token is not None:
                events.append((s.first_token, 1.0))
            events.extend((t, float(k)) for t, k in zip(s.chunk_times, s.chunk_tokens, strict=True) if k > 0)
        return events
    if name == "input_throughput":
        return [(s.first_token, float(s.input_tokens if s.input_tokens is not None else s.requested_input_tokens))
                for s in ok if s.first_token is not None]
    per_request = [slo for slo in slos if slo.per_request]
    return [(s.done, 1.0) for s in ok if s.done is not None
            and (name == "request_throughput" or meets_slos(s, per_request))]


def point_intervals(point: PointResult, wanted: Sequence[str], *, gpus: int, slos: Sequence[SLO] = (),
                    seed: int = 0, resamples: int | None = None,
                    ) -> tuple[dict[str, list[float]], dict[str, Any] | None]:
    """95 % intervals of the ``wanted`` metrics from one point's own requests: bootstrap over requests for
    latency statistics and the error rate, batch means over the window for rates (module ``stats``).
    Returns ``({metric: [lo, hi]}, {method, seed, resamples, batches})`` (None when nothing could be had)."""
    from pytest_sglang_tune.grammar import parse_metric
    from pytest_sglang_tune.stats import (
        BATCHES,
        BOOTSTRAP_RESAMPLES,
        METHOD_SINGLE,
        batch_means_interval,
        bootstrap_interval,
    )

    resamples = resamples or BOOTSTRAP_RESAMPLES
    measured = [s for s in point.samples if not s.warmup]
    ok = [s for s in measured if s.ok]
    out: dict[str, list[float]] = {}
    for name in dict.fromkeys(wanted):
        metric = parse_metric(name)
        ci = None
        if metric.name in _PER_REQUEST_SECONDS:
            groups = [[v * 1000.0] for s in ok if (v := getattr(s, _PER_REQUEST_SECONDS[metric.name])) is not None]
            ci = bootstrap_interval(groups, metric.stat or "mean", seed=seed, resamples=resamples)
        elif metric.name == "itl_ms":
            ci = bootstrap_interval([[x * 1000.0 for x in s.itl_s()] for s in ok], metric.stat or "mean", seed=seed,
                                    resamples=resamples)
        elif metric.name == "error_rate":
            ci = bootstrap_interval([[0.0 if s.ok else 1.0] for s in measured], "mean", seed=seed,
                                    resamples=resamples)
        elif metric.name in _RATES:
            scale = 1.0 / gpus if metric.name == "output_throughput_per_gpu" else 1.0
            ci = batch_means_interval(_rate_events(metric.name, ok, slos), point.started, point.finished,
                                      scale=scale)
        if ci is not None:
            out[name] = [round(ci[0], 6), round(ci[1], 6)]
    method = {"method": METHOD_SINGLE, "seed": seed, "resamples": resamples, "batches": BATCHES}
    return out, (method if out else None)


def sample_counts(metrics: Mapping[str, Any]) -> dict[str, int]:
    """Samples behind each distribution metric of a metrics block (for ``stats.sample_size_warnings``)."""
    completed = int(metrics.get("completed") or 0)
    return {"ttft_ms": completed, "e2e_ms": completed, "tpot_ms": completed - int(metrics.get("tpot_excluded") or 0),
            "itl_ms": int(metrics.get("itl_samples") or 0)}
