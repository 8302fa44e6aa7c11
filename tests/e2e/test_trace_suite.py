"""A suite with a trace workload, end to end on the simulated server: ids, load ladder, records, ranking."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import pytest_sglang_tune
from pytest_sglang_tune.cli import main
from pytest_sglang_tune.loadgen.trace import workload_trace_requests
from pytest_sglang_tune.report.store import load_report
from pytest_sglang_tune.suite import load_suite

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow
SHIPPED = Path(__file__).resolve().parents[2] / "suites" / "tune_qwen8b_trace.yaml"

TRACE = "".join(json.dumps({"timestamp": t, "input_length": n, "output_length": 4, "hash_ids": ids}) + "\n"
                for t, n, ids in [(0, 1200, [1, 2, 3]), (150, 1300, [1, 2, 4]), (300, 600, [7, 8]),
                                  (450, 1200, [1, 2, 3]), (600, 700, [7, 8]), (900, 100, [9])])

SUITE = """\
model: {path: Qwen/Qwen3-8B, served_name: tiny}
backends:
  sim: {gpu: h100_sxm}
server:
  fixed: {enable-metrics: true}
  grid: {schedule-policy: [lpm, fcfs]}
workloads:
  - name: prod
    trace: traces/prod.jsonl
    endpoint: generate
    warmup_requests: 1
    time_scale: [1, 0.5]
slos: ["ttft_ms.p99 <= 5000"]
objective: {maximize: goodput}
"""


def test_a_trace_suite_runs_with_time_scale_levels(pytester: pytest.Pytester) -> None:
    pytester.mkdir("traces")
    (pytester.path / "traces" / "prod.jsonl").write_text(TRACE)
    pytester.makefile(".yaml", tune_trace=SUITE)
    result = pytester.runpytest("--backend=sim", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*tune_trace.yaml::prod[[]lpm-ts1[]] PASSED*",
                                 "*tune_trace.yaml::prod[[]fcfs-ts0.5[]] PASSED*",
                                 "*trace · prod @ ts1 · maximize: goodput*", "*trace · prod @ ts0.5 · *"])
    (report_path,) = pytester.path.glob("reports/*/report.json")
    results = load_report(report_path)["results"]
    by_level: dict[float, set[str]] = {}
    for r in results:
        assert r["status"] == "passed" and r["metrics"]["completed"] == 6, r
        by_level.setdefault(r["load"]["time_scale"], set()).add(r["workload"]["content_hash"])
        assert r["load"]["request_rate"] == pytest.approx(5 / 0.9 / r["load"]["time_scale"], rel=1e-5)
    assert sorted(by_level) == [0.5, 1.0]
    assert all(len(h) == 1 for h in by_level.values()) and by_level[0.5] != by_level[1.0]


def test_the_shipped_trace_suite_runs_on_the_sim_and_reads_back_as_a_table(pytester: pytest.Pytester) -> None:
    """Issue 14's done-when, on the suite we ship: it runs in ``pytest suites/ --backend=sim``, and load_results and
    ``sglang-tune table`` read its report (every result, each workload's whole trace window served)."""
    result = pytester.runpytest_subprocess(str(SHIPPED), "--backend=sim", "-p", "no:cacheprovider")
    workloads = load_suite(SHIPPED).workloads
    configs = 2   # disable-radix-cache: [false, true]
    result.assert_outcomes(passed=configs * sum(len(w.loads) for w in workloads))
    (report_path,) = pytester.path.glob("reports/*/report.json")
    report = load_report(report_path)
    df = pytest_sglang_tune.load_results(report_path)
    assert len(df) == len(report["results"]) and (df["status"] == "passed").all() and df["rank"].notna().all()
    sent = {w.name: len(workload_trace_requests(w)) for w in workloads}
    assert {(r.workload, r.completed) for r in df.itertuples()} == set(sent.items())
    assert sorted(set(df["--disable-radix-cache"])) == [False, True]
    out = pytester.path / "table.csv"
    assert main(["table", str(report_path), "--csv", "-o", str(out)]) == 0
    back = pd.read_csv(out)
    assert len(back) == len(df) and list(back["config_id"]) == list(df["config_id"])
