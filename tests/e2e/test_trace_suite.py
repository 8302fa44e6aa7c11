"""A suite with a trace workload, end to end on the simulated server: ids, load ladder, records, ranking."""

from __future__ import annotations

import json

import pytest

from pytest_sglang_tune.report.store import load_report

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

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
