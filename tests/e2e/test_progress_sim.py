"""Progress against the sim, end to end: plain lines without a terminal, none under -qq, none in JUnit XML, and
under -n 2 the workers' progress files rendered per worker — whose report then reads back as a DataFrame."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

import pytest_sglang_tune
from pytest_sglang_tune.cli import main

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow


def tiny_suite(configs: str) -> str:
    return f"""\
model: {{path: Qwen/Qwen3-8B, served_name: progress-{uuid.uuid4().hex[:8]}}}
backends:
  sim: {{gpu: h100_sxm}}
server:
  grid: {{schedule-policy: {configs}}}
workloads:
  - name: chat
    scenario: D(64,96)
    num_requests: 8
    warmup_requests: 0
    concurrency: 1
slos: ["ttft_ms.p99 <= 5000"]
objective: {{maximize: output_throughput_per_gpu}}
"""


def progress_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("sglang-tune: ")]


def test_plain_lines_without_a_terminal_and_none_in_junit(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_p=tiny_suite("[lpm]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--sglang-progress-interval=0",
                                           "--junitxml=junit.xml", "-o", "junit_logging=all")
    result.assert_outcomes(passed=1)
    lines = progress_lines(result.stdout.str())
    assert any("waiting for readiness" in ln and "/2m" in ln for ln in lines), lines  # the sim's 120 s timeout
    assert any(ln.startswith("sglang-tune: chat c1: ") and "/8 requests" in ln and "tok/s" in ln for ln in lines)
    assert not any("\r" in ln or "\x1b[" in ln for ln in result.stdout.lines)  # no terminal: no control codes
    junit = (pytester.path / "junit.xml").read_text()
    assert "<testcase" in junit
    assert "waiting for readiness" not in junit and "requests," not in junit


def test_nothing_under_qq(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_p=tiny_suite("[lpm]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--sglang-progress-interval=0",
                                           "-qq")
    assert result.ret == 0  # -qq prints no outcome line to parse
    assert list((pytester.path / "reports").glob("*/report.json"))
    assert progress_lines(result.stdout.str()) == []
    assert "waiting for readiness" not in result.stdout.str() + result.stderr.str()


def test_xdist_workers_write_progress_files_the_controller_shows_per_worker(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_p=tiny_suite("[lpm, fcfs]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--sglang-progress-interval=0",
                                           "-n", "2")
    result.assert_outcomes(passed=2)
    (run_dir,) = (pytester.path / "reports").iterdir()
    files = sorted((run_dir / "progress").glob("*.jsonl"))
    assert [f.stem for f in files] == ["gw0", "gw1"]
    for f in files:
        events = [json.loads(line) for line in f.read_text().splitlines()]
        assert {e["worker"] for e in events} == {f.stem}
        texts = [e["text"] for e in events]
        assert any("waiting for readiness" in t for t in texts) and any("/8 requests" in t for t in texts)
        assert texts[-1] == ""  # each step clears its line when it is over
    shown = progress_lines(result.stdout.str())
    for worker in ("gw0", "gw1"):
        assert any(ln.startswith(f"sglang-tune: [{worker}] ") for ln in shown), shown

    # the run's report, read back as a DataFrame and as a table
    df = pytest_sglang_tune.load_results(run_dir)
    assert sorted(df["--schedule-policy"]) == ["fcfs", "lpm"] and (df["completed"] == 8).all()
    assert sorted(df["rank"]) == [1, 2] or df["rank"].tolist() == [1, 1]
    assert main(["table", str(run_dir / "report.json"), "--markdown", "-o", str(pytester.path / "t.md")]) == 0
    table = (pytester.path / "t.md").read_text().splitlines()
    assert len(table) == 2 + 2 and "--schedule-policy" in table[0]
    assert Path(run_dir / "report.json").is_file()
