"""Regression tests for the user-visible bugs of the result-model issue (one result model, one session owner,
one backend seam). Each test names the bug it pins; they were committed failing (``xfail(strict=True)``) before
the fix landed, so the history shows them failing."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.cli import main

pytest_plugins = ["pytester"]

HERE = Path(__file__).parent
SHIPPED_CHAT_REPORT = HERE / "browser" / "data" / "sim_chat_report.json"  # made by the shipped chat suite


# --- 1. a report always compares with itself -------------------------------------------------------------------

def test_diff_of_a_report_against_itself_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped chat suite has per-load num_requests (one content hash per load): diff R R exited 3."""
    rc = main(["diff", str(SHIPPED_CHAT_REPORT), str(SHIPPED_CHAT_REPORT)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "matched 24 results" in out
    assert "BEST CONFIG CHANGED" not in out


# --- 2. GPU type and count of non-sim runs ---------------------------------------------------------------------

def _docker_report(gpus: list[str] | None) -> dict[str, Any]:
    from pytest_sglang_tune.report.store import build_report

    result = {"test_id": "t", "suite": "s", "workload": {"name": "chat", "content_hash": "abc"}, "config_id": "a~1",
              "load": {"concurrency": 8}, "status": "passed", "model": "Qwen/Qwen3-8B", "slo_pass": True,
              "metrics": {"output_throughput": 1000.0, "completed": 10, "failed": 0}}
    machine: dict[str, Any] = {"host": "runner"}
    if gpus is not None:
        machine["gpus"] = gpus
    run = {"id": "r", "backend": "docker", "machine": machine}
    return build_report(run=run, results=[result], suites={"s": {"objective": "maximize: output_throughput"}})


def test_diff_refuses_different_gpu_types_of_docker_runs() -> None:
    from pytest_sglang_tune.diff import IncomparableReports, diff_reports

    a = _docker_report(["NVIDIA H100 80GB HBM3"] * 2)
    b = _docker_report(["NVIDIA A100-SXM4-80GB"] * 2)
    with pytest.raises(IncomparableReports, match="GPU"):
        diff_reports(a, b)
    assert diff_reports(a, b, allow_different=True).warnings


def test_diff_refuses_different_gpu_counts_of_docker_runs() -> None:
    from pytest_sglang_tune.diff import IncomparableReports, diff_reports

    with pytest.raises(IncomparableReports, match="GPU"):
        diff_reports(_docker_report(["NVIDIA H100 80GB HBM3"] * 8), _docker_report(["NVIDIA H100 80GB HBM3"] * 4))


def test_diff_refuses_when_one_side_does_not_know_its_gpus() -> None:
    from pytest_sglang_tune.diff import IncomparableReports, diff_reports

    with pytest.raises(IncomparableReports, match=r"GPU.*unknown"):
        diff_reports(_docker_report(["NVIDIA H100 80GB HBM3"]), _docker_report(None))


def test_diff_ignores_gpu_uuids_and_driver_versions() -> None:
    from pytest_sglang_tune.diff import diff_reports

    a, b = _docker_report(["NVIDIA H100 80GB HBM3"]), _docker_report(["NVIDIA H100 80GB HBM3"])
    a["run"]["machine"]["gpu_details"] = [{"uuid": "GPU-1", "driver": "550.54"}]
    b["run"]["machine"]["gpu_details"] = [{"uuid": "GPU-2", "driver": "560.10"}]
    assert diff_reports(a, b).matched == 1


# --- 3. ties without repeats ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("a", "a_ci", "b", "b_ci", "tied"),
    [
        (100.0, None, 99.9, None, True),              # 0.1 % apart: within the 2 % margin
        (100.0, None, 80.0, None, False),             # 20 % apart, no intervals: not tied
        (100.0, (99.0, 101.0), 80.0, (79.0, 81.0), False),   # 20 % apart, narrow intervals
        (100.0, (80.0, 120.0), 95.0, (75.0, 115.0), True),   # 5 % apart, the difference's interval holds 0
        (100.0, (99.5, 100.5), 95.0, (94.5, 95.5), False),   # 5 % apart, narrow intervals: a real difference
    ],
)
def test_tie_rule(a: float, a_ci: tuple[float, float] | None, b: float, b_ci: tuple[float, float] | None,
                  tied: bool) -> None:
    from pytest_sglang_tune.stats import tied as is_tied

    assert is_tied(a, a_ci, b, b_ci, margin=0.02) is tied


def test_ranking_gives_tied_configs_the_same_rank() -> None:
    from pytest_sglang_tune.grammar import parse_objective
    from pytest_sglang_tune.ranking import rank

    def res(cfg: str, thr: float) -> dict[str, Any]:
        return {"suite": "s", "workload": {"name": "chat"}, "config_id": cfg, "load": {"concurrency": 1},
                "status": "passed", "slo_pass": True, "metrics": {"output_throughput": thr}}

    entries = rank([res("a", 100.0), res("b", 99.9), res("c", 80.0)],
                   {"s": parse_objective("maximize: output_throughput")})
    assert [(e["config_id"], e["rank"]) for e in entries] == [("a", 1), ("b", 1), ("c", 3)]
    assert entries[1]["tied"] is True and entries[2].get("tied") is not True


def test_shipped_chat_report_does_not_rank_noise(capsys: pytest.CaptureFixture[str]) -> None:
    """At c1 every config of the shipped chat suite scores within 0.1 %: one rank, not 1…8."""
    from pytest_sglang_tune.grammar import parse_objective
    from pytest_sglang_tune.ranking import rank

    report = json.loads(SHIPPED_CHAT_REPORT.read_text())
    entries = rank(report["results"], {"qwen8b-chat": parse_objective("maximize: output_throughput_per_gpu")})
    c1 = [e for e in entries if e["load"]["concurrency"] == 1]
    assert {e["rank"] for e in c1} == {1}


def test_diff_of_noise_says_unchanged_within_noise() -> None:
    from pytest_sglang_tune.diff import diff_reports, format_terminal

    old = json.loads(SHIPPED_CHAT_REPORT.read_text())
    new = copy.deepcopy(old)
    c1 = [r for r in new["results"] if r["load"]["concurrency"] == 1 and r["status"] == "passed"]
    best = next(e["config_id"] for e in old["ranking"] if e["rank"] == 1 and e["load"]["concurrency"] == 1)
    for r in c1:  # noise: the old best loses 0.3 %, another config gains 0.3 %
        factor = 0.997 if r["config_id"] == best else 1.003
        r["metrics"]["output_throughput_per_gpu"] *= factor
        r["metrics"]["output_throughput"] *= factor
    from pytest_sglang_tune.grammar import parse_objective
    from pytest_sglang_tune.ranking import rank

    new["ranking"] = rank(new["results"], {"qwen8b-chat": parse_objective("maximize: output_throughput_per_gpu")})
    text = "\n".join(format_terminal(diff_reports(old, new)))
    assert "THE BEST CONFIG CHANGED" not in text
    assert "unchanged within noise" in text


def test_too_few_samples_for_a_gated_percentile_is_a_warning() -> None:
    from pytest_sglang_tune.grammar import parse_slo
    from pytest_sglang_tune.stats import sample_size_warnings

    warnings = sample_size_warnings([parse_slo("ttft_ms.p99 <= 1500"), parse_slo("itl_ms.p95 <= 40")],
                                    {"ttft_ms": 4, "itl_ms": 900})
    assert len(warnings) == 1
    assert "ttft_ms.p99" in warnings[0] and "4 requests" in warnings[0] and "100" in warnings[0]


# --- 4. --lf, --ff, --sw and --deselect after an xdist run ------------------------------------------------------

LAUNCHER = """\
import os, sys
if "fcfs" in sys.argv:
    print("RuntimeError: this launcher refuses fcfs", flush=True)
    sys.exit(3)
os.execv(sys.executable, [sys.executable, "-m", "pytest_sglang_tune.sim", *sys.argv[1:]])
"""

LF_SUITE = """\
model: {{path: Qwen/Qwen3-8B, served_name: qwen}}
backends:
  sim: {{launcher: "{python} {launcher}", ready_timeout: 60}}
server:
  grid:
    schedule-policy: [lpm, fcfs]
workloads:
  - name: chat
    scenario: D(16,4)
    num_requests: 2
    warmup_requests: 0
    concurrency: [1, 2]
"""


def _lf_project(pytester: pytest.Pytester) -> None:
    launcher = pytester.path / "launcher.py"
    launcher.write_text(LAUNCHER)
    pytester.makefile(".yaml", tune_lf=LF_SUITE.format(python=sys.executable, launcher=launcher))


@pytest.mark.slow
@pytest.mark.parametrize("dist", [[], ["--dist", "loadgroup"]], ids=["plugin-dist", "explicit-loadgroup"])
def test_last_failed_and_friends_after_an_xdist_run(pytester: pytest.Pytester, dist: list[str]) -> None:
    _lf_project(pytester)
    result = pytester.runpytest_subprocess("--backend=sim", "-n", "3", "-v", *dist)
    result.assert_outcomes(passed=2, errors=2)
    printed = next(tok for ln in result.outlines if " ERROR " in ln for tok in ln.split()
                   if tok.startswith("tune_lf.yaml::"))
    # a config's tests stay on one worker (one deployment each)
    workers = {line.split()[0] for line in result.outlines if "PASSED" in line and "chat[lpm-" in line}
    assert len(workers) == 1, result.outlines
    failed_ids = sorted(json.loads((pytester.path / ".pytest_cache/v/cache/lastfailed").read_text()))
    assert failed_ids == ["tune_lf.yaml::chat[fcfs-c1]", "tune_lf.yaml::chat[fcfs-c2]"]

    result = pytester.runpytest_subprocess("--backend=sim", "--lf", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["tune_lf.yaml::chat[[]fcfs-c1[]]", "tune_lf.yaml::chat[[]fcfs-c2[]]",
                                 "2 tests collected*"])
    result = pytester.runpytest_subprocess("--backend=sim", "--ff", "--collect-only", "-q")
    assert [ln for ln in result.outlines if ln.startswith("tune_lf")][:2] == failed_ids
    result = pytester.runpytest_subprocess("--backend=sim", "--sw", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*4 tests collected*"])
    result = pytester.runpytest_subprocess("--backend=sim", "--deselect", printed, "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*3/4 tests collected (1 deselected)*"])


@pytest.mark.slow
def test_stepwise_continues_from_the_failed_suite_item(pytester: pytest.Pytester) -> None:
    """Bug 4's --sw round trip: the first run stops at the failing config, the next starts from it."""
    _lf_project(pytester)
    result = pytester.runpytest_subprocess("--backend=sim", "--sw", "-p", "no:xdist")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*Test failed, continuing from this test next run*"])
    result = pytester.runpytest_subprocess("--backend=sim", "--sw", "-p", "no:xdist", "-v")
    result.stdout.fnmatch_lines(["*stepwise: skipping 2 already passed items*",
                                 "tune_lf.yaml::chat[[]fcfs-c1[]] ERROR*"])
    result.assert_outcomes(errors=1)


# --- 5. strict SLOs and cost without a price --------------------------------------------------------------------

TINY_SIM_SUITE = """\
model: {path: Qwen/Qwen3-8B, served_name: qwen}
server:
  fixed: {schedule-policy: fcfs}
workloads:
  - name: chat
    scenario: D(16,4)
    num_requests: 2
    warmup_requests: 0
    concurrency: [1]
"""


@pytest.mark.slow
def test_strict_slo_fails_the_test_and_keeps_the_measurement(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_tiny=TINY_SIM_SUITE)
    result = pytester.runpytest("--backend=sim", "--sglang-slo=ttft_ms.p99 <= 0.001", "--sglang-strict-slo",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*SLO missed (--sglang-strict-slo): ttft_ms.p99 <= 0.001 (measured *)*"])
    (report,) = (pytester.path / "reports").glob("*/report.json")
    data = json.loads(report.read_text())
    (res,) = data["results"]
    assert res["status"] == "failed" and res["slo_pass"] is False and res["metrics"]["completed"] == 2
    assert [e["slo_pass"] for e in data["ranking"]] == [False]  # measured, ranked below every SLO pass


@pytest.mark.parametrize(
    ("where", "text"),
    [("objective", "objective: {minimize: cost_per_mtok}\n"), ("slos", "slos: ['cost_per_mtok <= 1.5']\n")],
)
def test_cost_without_a_price_is_a_collection_error(pytester: pytest.Pytester, where: str, text: str) -> None:
    pytester.makefile(".yaml", tune_cost=TINY_SIM_SUITE + text)
    result = pytester.runpytest("--backend=sim", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([f"*tune_cost.yaml*{where}*cost_per_mtok needs a GPU-hour price*"
                                 "--sglang-gpu-hour-price*gpu_hour_price*"])
    price = pytester.runpytest("--backend=sim", "--collect-only", "-q", "--sglang-gpu-hour-price=2.5")
    price.stdout.fnmatch_lines(["*1 test collected*"])
