"""The terminal summary: top configurations per suite × workload × load, then what was not ranked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_sglang_tune.report.store import build_report, load_report
from pytest_sglang_tune.report.terminal import summary_lines

FIXTURE = Path(__file__).parent / "fixtures" / "report_v1.json"


def rec(config_id: str, tput: float, *, concurrency: int = 8, slo_pass: bool = True, status: str = "passed",
        **extra: Any) -> dict[str, Any]:
    return {"suite": "s", "workload": {"name": "chat", "content_hash": "h"}, "config_id": config_id,
            "load": {"concurrency": concurrency, "request_rate": None}, "status": status,
            "slo_pass": slo_pass, "metrics": {"output_throughput": tput, "ttft_ms": {"p99": tput * 10}},
            **extra}


def test_fixture_summary() -> None:
    assert summary_lines(load_report(FIXTURE)) == [
        "sglang-tune run 20261127-130501-3fa2 (backend sim, GPUs 4): 3 results: 1 infeasible, 2 passed",
        "llama8b · chat @ c16 · maximize: output_throughput_per_gpu",
        "   1. tp2-mem0.9  score     651.2  SLO pass  ttft_ms.p99=610.7  itl_ms.p95=14.10",
        "   2. tp1-mem0.9  score     780.0  SLO MISS  ttft_ms.p99=2,950  itl_ms.p95=24.00",
        "llama8b: not ranked: 1 infeasible (reasons in report.html)",
    ]


def test_top_n_per_group_and_the_rest_counted() -> None:
    results = [rec(f"cfg{i}", float(i), slo_pass=i % 2 == 0) for i in range(1, 7)]
    results += [rec("other", 1.0, concurrency=64),
                rec("gone", 0.0, status="error", reason="boom", metrics={}),
                rec("big", 0.0, status="skipped", reason="8 GPUs", metrics={})]
    report = build_report(run={"id": "r1", "backend": "local", "gpus": 2}, results=results,
                          suites={"s": {"objective": "maximize: output_throughput",
                                        "slos": ["ttft_ms.p99 <= 50"]}},
                          warnings=["sim lagged"])
    lines = summary_lines(report, top=2)
    assert lines == [
        "sglang-tune run r1 (backend local, GPUs 2): 9 results: 1 error, 7 passed, 1 skipped",
        "warning: sim lagged",
        "s · chat @ c8 · maximize: output_throughput",
        "   1. cfg6  score      6.00  SLO pass  ttft_ms.p99=60.00",
        "   2. cfg4  score      4.00  SLO pass  ttft_ms.p99=40.00",
        "      … 4 more ranked (3 failing SLOs)",
        "s · chat @ c64 · maximize: output_throughput",
        "   1. other  score      1.00  SLO pass  ttft_ms.p99=10.00",
        "s: not ranked: 1 error, 1 skipped (reasons in report.html)",
    ]


def test_display_id_preferred_and_empty_report() -> None:
    report = build_report(run={"id": "r"}, results=[rec("a" * 40, 3.0, display_id="short")], suites={})
    assert any(line.startswith("   1. short  score") for line in summary_lines(report))
    assert summary_lines(build_report(run={"id": "e"}, results=[], suites={})) == [
        "sglang-tune run e (backend ?, GPUs ?): 0 results"]
