"""The ``sglang-tune`` command line: report, validate, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_sglang_tune import __version__
from pytest_sglang_tune.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "report_v1.json"
REPO = Path(__file__).resolve().parents[1]

GOOD_SUITE = """\
model: {path: Qwen/Qwen3-8B}
server:
  grid: {mem-fraction-static: [0.8, 0.9]}
workloads:
  - name: chat
    scenario: D(100,20)
    num_requests: 8
    concurrency: [1, 4]
slos: ["ttft_ms.p99 <= 2000"]
"""
BAD_SUITE = GOOD_SUITE.replace("mem-fraction-static", "mem-fraction-statik")


@pytest.fixture
def report_copy(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "report.json"
    path.parent.mkdir()
    shutil.copy(FIXTURE, path)
    return path


def test_report_writes_html_beside_the_json(report_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(report_copy)]) == 0
    html = report_copy.with_name("report.html")
    assert f"wrote {html}" in capsys.readouterr().out
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "tp2-mem0.9" in page and "tp1-mem0.95" in page


def test_report_output_option(report_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "page.html"
    assert main(["report", str(report_copy), "-o", str(out)]) == 0
    assert "20261127-130501-3fa2" in out.read_text()
    assert not report_copy.with_name("report.html").exists()


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such report file"),
    ('{"schema_version": 7, "run": {}, "results": [], "ranking": []}',
     "schema_version 7 was written by a newer"),
    ("{not json", "not valid JSON"),
])
def test_report_problems_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
                                message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sglang-tune report: error: {path}") and message in err
    assert not (tmp_path / "report.html").exists()


def test_an_old_v1_report_still_diffs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 10: a schema-1 report (tests/fixtures/report_v1.json) diffs against itself and catches a regression."""
    assert main(["diff", str(FIXTURE), str(FIXTURE)]) == 0
    assert "matched 2 results" in capsys.readouterr().out
    slower = json.loads(FIXTURE.read_text())
    for r in slower["results"]:
        if r["metrics"]:
            r["metrics"]["output_throughput"] *= 0.8
    new = tmp_path / "slower.json"
    new.write_text(json.dumps(slower))
    assert main(["diff", str(FIXTURE), str(new), "--fail-on", "output_throughput:-5%"]) == 1
    assert "crosses output_throughput:-5%" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["nonsense"], ["report"], ["report", "a", "b"], ["validate"],
                                  ["report", "x.json", "--bogus"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: sglang-tune" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "report" in out and "validate" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pytest-sglang-tune {__version__}"


def test_validate_real_suites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "tune_good.yaml"
    good.write_text(GOOD_SUITE)
    bad = tmp_path / "tune_bad.yaml"
    bad.write_text(BAD_SUITE)
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{good}: ok") and out.count("\n") == 1

    assert main(["validate", str(good), str(bad), str(tmp_path / "absent.yaml")]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].startswith(f"{good}: ok")
    assert captured.out.splitlines()[-1] == "1 of 3 suites valid"
    err = captured.err.splitlines()
    assert err[0].startswith(f"sglang-tune validate: error: {bad}:")
    assert "did you mean --mem-fraction-static" in err[0]
    assert err[1] == f"sglang-tune validate: error: {tmp_path / 'absent.yaml'}: No such file or directory"


def _run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "pytest_sglang_tune.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_module_entry_point_report(report_copy: Path, tmp_path: Path) -> None:
    proc = _run_module("report", str(report_copy), "-o", "out.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "wrote out.html"
    assert "tp2-mem0.9" in (tmp_path / "out.html").read_text()


def test_module_entry_point_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "report.json"
    bad.write_text(json.dumps({"results": []}))
    proc = _run_module("report", str(bad), cwd=tmp_path)
    assert proc.returncode == 1
    assert "no 'schema_version' field" in proc.stderr
    assert _run_module(cwd=tmp_path).returncode == 2
