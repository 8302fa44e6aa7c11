"""The typed result model: Point's key and projections, Result's round trip (schema 1 and 2), the ranking of
the shipped suites kept across the refactor, and the one concurrency × rate rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.errors import SuiteError
from pytest_sglang_tune.grammar import parse_objective
from pytest_sglang_tune.loadgen.workload import Load, loads_from
from pytest_sglang_tune.ranking import rank
from pytest_sglang_tune.results import Cost, Point, Result

FIXTURES = Path(__file__).parent / "fixtures"
PRE_REFACTOR = FIXTURES / "report_shipped_pre_result_model.json"  # the shipped suites, made on aab5deb


def test_point_key_and_projections() -> None:
    p = Point(suite="s", workload="chat", content_hash="h1", concurrency=16, request_rate=None, config_id="c~1")
    q = Point(suite="s", workload="chat", content_hash="h2", concurrency=16, request_rate=None, config_id="c~1")
    assert p.key != q.key and p.slot == q.slot and p.group == q.group and p.config_key == ("s", "c~1")
    assert p.where == "s/chat@c16"
    assert Point.from_dict({"suite": "s", "workload": {"name": "chat", "content_hash": "h1"}, "config_id": "c~1",
                            "load": {"concurrency": 16, "request_rate": None}}) == p


def test_result_round_trip_keeps_unknown_fields() -> None:
    r = Result(point=Point("s", "chat", "h", 4, 2.5, "c~1"), status="passed", metrics={"output_throughput": 1.0},
               deployment={"image": "img", "sim": {"gpu": "h100_sxm"}}, perf_model={"name": "roofline",
                                                                                    "data_version": None,
                                                                                    "gpu": "h100_sxm"},
               cost=Cost(usd_per_mtok=1.5), confidence={"output_throughput": [0.9, 1.1]}, warnings=("w",),
               extra={"commit": "abc"})
    d = r.to_dict()
    assert d["image"] == "img" and d["sim"] == {"gpu": "h100_sxm"} and d["commit"] == "abc"
    assert d["cost"] == {"usd_per_mtok": 1.5, "deploy_s": None, "measure_s": None, "gpu_s": None,
                         "virtual": None}
    assert d["telemetry"] is None and d["trial"] is None and d["fidelity"] is None
    back = Result.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d


def test_a_schema_1_result_reads_into_todays_shape() -> None:
    old = json.loads((FIXTURES / "report_v1.json").read_text())["results"][0]
    r = Result.from_dict(old)
    assert r.perf_model == {"name": old["perf_model"], "data_version": None, "gpu": None}
    assert r.point.config_id == old["config_id"] and r.metrics == old["metrics"]


def _order_agrees_modulo_ties(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """Pairs whose old order the new ranking reverses without calling them tied."""
    problems = []
    groups: dict[Any, list[dict[str, Any]]] = {}
    for e in new:
        groups.setdefault((e["suite"], e["workload"], json.dumps(e["load"], sort_keys=True)), []).append(e)
    for e_old in old:
        key = (e_old["suite"], e_old["workload"], json.dumps(e_old["load"], sort_keys=True))
        new_rank = {e["config_id"]: e["rank"] for e in groups[key]}
        for other in old:
            same = (other["suite"], other["workload"], json.dumps(other["load"], sort_keys=True)) == key
            if same and other["rank"] > e_old["rank"] and new_rank[e_old["config_id"]] > new_rank[other["config_id"]]:
                problems.append(f"{key}: {e_old['config_id']} above {other['config_id']} before, below now")
    return problems


def test_the_shipped_suites_rank_as_before_modulo_ties() -> None:
    report = json.loads(PRE_REFACTOR.read_text())
    objectives = {name: parse_objective(info["objective"]) for name, info in report["suites"].items()}
    new = rank(report["results"], objectives)
    assert len(new) == len(report["ranking"])
    assert _order_agrees_modulo_ties(report["ranking"], new) == []
    # and the rule is not vacuous: noise ties (the chat suite at c1), real differences do not
    c1 = [e for e in new if e["suite"] == "qwen8b-chat" and e["load"]["concurrency"] == 1]
    c64 = [e for e in new if e["suite"] == "qwen8b-chat" and e["load"]["concurrency"] == 64]
    assert {e["rank"] for e in c1} == {1} and len({e["rank"] for e in c64}) > 1


def test_the_agreement_check_can_fail() -> None:
    old = [{"suite": "s", "workload": "w", "load": {}, "config_id": c, "rank": r} for c, r in (("a", 1), ("b", 2))]
    new = [{"suite": "s", "workload": "w", "load": {}, "config_id": c, "rank": r} for c, r in (("b", 1), ("a", 2))]
    assert _order_agrees_modulo_ties(old, new)


@pytest.mark.parametrize(
    ("concurrency", "rate", "loads"),
    [
        ([1, 16], [], [Load(concurrency=1), Load(concurrency=16)]),
        ([], [2.0, 4.0], [Load(request_rate=2.0), Load(request_rate=4.0)]),
        ([8], [2.0, 4.0], [Load(concurrency=8, request_rate=2.0), Load(concurrency=8, request_rate=4.0)]),
        ([8, 16], [2.0], [Load(concurrency=8, request_rate=2.0), Load(concurrency=16, request_rate=2.0)]),
    ],
)
def test_loads_from(concurrency: list[int], rate: list[float], loads: list[Load]) -> None:
    assert loads_from(concurrency, rate) == loads


def test_loads_from_refuses_two_lists() -> None:
    with pytest.raises(SuiteError, match="one of them must be a single value"):
        loads_from([8, 16], [2.0, 4.0])


def test_bench_refuses_two_lists_instead_of_dropping_the_cap(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_sglang_tune.cli import main

    rc = main(["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--concurrency", "4", "--concurrency", "8",
               "--request-rate", "2", "--request-rate", "3"])
    assert rc == 2
    assert "one of them must be a single value" in capsys.readouterr().err
