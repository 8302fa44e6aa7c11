"""The one grammar for metrics, SLOs and objectives, reused by ranking, goodput, diff thresholds and CI gates.

    metric     := NAME | NAME "." STAT          e.g. ``ttft_ms.p99``, ``output_throughput``
    slo        := metric OP NUMBER              e.g. ``ttft_ms.p99 <= 2000``, ``error_rate <= 0.01``
    objective  := ("maximize" | "minimize") ":" metric      e.g. ``maximize: output_throughput_per_gpu``

Distribution metrics (``ttft_ms``, ``itl_ms``, ``tpot_ms``, ``e2e_ms``) need a stat, or mean is implied;
scalar metrics take none.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_sglang_tune.errors import GrammarError

DISTRIBUTION_METRICS: dict[str, str] = {
    "ttft_ms": "time to first token, milliseconds",
    "itl_ms": "inter-token latency, milliseconds",
    "tpot_ms": "time per output token after the first, milliseconds",
    "e2e_ms": "end-to-end request latency, milliseconds",
}
SCALAR_METRICS: dict[str, str] = {
    "output_throughput": "output tokens per second",
    "output_throughput_per_gpu": "output tokens per second per GPU",
    "input_throughput": "input tokens per second",
    "request_throughput": "completed requests per second",
    "goodput": "requests per second that met every per-request SLO",
    "error_rate": "failed requests / all requests",
    "completed": "completed requests",
    "failed": "failed requests",
    "cost_per_mtok": "GPU cost per million output tokens (needs a GPU-hour price)",
    "max_load": "highest load (concurrency or req/s) sustained within every SLO (a workload's load search)",
}
STATS: tuple[str, ...] = ("mean", "p50", "p90", "p95", "p99")
# Per-request SLOs: the ones goodput checks request by request (TTFT, ITL, E2E and TPOT of one request).
PER_REQUEST_METRICS: tuple[str, ...] = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")
HIGHER_IS_BETTER = {"output_throughput", "output_throughput_per_gpu", "input_throughput",
                    "request_throughput", "goodput", "completed", "max_load"}

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq,
}


def _valid_metrics() -> str:
    dist = ", ".join(f"{m}.<stat>" for m in DISTRIBUTION_METRICS)
    return f"{dist} (stats: {', '.join(STATS)}); {', '.join(SCALAR_METRICS)}"


@dataclass(frozen=True)
class Metric:
    """A metric reference: ``name`` plus ``stat`` for distribution metrics."""

    name: str
    stat: str | None = None

    def __str__(self) -> str:
        return f"{self.name}.{self.stat}" if self.stat else self.name

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """Look this metric up in a result's ``metrics`` block; None when missing."""
        v = metrics.get(self.name)
        if self.stat is not None:
            v = v.get(self.stat) if isinstance(v, Mapping) else None
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        return float(v)

    @property
    def higher_is_better(self) -> bool:
        return self.name in HIGHER_IS_BETTER


def parse_metric(text: str) -> Metric:
    """``"ttft_ms.p99"`` → Metric("ttft_ms", "p99"); unknown names or stats list the valid ones."""
    s = str(text).strip()
    name, _, stat = s.partition(".")
    if name in DISTRIBUTION_METRICS:
        stat = stat or "mean"
        if stat not in STATS:
            raise GrammarError(f"unknown stat {stat!r} in metric {s!r}; valid stats: {', '.join(STATS)}")
        return Metric(name, stat)
    if name in SCALAR_METRICS:
        if stat:
            raise GrammarError(f"metric {name!r} takes no stat (got {s!r}); valid metrics: {_valid_metrics()}")
        return Metric(name)
    raise GrammarError(f"unknown metric {s!r}; valid metrics: {_valid_metrics()}")


_SLO_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|<|>)\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class SLO:
    """``<metric> <op> <number>``."""

    metric: Metric
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {_fmt(self.threshold)}"

    def check(self, metrics: Mapping[str, Any]) -> bool:
        """True when the aggregate metrics meet this SLO (a missing value does not)."""
        v = self.metric.value(metrics)
        return v is not None and OPS[self.op](v, self.threshold)

    def check_value(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    @property
    def per_request(self) -> bool:
        """Whether goodput checks this SLO on each request's own TTFT/ITL/TPOT/E2E."""
        return self.metric.name in PER_REQUEST_METRICS


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def parse_slo(text: str) -> SLO:
    m = _SLO_RE.match(str(text))
    if not m:
        raise GrammarError(
            f"{text!r} is not a valid SLO; expected '<metric> <op> <number>' with op one of "
            f"{', '.join(OPS)}, e.g. 'ttft_ms.p99 <= 2000'"
        )
    return SLO(parse_metric(m.group(1)), m.group(2), float(m.group(3)))


@dataclass(frozen=True)
class Objective:
    """``maximize: <metric>`` or ``minimize: <metric>``."""

    direction: str
    metric: Metric

    def __str__(self) -> str:
        return f"{self.direction}: {self.metric}"

    def score(self, metrics: Mapping[str, Any]) -> float | None:
        return self.metric.value(metrics)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b

    def sort_key(self, score: float | None) -> float:
        """Ascending sort key: best first; missing scores last."""
        if score is None:
            return math.inf
        return -score if self.direction == "maximize" else score


DEFAULT_OBJECTIVE = "maximize: output_throughput_per_gpu"


def parse_objective(spec: str | Mapping[str, Any]) -> Objective:
    """Accepts ``"maximize: goodput"`` or the YAML mapping ``{maximize: goodput}``."""
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise GrammarError(f"objective {dict(spec)!r} must have exactly one key, maximize or minimize")
        ((direction, metric),) = spec.items()
    else:
        direction, sep, metric = str(spec).partition(":")
        if not sep:
            raise GrammarError(f"{spec!r} is not a valid objective; expected 'maximize: <metric>' or "
                               "'minimize: <metric>'")
    direction = str(direction).strip()
    if direction not in ("maximize", "minimize"):
        raise GrammarError(f"objective direction {direction!r} is not valid; use maximize or minimize")
    return Objective(direction, parse_metric(str(metric)))
