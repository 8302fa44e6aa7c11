"""Ranking: SLO-meeting configs first, then by objective, ties by config_id; unmeasured results not ranked."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_sglang_tune.grammar import parse_objective
from pytest_sglang_tune.ranking import load_key, load_label, rank

MAX_TPUT = {"s": parse_objective("maximize: output_throughput")}
MIN_TTFT = {"s": parse_objective("minimize: ttft_ms.p99")}


def rec(config_id: str, *, status: str = "passed", slo_pass: bool | None = True, tput: float | None = 100.0,
        ttft_p99: float | None = 500.0, workload: str = "chat", concurrency: int | None = 16,
        rate: float | None = None, suite: str = "s", **extra: Any) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if tput is not None:
        metrics["output_throughput"] = tput
    if ttft_p99 is not None:
        metrics["ttft_ms"] = {"mean": ttft_p99 / 2, "p99": ttft_p99}
    return {"suite": suite, "workload": {"name": workload, "content_hash": "h"}, "config_id": config_id,
            "load": {"concurrency": concurrency, "request_rate": rate}, "status": status,
            "slo_pass": slo_pass, "metrics": metrics, **extra}


def order(ranking: list[dict[str, Any]]) -> list[str]:
    return [e["config_id"] for e in ranking]


@pytest.mark.parametrize(("results", "objectives", "expected"), [
    pytest.param([rec("a", tput=100), rec("b", tput=300), rec("c", tput=200)], MAX_TPUT, ["b", "c", "a"],
                 id="maximize"),
    pytest.param([rec("a", ttft_p99=900), rec("b", ttft_p99=300), rec("c", ttft_p99=600)], MIN_TTFT,
                 ["b", "c", "a"], id="minimize-distribution-stat"),
    pytest.param([rec("fast-miss", tput=900, slo_pass=False), rec("slow-ok", tput=100),
                  rec("mid-ok", tput=200)], MAX_TPUT, ["mid-ok", "slow-ok", "fast-miss"],
                 id="slo-failing-after-passing"),
    pytest.param([rec("x", slo_pass=False, tput=10), rec("y", slo_pass=False, tput=20)], MAX_TPUT, ["y", "x"],
                 id="all-failing-still-ordered-by-objective"),
    pytest.param([rec("strict", status="failed", slo_pass=False, tput=999), rec("ok", tput=1)], MAX_TPUT,
                 ["ok", "strict"], id="failed-test-with-metrics-ranks-as-slo-miss"),
    pytest.param([rec("nometric", tput=None), rec("m", tput=5)], MAX_TPUT, ["m", "nometric"],
                 id="missing-objective-metric-last-in-tier"),
    pytest.param([rec("c", tput=50), rec("a", tput=50), rec("b", tput=50)], MAX_TPUT, ["a", "b", "c"],
                 id="ties-by-config-id"),
    pytest.param([rec("none-slos", slo_pass=None, tput=5), rec("ok", tput=1)], MAX_TPUT, ["none-slos", "ok"],
                 id="slo-pass-none-means-no-slos"),
    pytest.param([rec(c, status=s, tput=1000) for c, s in
                  [("e", "error"), ("k", "skipped"), ("i", "infeasible"), ("x", "excluded")]]
                 + [rec("f-nometrics", status="failed", tput=None, ttft_p99=None), rec("p", tput=1)],
                 MAX_TPUT, ["p"], id="unmeasured-statuses-not-ranked"),
])
def test_rank_order(results: list[dict[str, Any]], objectives: Any, expected: list[str]) -> None:
    ranking = rank(results, objectives)
    assert order(ranking) == expected
    if len({e["score"] for e in ranking}) == len(ranking) > 1:  # distinct scores, far apart: 1, 2, 3
        assert [e["rank"] for e in ranking] == list(range(1, len(expected) + 1))


def test_equal_scores_share_a_rank_and_are_tied() -> None:
    ranking = rank([rec("c", tput=50), rec("a", tput=50), rec("b", tput=50)], MAX_TPUT)
    assert [(e["config_id"], e["rank"], e["tied"]) for e in ranking] == [("a", 1, True), ("b", 1, True),
                                                                         ("c", 1, True)]


@pytest.mark.parametrize(("margin", "ranks"), [(0.0, [1, 2]), (0.02, [1, 1]), (0.005, [1, 2])])
def test_tie_margin(margin: float, ranks: list[int]) -> None:
    ranking = rank([rec("a", tput=100.0), rec("b", tput=99.0)], MAX_TPUT, margin=margin)
    assert [e["rank"] for e in ranking] == ranks


def test_entries_carry_score_and_slo_pass() -> None:
    ranking = rank([rec("a", tput=10.5, slo_pass=False), rec("b", tput=3.0),
                    rec("c", status="failed", slo_pass=True, tput=50.0)], MAX_TPUT)
    assert ranking == [
        {"suite": "s", "workload": "chat", "load": {"concurrency": 16, "request_rate": None}, "rank": 1,
         "config_id": "b", "score": 3.0, "interval": None, "slo_pass": True, "tied": False},
        # a failed test never counts as meeting the SLOs, whatever its record says
        {"suite": "s", "workload": "chat", "load": {"concurrency": 16, "request_rate": None}, "rank": 2,
         "config_id": "c", "score": 50.0, "interval": None, "slo_pass": False, "tied": False},
        {"suite": "s", "workload": "chat", "load": {"concurrency": 16, "request_rate": None}, "rank": 3,
         "config_id": "a", "score": 10.5, "interval": None, "slo_pass": False, "tied": False},
    ]


def test_groups_per_suite_workload_and_load() -> None:
    results = [
        rec("a", concurrency=64, tput=1), rec("b", concurrency=64, tput=2),
        rec("a", concurrency=8, tput=3), rec("b", concurrency=8, tput=1),
        rec("a", workload="rag", concurrency=8, tput=1),
        rec("a", suite="t", tput=1), rec("b", suite="t", tput=9),
        rec("a", concurrency=None, rate=2.5, tput=1),
    ]
    ranking = rank(results, {**MAX_TPUT, "t": parse_objective("minimize: output_throughput")})
    got = [(e["suite"], e["workload"], load_label(e["load"]), e["rank"], e["config_id"]) for e in ranking]
    assert got == [
        ("s", "chat", "r2.5", 1, "a"),          # load levels ascending: absent concurrency first
        ("s", "chat", "c8", 1, "a"), ("s", "chat", "c8", 2, "b"),
        ("s", "chat", "c64", 1, "b"), ("s", "chat", "c64", 2, "a"),
        ("s", "rag", "c8", 1, "a"),
        ("t", "chat", "c16", 1, "a"), ("t", "chat", "c16", 2, "b"),   # suite t minimizes
    ]


def test_objective_falls_back_to_the_record_then_the_default() -> None:
    results = [rec("a", suite="u", tput=1, objective="minimize: output_throughput"),
               rec("b", suite="u", tput=2)]
    assert order(rank(results, {})) == ["a", "b"]
    plain = [{**rec("a", suite="v"), "metrics": {"output_throughput_per_gpu": 1.0}},
             {**rec("b", suite="v"), "metrics": {"output_throughput_per_gpu": 2.0}}]
    assert order(rank(plain, {})) == ["b", "a"]     # default: maximize output_throughput_per_gpu


def test_duplicate_key_keeps_last_record() -> None:
    results = [rec("a", tput=1000), rec("b", tput=10), rec("a", tput=1)]
    ranking = rank(results, MAX_TPUT)
    assert order(ranking) == ["b", "a"]
    assert ranking[1]["score"] == 1.0


def test_workload_may_be_a_bare_name() -> None:
    results = [{**rec("a", tput=1), "workload": "chat"}, rec("b", tput=2)]
    got = [(e["workload"], e["config_id"]) for e in rank(results, MAX_TPUT)]
    assert got == [("chat", "b"), ("chat", "a")]


def test_rank_does_not_mutate_input() -> None:
    results = [rec("a"), rec("b", tput=5)]
    before = repr(results)
    rank(results, MAX_TPUT)
    assert repr(results) == before


@pytest.mark.parametrize(("load", "label"), [
    ({"concurrency": 64, "request_rate": None}, "c64"),
    ({"concurrency": None, "request_rate": 2.5}, "r2.5"),
    ({"concurrency": 16, "request_rate": 4.0}, "r4-c16"),
    ({}, "-"),
    (None, "-"),
])
def test_load_label(load: dict[str, Any] | None, label: str) -> None:
    assert load_label(load) == label


def test_load_key_orders_numerically() -> None:
    loads = [{"concurrency": 64}, {"concurrency": 8}, {"concurrency": 128}, {"request_rate": 1.0}]
    assert [load_label(x) for x in sorted(loads, key=load_key)] == ["r1", "c8", "c64", "c128"]
