"""Searches end to end over real HTTP against the simulated server: each strategy on a 4-config suite, the study
shared by xdist workers, ``--sglang-resume`` continuing a search, ``--lf`` after a search, the early-stopped load
ladder and the load search (bisection for the highest load within the SLOs)."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.report.store import load_report

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow
LAUNCHERS = Path(__file__).with_name("launchers.py")
FOUR = "chunked-prefill-size: [512, 8192], schedule-policy: [lpm, fcfs]"


def suite(*, grid: str = FOUR, workload: str = "concurrency: [4]", scenario: str = "D(256,16)",
          slos: str = '["ttft_ms.p99 <= 5000"]', objective: str = "maximize: output_throughput_per_gpu",
          launcher: str = "") -> str:
    launch = f", launcher: {json.dumps(launcher)}" if launcher else ""
    return f"""\
model: {{path: Qwen/Qwen3-8B, served_name: s-{uuid.uuid4().hex[:8]}}}
backends:
  sim: {{gpu: h100_sxm{launch}}}
server:
  grid: {{{grid}}}
workloads:
  - name: chat
    scenario: {scenario}
    num_requests: 8
    {workload}
slos: {slos}
objective: {{{objective}}}
"""


def report_of(root: Path) -> dict[str, Any]:
    paths = sorted(root.glob("reports/*/report.json"), key=lambda p: p.stat().st_mtime)
    return load_report(paths[-1])


def configs_measured(report: dict[str, Any], *, fresh_only: bool = False) -> set[str]:
    return {r["config_id"] for r in report["results"] if r.get("trial") and r["status"] == "passed"
            and r.get("fidelity") in (None, "full") and not (fresh_only and r.get("resumed_from"))}


@pytest.mark.parametrize(("strategy", "budget"), [("random", "3"), ("tpe", "3"), ("predicted", "3"),
                                                  ("halving", None)])
def test_each_strategy_runs_ranks_and_says_what_it_did_not_measure(pytester: pytest.Pytester, strategy: str,
                                                                    budget: str | None) -> None:
    pytester.makefile(".yaml", tune_four=suite())
    args = ["--backend=sim", "-p", "no:cacheprovider", f"--sglang-search={strategy}", "--junitxml=junit.xml"]
    result = pytester.runpytest_subprocess(*args, *([f"--sglang-budget={budget}"] if budget else []))
    assert result.ret == 0, result.stdout.str()
    report = report_of(pytester.path)
    search = report["run"]["search"]["four"]
    assert search["strategy"] == strategy and search["grid_configs"] == 4
    assert search["grid_gpu_h_predicted"] > 0 and search["used_gpu_h"] > 0
    measured = configs_measured(report)
    assert {r["config_id"] for r in search["measured"]} >= measured
    not_measured = {r["config_id"] for r in search["not_measured"]}
    assert not_measured.isdisjoint({r["config_id"] for r in report["results"] if r.get("trial")})
    assert all(r["predicted"] is not None for r in search["not_measured"])  # the predictor's figure for each
    ranked = {e["config_id"] for e in report["ranking"]}
    assert ranked == measured
    (html,) = pytester.path.glob("reports/*/report.html")
    page = html.read_text()
    assert '<table class="search-measured">' in page
    assert all(f'data-config-id="{c}"' in page for c in measured | not_measured)  # side by side, and the rest
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="sglang.trial.config_id"' in junit
    text = result.stdout.str()
    assert f"search {strategy}" in text and "the whole grid ~" in text
    if budget:
        assert len(measured) == 3 and len(not_measured) == 1
        assert "stopped: budget spent: 3 of 3 trials" in text
        assert search["stopped"] == "budget spent: 3 of 3 trials"
        result.assert_outcomes(passed=3)  # a trial budget makes no more items than it allows
    else:  # halving: every config screened with fewer requests, the best ones measured in full
        low = [r for r in report["results"] if r.get("fidelity") == "low"]
        assert {r["config_id"] for r in low} == {r["config_id"] for r in report["results"]}
        assert all(r["metrics"]["completed"] == 4 for r in low)  # a third of 8 requests, at least 4
        assert 1 <= len(measured) <= 2 and not ranked & ({r["config_id"] for r in low} - measured)
        assert "low-fidelity (halving)" in text


def test_xdist_workers_share_one_study(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_four=suite())
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "-n", "2",
                                           "--sglang-search=tpe", "--sglang-budget=4")
    assert result.ret == 0, result.stdout.str()
    report = report_of(pytester.path)
    trials = [r for r in report["results"] if r.get("trial")]
    assert sorted(r["config_id"] for r in trials) == sorted({r["config_id"] for r in trials})  # none twice
    assert len(trials) == 4 and len({r["trial"]["number"] for r in trials}) == 4  # Optuna's trial numbers
    (journal,) = pytester.path.glob("reports/*/search/four.journal")
    assert journal.stat().st_size > 0
    assert len({r["test_id"] for r in trials}) == 4


def test_resume_continues_the_study_and_reuses_its_measurements(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_four=suite())
    first = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--sglang-search=random",
                                          "--sglang-budget=2")
    assert first.ret == 0, first.stdout.str()
    (run1,) = pytester.path.glob("reports/*/")
    before = configs_measured(report_of(pytester.path))
    assert len(before) == 2
    second = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--sglang-search=random",
                                           "--sglang-budget=4", f"--sglang-resume={run1}")
    assert second.ret == 0, second.stdout.str()
    report = report_of(pytester.path)
    assert configs_measured(report) == {r["config_id"] for r in report["results"]}  # all 4, none twice
    assert len(configs_measured(report)) == 4
    fresh = configs_measured(report, fresh_only=True)
    assert fresh == configs_measured(report) - before and len(fresh) == 2  # only the two new ones measured
    second.assert_outcomes(passed=2, skipped=2)  # the study already holds two trials: two more fit the budget
    again = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--sglang-search=tpe",
                                          f"--sglang-resume={run1}")
    assert again.ret == 2  # a collection error naming both strategies
    again.stdout.fnmatch_lines(["*that run searched four with --sglang-search=random, this one asks for tpe*"])


def test_lf_after_a_search_reruns_the_configs_that_failed(pytester: pytest.Pytester) -> None:
    launcher = f"{sys.executable} {LAUNCHERS} fail-with:--chunked-prefill-size=512"
    pytester.makefile(".yaml", tune_four=suite(launcher=launcher))
    os.environ["FAIL_WITH_ON"] = "1"
    try:
        first = pytester.runpytest_subprocess("--backend=sim", "--sglang-search=random", "--sglang-budget=4")
    finally:
        del os.environ["FAIL_WITH_ON"]
    first.assert_outcomes(passed=2, errors=2)
    failed = {r["config_id"] for r in report_of(pytester.path)["results"] if r["status"] != "passed"}
    assert len(failed) == 2
    second = pytester.runpytest_subprocess("--backend=sim", "--sglang-search=random", "--sglang-budget=4", "--lf")
    second.assert_outcomes(passed=2)
    report = report_of(pytester.path)
    assert configs_measured(report) == failed  # the configs that failed, not whatever the sampler draws next
    assert all("--lf" in r["trial"]["why"] for r in report["results"])


@pytest.mark.parametrize("mode", ["grid", "random"])
def test_a_missed_latency_slo_ends_the_config_s_load_ladder(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makefile(".yaml", tune_ladder=suite(grid="chunked-prefill-size: [8192]", scenario="D(2048,16)",
                                                 workload="concurrency: [1, 8, 16]",
                                                 slos='["ttft_ms.p99 <= 200"]'))
    args = ["--sglang-early-stop"] if mode == "grid" else ["--sglang-search=random"]
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", *args)
    report = report_of(pytester.path)
    by_load = {r["load"]["concurrency"]: r for r in report["results"]}
    assert by_load[1]["slo_pass"] is True and by_load[8]["slo_pass"] is False
    assert by_load[16]["status"] == "not_measured"
    assert "SLO already missed at c8" in by_load[16]["reason"]
    if mode == "grid":
        result.assert_outcomes(passed=2, skipped=1)


def test_load_search_bisects_for_the_highest_load_within_the_slos(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_max=suite(
        grid="chunked-prefill-size: [8192]", scenario="D(2048,16)",
        workload="load: {search: max_within_slo, concurrency: [1, 16], tolerance: 0.3}",
        slos='["ttft_ms.p99 <= 200"]', objective="maximize: max_load"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*chat*chunk8192-max*"])
    report = report_of(pytester.path)
    (summary,) = [r for r in report["results"] if r.get("max_load")]
    probes = [r for r in report["results"] if r.get("fidelity") == "probe"]
    found = summary["max_load"]["value"]
    assert summary["metrics"]["max_load"] == found and summary["load"]["search"] == "max_within_slo"
    passing = {r["load"]["concurrency"] for r in probes if r["slo_pass"]}
    missing = {r["load"]["concurrency"] for r in probes if not r["slo_pass"]}
    assert found == max(passing) and 1 in passing and 16 in missing
    assert min(c for c in missing if c > found) <= max(found * 1.3, found + 1)  # within the tolerance
    assert [e["config_id"] for e in report["ranking"]] == [summary["config_id"]]  # probes are never ranked
    assert report["ranking"][0]["score"] == found
