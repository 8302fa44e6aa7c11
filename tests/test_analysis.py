"""Pareto fronts, sustained load, ties and confidence intervals on constructed data."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_sglang_tune.analysis import latency_metric, max_sustained_load, pareto, pareto_front
from pytest_sglang_tune.grammar import parse_objective
from pytest_sglang_tune.ranking import rank
from pytest_sglang_tune.stats import student_t_interval


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([(10, 5), (8, 3), (6, 4), (12, 9)], [True, True, False, True]),   # (6,4) dominated by (8,3)
        ([(1, 1), (1, 1)], [True, True]),                                   # equal points do not dominate
        ([(5, 5), (5, 6)], [True, False]),                                  # same x, worse y
        ([], []),
    ],
)
def test_pareto_front(points: list[tuple[float, float]], front: list[bool]) -> None:
    assert pareto_front(points) == front


def res(cfg: str, c: int, thr: float, ttft: float, *, slo: bool = True, ci: Any = None) -> dict[str, Any]:
    r: dict[str, Any] = {"suite": "s", "workload": {"name": "w", "content_hash": "h"}, "config_id": cfg,
                         "load": {"concurrency": c, "request_rate": None}, "status": "passed", "slo_pass": slo,
                         "metrics": {"output_throughput_per_gpu": thr, "ttft_ms": {"p99": ttft}}}
    if ci:
        r["confidence"] = {"output_throughput_per_gpu": ci}
    return r


def test_pareto_per_suite_workload_uses_the_slo_latency() -> None:
    results = [res("a", 1, 100, 10), res("a", 8, 500, 50), res("b", 8, 400, 60), res("b", 1, 90, 12)]
    (group,) = pareto(results, {"s": {"slos": ["error_rate <= 0.1", "ttft_ms.p99 <= 100"]}})
    assert group["y_metric"] == "ttft_ms.p99" and group["x_metric"] == "output_throughput_per_gpu"
    on = {(p["config_id"], p["load"]["concurrency"]) for p in group["points"] if p["on_front"]}
    assert on == {("a", 1), ("a", 8)}


@pytest.mark.parametrize(
    ("slos", "expected"),
    [([], "ttft_ms.p99"), (["itl_ms.p95 <= 50"], "itl_ms.p95"), (["goodput >= 1", "e2e_ms.p90 < 9"], "e2e_ms.p90")],
)
def test_latency_metric(slos: list[str], expected: str) -> None:
    assert latency_metric(slos) == expected


def test_max_sustained_load() -> None:
    results = [res("a", 1, 1, 1), res("a", 8, 1, 1), res("a", 64, 1, 1, slo=False), res("b", 1, 1, 1, slo=False)]
    got = {x["config_id"]: x["load"] for x in max_sustained_load(results)}
    assert got == {"a": {"concurrency": 8, "request_rate": None}, "b": None}


def test_ties_when_the_difference_interval_holds_zero() -> None:
    results = [res("a", 8, 100, 1, ci=[95, 105]), res("b", 8, 98, 1, ci=[90, 101]), res("c", 8, 50, 1, ci=[45, 55])]
    ranking = rank(results, {"s": parse_objective("maximize: output_throughput_per_gpu")})
    assert [(e["config_id"], e["rank"], e["tied"]) for e in ranking] == [("a", 1, True), ("b", 1, True),
                                                                         ("c", 3, False)]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1.0], None), ([10.0, 10.0, 10.0], (10.0, 10.0)), ([1.0, 3.0], (2 - 12.706, 2 + 12.706))],
)
def test_confidence_interval(values: list[float], expected: Any) -> None:
    got = student_t_interval(values)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_combine_repeats_means_leaves_and_sums_counts() -> None:
    from pytest_sglang_tune.analysis import combine_repeats, repeat_confidence

    blocks = [{"output_throughput": 100.0, "completed": 10, "ttft_ms": {"p99": 10.0, "p50": None}},
              {"output_throughput": 110.0, "completed": 10, "ttft_ms": {"p99": 14.0, "p50": None}}]
    assert combine_repeats(blocks) == {"output_throughput": 105.0, "completed": 20,
                                       "ttft_ms": {"p99": 12.0, "p50": None}}
    ci = repeat_confidence(blocks, ["output_throughput", "ttft_ms.p99", "ttft_ms.p50"])
    assert set(ci) == {"output_throughput", "ttft_ms.p99"}
    lo, hi = ci["output_throughput"]
    assert lo < 105 < hi
