"""results.py: run ids, machine info, atomic writes, results.jsonl, build/write/load of report.json v1."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pytest_sglang_tune import __version__
from pytest_sglang_tune.redact import ENV_SECRETS
from pytest_sglang_tune.report.store import (
    SCHEMA_VERSION,
    ReportError,
    ResultsLog,
    atomic_write_text,
    build_report,
    load_report,
    machine_info,
    new_run_id,
    write_report,
)

FIXTURE = Path(__file__).parent / "fixtures" / "report_v1.json"

# report.json as documented: docs/report-schema.json (the machine-readable half of docs/report-schema.md)
REPORT_SCHEMA: dict[str, Any] = json.loads((Path(__file__).parents[1] / "docs" / "report-schema.json").read_text())


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_SECRETS:
        monkeypatch.delenv(name, raising=False)


def metrics(tput: float) -> dict[str, Any]:
    dist = {"mean": 10.0, "p50": 9.0, "p90": 12.0, "p95": 13.0, "p99": 20.0}
    return {"ttft_ms": dist, "itl_ms": dist, "tpot_ms": dist, "e2e_ms": dist, "output_throughput": tput,
            "output_throughput_per_gpu": tput / 2, "input_throughput": tput * 4, "request_throughput": 1.5,
            "goodput": 1.5, "error_rate": 0.0, "completed": 10, "failed": 0}


def record(config_id: str, tput: float = 100.0, **extra: Any) -> dict[str, Any]:
    return {"test_id": f"suites/tune_s.yaml::chat[{config_id}-c4]", "suite": "s",
            "workload": {"name": "chat", "content_hash": "abc123"}, "config_id": config_id,
            "server_args": {"tp-size": 2}, "launch_command": "python -m sglang.launch_server --tp-size 2",
            "sglang_version": "0.5.23", "load": {"concurrency": 4, "request_rate": None}, "status": "passed",
            "metrics": metrics(tput), "slo_pass": True, "gpus_used": [0, 1], **extra}


RUN = {"id": "20261127-130501-3fa2", "started_at": "2026-11-27T13:05:01+00:00",
       "finished_at": "2026-11-27T13:10:00+00:00", "backend": "sim", "gpus": 2,
       "argv": ["pytest", "suites/", "--backend=sim"],
       "machine": {"host": "h", "cpu": {"model": "x", "count": 2}, "gpus": []}}
SUITES = {"s": {"objective": "maximize: output_throughput", "slos": ["ttft_ms.p99 <= 100"],
                "sglang_version": "0.5.23", "excluded": []}}


# --- run ids and machine info ---------------------------------------------------------------------

def test_new_run_id_format_sorting_and_uniqueness() -> None:
    t = datetime(2026, 11, 27, 13, 5, 1, tzinfo=UTC)
    rid = new_run_id(t)
    assert re.fullmatch(r"20261127-130501-[0-9a-f]{4}", rid)
    later = new_run_id(t + timedelta(seconds=1))
    assert sorted([later, rid]) == [rid, later]
    assert len({new_run_id(t) for _ in range(50)}) > 40        # random suffix: same-second runs differ
    plus2 = timezone(timedelta(hours=2))
    assert new_run_id(datetime(2026, 11, 27, 15, 5, 1, tzinfo=plus2)).startswith("20261127-130501-")
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", new_run_id())


def test_machine_info_without_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))       # no nvidia-smi anywhere
    info = machine_info()
    assert info["host"]
    assert info["cpu"]["count"] == os.cpu_count()
    assert info["cpu"]["model"]
    assert info["gpus"] == []


# --- atomic writes --------------------------------------------------------------------------------

def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "report.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two ✓")
    assert target.read_text(encoding="utf-8") == "two ✓"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_atomic_write_failure_mid_write_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old complete content")
    # 1 MB of text, then a lone surrogate: the write fails after the temporary file was created.
    bad = "x" * 1_000_000 + "\ud800"
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, bad)
    assert target.read_text() == "old complete content"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]      # the temporary file is gone


def test_atomic_write_failure_at_fsync_leaves_no_file(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    target = tmp_path / "new.json"
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []


# --- results.jsonl --------------------------------------------------------------------------------

def test_results_log_appends_one_line_per_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "reports" / "run1" / "results.jsonl"
    log = ResultsLog(path)
    log.append(record("a"))
    log.append(record("b", tput=float("nan")))
    assert len(synced) == 2                                    # one fsync per line
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["metrics"]["output_throughput"] is None     # NaN is not valid JSON
    got = ResultsLog.read(path)
    assert [r["config_id"] for r in got] == ["a", "b"]
    assert got.skipped == 0


def test_results_log_redacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_TopSecretToken")
    path = tmp_path / "results.jsonl"
    ResultsLog(path).append(record("a", launch_command="sglang --api-key k-123 --tp-size 2",
                                   server_args={"api-key": "k-123"}, log_tail="auth hf_TopSecretToken"))
    text = path.read_text()
    assert "k-123" not in text and "hf_TopSecretToken" not in text
    assert ResultsLog.read(path)[0]["server_args"] == {"api-key": "***"}


def test_results_log_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    log = ResultsLog(path)
    log.append(record("a"))
    log.append(record("b"))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 25])            # the process died in the middle of line 2
    got = ResultsLog.read(path)
    assert [r["config_id"] for r in got] == ["a"]
    assert got.skipped == 1
    # a resumed run appends after the torn line without gluing onto it
    log.append(record("c"))
    got = ResultsLog.read(path)
    assert [r["config_id"] for r in got] == ["a", "c"]
    assert got.skipped == 1


def test_results_log_read_missing_file(tmp_path: Path) -> None:
    got = ResultsLog.read(tmp_path / "nope.jsonl")
    assert got == [] and got.skipped == 0


def test_results_log_keeps_unicode_line_separators(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    ResultsLog(path).append(record("a", log_tail="line\u2028sep and ✓"))
    assert ResultsLog.read(path)[0]["log_tail"] == "line\u2028sep and ✓"


# --- build / write / load -------------------------------------------------------------------------

def test_build_report_shape_and_ranking() -> None:
    report = build_report(run=RUN, results=[record("a", 100.0), record("b", 300.0),
                                            record("c", status="infeasible", reason="OOM", metrics={})],
                          suites=SUITES, warnings=["w1"])
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["schema_version"] == SCHEMA_VERSION == 2
    assert report["tool"] == {"name": "pytest-sglang-tune", "version": __version__}
    assert [(e["rank"], e["config_id"]) for e in report["ranking"]] == [(1, "b"), (2, "a")]
    assert report["warnings"] == ["w1"]
    c = report["results"][2]
    assert (c["status"], c["reason"], c["image"], c["image_digest"], c["perf_model"]) == (
        "infeasible", "OOM", None, None, None)


def test_build_report_fills_defaults_and_normalizes() -> None:
    minimal = {"suite": "s", "workload": "chat", "config_id": "a", "status": "skipped",
               "reason": "needs 8 GPUs"}
    report = build_report(run={"id": "r"}, results=[minimal], suites={"s": {}})
    jsonschema.validate(report, REPORT_SCHEMA)
    r = report["results"][0]
    assert r["workload"] == {"name": "chat", "content_hash": None}
    assert r["load"] == {"concurrency": None, "request_rate": None}
    assert r["metrics"] == {} and r["server_args"] == {}
    assert report["ranking"] == []
    assert report["suites"]["s"] == {"objective": None, "slos": [], "sglang_version": None, "excluded": []}
    assert report["run"]["machine"] == {"host": None, "cpu": None, "gpus": None}  # not known


def test_build_report_keeps_last_duplicate_and_warns() -> None:
    report = build_report(run=RUN, results=[record("a", 1.0), record("a", 2.0)], suites=SUITES)
    assert len(report["results"]) == 1
    assert report["results"][0]["metrics"]["output_throughput"] == 2.0
    assert any("measured again" in w for w in report["warnings"])


def test_build_report_uses_given_ranking() -> None:
    custom = [{"suite": "s", "workload": "chat", "load": {"concurrency": 4, "request_rate": None}, "rank": 1,
               "config_id": "a", "score": None, "slo_pass": True}]
    report = build_report(run=RUN, results=[record("a"), record("b", 500.0)], suites=SUITES, ranking=custom)
    assert report["ranking"] == custom


@pytest.mark.parametrize(("bad", "message"), [
    ({"status": "done"},
     "status 'done' is not valid (allowed: passed, failed, skipped, error, infeasible, excluded, not_measured)"),
    ({"status": None}, "status None is not valid"),
    ({"config_id": ""}, "field 'config_id' is missing or empty"),
    ({"workload": {"content_hash": "x"}}, "field 'workload' must be {name, content_hash}"),
])
def test_build_report_keeps_bad_records_as_errors(bad: dict[str, Any], message: str) -> None:
    """One broken record must not cost the report of a whole run: it becomes an error result and a warning."""
    report = build_report(run=RUN, results=[record("ok"), {**record("x", reason="why"), **bad}],
                          suites=SUITES)
    jsonschema.validate(report, REPORT_SCHEMA)
    broken = report["results"][1]
    assert broken["status"] == "error"
    assert broken["reason"].startswith("result #1 (test_id ")
    assert message in broken["reason"] and broken["reason"].endswith("(reason given: why)")
    assert len(report["warnings"]) == 1 and message in report["warnings"][0]
    assert [e["config_id"] for e in report["ranking"]] == ["ok"]


def test_build_report_accepts_a_result_without_workload() -> None:
    report = build_report(run=RUN, results=[record("a", workload=None, load=None)], suites=SUITES)
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["results"][0]["workload"] == {"name": None, "content_hash": None}
    assert report["warnings"] == []
    assert [(e["workload"], e["config_id"]) for e in report["ranking"]] == [("", "a")]


def test_build_report_redacts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_API_KEY", "sgl-secret-999")
    run = {**RUN, "argv": ["pytest", "--sglang-api-key", "sgl-secret-999", "--sglang-x=1"]}
    report = build_report(run=run, results=[record("a", launch_command="x --api-key sgl-secret-999")],
                          suites=SUITES)
    assert "sgl-secret-999" not in json.dumps(report)
    assert report["run"]["argv"] == ["pytest", "--sglang-api-key", "***", "--sglang-x=1"]


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    report = build_report(run=RUN, results=[record("a"), record("b", 50.0)], suites=SUITES)
    paths = write_report(report, tmp_path / "run")
    assert paths == {"json": tmp_path / "run" / "report.json", "html": tmp_path / "run" / "report.html"}
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")
    assert load_report(paths["json"]) == report
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.html", "report.json"]


def test_load_report_v1_fixture() -> None:
    """A hand-written schema-1 report.json must stay readable by every later version of the tool."""
    report = load_report(FIXTURE)
    assert report["schema_version"] == 1 and report["upgraded_from_schema_version"] == 1
    jsonschema.validate({**report, "schema_version": 2}, REPORT_SCHEMA)  # its results read in today's shape
    assert report["results"][0]["perf_model"]["name"] == "aiconfigurator:h100_sxm"  # schema 1: a string
    assert report["results"][0]["cost"]["gpu_s"] is None
    assert report["run"]["id"] == "20261127-130501-3fa2"
    assert [r["config_id"] for r in report["results"]] == ["tp2-mem0.9", "tp1-mem0.9", "tp1-mem0.95"]
    assert report["results"][0]["metrics"]["ttft_ms"]["p99"] == 610.7
    assert report["suites"]["llama8b"]["excluded"][0]["config_id"] == "tp4-dp2-mem0.9"
    assert [e["config_id"] for e in report["ranking"]] == ["tp2-mem0.9", "tp1-mem0.9"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"tool": {}, "run": {}, "results": [], "ranking": []}', "no 'schema_version' field; this is not a "
     "pytest-sglang-tune report.json (expected schema_version 2)"),
    ('{"schema_version": 3, "run": {}, "results": [], "ranking": []}',
     "schema_version 3 was written by a newer pytest-sglang-tune; this version (0.1.0) reads "
     "schema_version 1 and 2. Upgrade pytest-sglang-tune to read it."),
    ('{"schema_version": "1"}', "schema_version '1' is not valid; expected the integer 2"),
    ('{"schema_version": 1, "run": {}, "results": {}, "ranking": []}',
     "field 'results' must be a JSON array, found dict"),
    ('{"schema_version": 1, "run": {}, "results": [{"status": "ok"}], "ranking": []}',
     "results[0].status 'ok' is not valid; allowed: passed, failed"),
    ("[1, 2]", "a report.json holds a JSON object, found list"),
    ('{"schema_version": 1,\n  oops}', ":2: not valid JSON: Expecting property name"),
])
def test_load_report_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(ReportError, match=re.escape(message)) as info:
        load_report(path)
    assert str(info.value).startswith(str(path))


def test_load_report_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such report file"):
        load_report(tmp_path / "absent.json")
