"""Release diff on constructed reports: matching, thresholds, best-config changes, refusal, exit codes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.cli import main
from pytest_sglang_tune.diff import IncomparableReports, diff_reports, parse_threshold
from pytest_sglang_tune.errors import GrammarError
from pytest_sglang_tune.report.store import build_report


def result(cfg: str, thr: float, ttft: float, *, status: str = "passed", gpu: str = "h100_sxm",
           content: str = "abc") -> dict[str, Any]:
    return {"test_id": f"t[{cfg}]", "suite": "s", "workload": {"name": "chat", "content_hash": content},
            "config_id": cfg, "server_args": {}, "load": {"concurrency": 8, "request_rate": None},
            "status": status, "reason": None if status == "passed" else "boom", "model": "Qwen/Qwen3-8B",
            "perf_model": "roofline", "sim": {"gpu": gpu}, "slo_pass": True,
            "metrics": {"output_throughput": thr, "output_throughput_per_gpu": thr, "goodput": 1.0,
                        "error_rate": 0.0, "ttft_ms": {"mean": ttft, "p50": ttft, "p90": ttft, "p95": ttft,
                                                       "p99": ttft},
                        "itl_ms": None, "tpot_ms": None, "e2e_ms": None, "input_throughput": 1.0,
                        "request_throughput": 1.0, "completed": 10, "failed": 0} if status == "passed" else None}


def report(*results: dict[str, Any]) -> dict[str, Any]:
    run = {"id": "r", "backend": "sim", "gpus": 8, "argv": [], "started_at": "", "finished_at": ""}
    return build_report(run=run, results=list(results),
                        suites={"s": {"objective": "maximize: output_throughput", "slos": []}})


OLD = report(result("a~1", 1000, 100), result("b~2", 900, 80), result("c~3", 800, 50))


@pytest.mark.parametrize(
    ("text", "old", "new", "crossed"),
    [
        ("output_throughput:-5%", 100, 94, True),
        ("output_throughput:-5%", 100, 96, False),
        ("output_throughput:-5%", 100, 150, False),
        ("ttft_ms.p99:+10%", 100, 111, True),
        ("ttft_ms.p99:+10%", 100, 109, False),
        ("ttft_ms.p99:+10%", 100, 50, False),
    ],
)
def test_thresholds(text: str, old: float, new: float, crossed: bool) -> None:
    assert parse_threshold(text).crossed(old, new) is crossed


@pytest.mark.parametrize("bad", ["output_throughput-5%", "output_throughput:5%", "latency:-5%", "ttft_ms.p42:+1%"])
def test_bad_thresholds(bad: str) -> None:
    with pytest.raises(GrammarError):
        parse_threshold(bad)


def test_regression_best_change_appear_disappear_fail() -> None:
    new = report(result("a~1", 850, 100), result("b~2", 950, 80), result("c~3", 800, 50, status="error"),
                 result("d~4", 10, 10))
    res = diff_reports(OLD, new, thresholds=[parse_threshold("output_throughput:-5%")])
    assert res.matched == 2  # c lost its metrics, d is new
    assert [r.split(":")[0] for r in res.regressions] == ["s/chat@c8 a~1"]
    assert "-15.0%" in res.regressions[0]
    assert res.best_changed == ["s/chat@c8: a~1 → b~2"]
    assert res.appeared == ["s/chat@c8 d~4"] and res.disappeared == []
    assert res.started_failing == ["s/chat@c8 c~3: error (boom)"]
    sig = {(c.label.split()[-1], c.metric) for c in res.changes if c.significant}
    assert ("a~1", "output_throughput") in sig and ("b~2", "output_throughput") in sig


def test_fail_on_best_checks_only_the_best_config() -> None:
    new = report(result("a~1", 850, 100), result("b~2", 950, 80), result("c~3", 800, 50))
    t = [parse_threshold("output_throughput:-5%")]
    assert diff_reports(OLD, new, thresholds=t).failed
    assert not diff_reports(OLD, new, thresholds=t, fail_on_best=True).failed  # b (the new best) improved


def test_confidence_intervals_decide_significance() -> None:
    o, n = copy.deepcopy(OLD), report(result("a~1", 1100, 100), result("b~2", 900, 80), result("c~3", 800, 50))
    o["results"][0]["confidence"] = {"output_throughput": [900, 1200]}
    n["results"][0]["confidence"] = {"output_throughput": [1000, 1250]}
    (ch,) = [c for c in diff_reports(o, n).changes if c.label.endswith("a~1") and c.metric == "output_throughput"]
    assert ch.percent == pytest.approx(10.0) and ch.significant is False  # overlapping intervals


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpu": "h200_sxm"}, "GPU type differs: h100_sxm → h200_sxm"),
        ({"content": "zzz"}, "workload content differs for s/chat"),
    ],
)
def test_refuses_different_setups(change: dict[str, str], message: str) -> None:
    new = report(result("a~1", 1000, 100, **change))
    with pytest.raises(IncomparableReports, match=message):
        diff_reports(OLD, new)
    res = diff_reports(OLD, new, allow_different=True)
    assert any(message in w for w in res.warnings)


def test_refuses_a_sim_report_from_before_the_physics_version() -> None:
    """Issue 11: reports from before the physics bump (their sim block has no ``physics_version``: physics 1)
    are not compared with physics-2 reports as if the server were the same."""
    new = report(result("a~1", 1000, 100))
    new["results"][0]["sim"]["physics_version"] = 2
    with pytest.raises(IncomparableReports, match="sim physics version differs: 1 → 2"):
        diff_reports(OLD, new)
    assert diff_reports(new, new).matched == 1


def trace_level(cfg: str, time_scale: float, rate: float, content: str) -> dict[str, Any]:
    r = result(cfg, 1000, 100, content=content)
    r["load"] = {"concurrency": None, "request_rate": rate, "time_scale": time_scale}
    return r


def test_trace_levels_each_have_their_content_hash_and_an_edited_trace_is_refused() -> None:
    # the content hash covers time_scale, so each level of a trace workload has its own: comparable with itself
    levels = report(trace_level("a~1", 1.0, 3.9, "h1"), trace_level("a~1", 0.5, 7.8, "h05"))
    assert diff_reports(levels, levels).changes
    # the same levels of an edited trace (another hash, another mean rate): refused
    edited = report(trace_level("a~1", 1.0, 4.1, "e1"), trace_level("a~1", 0.5, 8.2, "e05"))
    with pytest.raises(IncomparableReports, match="workload content differs for s/chat"):
        diff_reports(levels, edited)


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new, other = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "other.json"
    old.write_text(json.dumps(OLD))
    new.write_text(json.dumps(report(result("a~1", 850, 100), result("b~2", 950, 80), result("c~3", 800, 50))))
    other.write_text(json.dumps(report(result("a~1", 850, 100, gpu="h200_sxm"))))
    assert main(["diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "THE BEST CONFIG CHANGED:" in out and "a~1 → b~2" in out
    assert main(["diff", str(old), str(new), "--fail-on", "output_throughput:-5%",
                 "--html", str(tmp_path / "d.html")]) == 1
    assert "REGRESSIONS (1):" in capsys.readouterr().out
    assert "a~1" in (tmp_path / "d.html").read_text()
    assert main(["diff", str(old), str(other)]) == 3
    assert "not comparable: GPU type differs" in capsys.readouterr().err
    assert main(["diff", str(old), str(new), "--fail-on", "oops"]) == 2


def test_a_search_report_matches_only_its_full_measurements_and_says_how_many_were_left() -> None:
    """A halving run measured config a in full and screened b and c at low fidelity (fewer requests: another
    content hash): the diff against a grid run matches a only, says two were left unmatched, and does not call
    the screening points' other content hash a different workload."""
    low = [{**result(c, thr * 0.9, 60, content="low"), "fidelity": "low"} for c, thr in (("b~2", 900), ("c~3", 800))]
    search = report(result("a~1", 1000, 100), *low)
    out = diff_reports(OLD, search)
    assert out.matched == 1 and out.unmatched == 2
    assert not any("content differs" in w for w in out.warnings)
    probe = report(result("a~1", 1000, 100), {**result("b~2", 5000, 60, content="abc"), "fidelity": "probe"})
    assert diff_reports(OLD, probe).matched == 1  # a load search's probe never stands for a full measurement
