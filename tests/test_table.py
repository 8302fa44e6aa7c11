"""load_results (a DataFrame) and ``sglang-tune table`` on a shipped suites' report, a run dir and results.jsonl."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

import pytest_sglang_tune
from pytest_sglang_tune.cli import main
from pytest_sglang_tune.report.store import ResultsLog, load_report

SHIPPED = Path(__file__).parent / "fixtures" / "report_shipped_pre_result_model.json"  # suites/ on the sim


def test_one_row_per_result_with_flags_metrics_and_ranks() -> None:
    report = load_report(SHIPPED)
    df = pytest_sglang_tune.load_results(SHIPPED)
    assert len(df) == len(report["results"])
    ranked = {(e["suite"], e["workload"], e["load"]["concurrency"], e["config_id"]): e["rank"]
              for e in report["ranking"]}
    for (_, row), res in zip(df.iterrows(), report["results"], strict=True):
        assert row["config_id"] == res["config_id"] and row["workload"] == res["workload"]["name"]
        assert row["ttft_ms.p99"] == res["metrics"]["ttft_ms"]["p99"]
        assert row["output_throughput"] == res["metrics"]["output_throughput"]
        for flag, value in res["server_args"].items():
            assert row["--" + flag] == value
        assert row["rank"] == ranked[(res["suite"], res["workload"]["name"], res["load"]["concurrency"],
                                      res["config_id"])]
        assert row["load"] == f"c{res['load']['concurrency']}"
    assert set(df["suite"]) == {"qwen8b-chat", "qwen8b-shared-prefix"}
    assert df.loc[df["suite"] == "qwen8b-chat", "--max-running-requests"].isna().all()  # not a flag of that suite


def test_run_dir_and_results_jsonl_read_the_same_rows(tmp_path: Path) -> None:
    report = load_report(SHIPPED)
    log = ResultsLog(tmp_path / "results.jsonl")
    for r in report["results"]:
        log.append(r)
    from_dir = pytest_sglang_tune.load_results(tmp_path)  # no report.json there: its results.jsonl
    from_report = pytest_sglang_tune.load_results(SHIPPED)
    assert from_dir["rank"].isna().all()  # results.jsonl carries no ranking
    cols = ["config_id", "status", "--schedule-policy", "ttft_ms.p99", "goodput"]
    pd.testing.assert_frame_equal(from_dir[cols], from_report[cols])


def test_unreadable_inputs_name_what_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(tmp_path)]) == 1
    assert f"{tmp_path}: neither report.json nor results.jsonl there" in capsys.readouterr().err
    assert main(["table", str(SHIPPED), "--metric", "ttft_ms.p42"]) == 2
    assert "unknown stat 'p42'" in capsys.readouterr().err
    assert main(["table", str(SHIPPED), "--metric", "cost_per_mtok", "--metric", "max_load"]) == 1
    err = capsys.readouterr().err
    assert "no metric 'max_load' in these results" in err and "ttft_ms.p99" in err


def test_csv_round_trips_and_keeps_every_column(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(SHIPPED), "--csv"]) == 0
    back = pd.read_csv(io.StringIO(capsys.readouterr().out))
    df = pytest_sglang_tune.load_results(SHIPPED)
    assert list(back.columns) == list(df.columns)
    assert back["ttft_ms.p99"].tolist() == pytest.approx(df["ttft_ms.p99"].tolist())


def test_text_and_markdown_show_key_metrics_and_the_varying_flags(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(SHIPPED), "--metric", "ttft_ms.p99", "--metric", "goodput"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["suite", "workload", "load", "display_id", "status", "slo_pass", "rank",
                              "--chunked-prefill-size", "--mem-fraction-static", "--schedule-policy",
                              "--max-running-requests", "ttft_ms.p99", "goodput"]  # --stream-interval is fixed
    assert len(rows) == len(load_report(SHIPPED)["results"])
    out = tmp_path / "t.md"
    assert main(["table", str(SHIPPED), "--markdown", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| suite | workload | load |") and lines[1].startswith("| --- | --- | --- |")
    best = load_report(SHIPPED)["results"]
    first = min((r for r in best if r["load"]["concurrency"] == 1 and r["suite"] == "qwen8b-chat"),
                key=lambda r: -r["metrics"]["output_throughput_per_gpu"])
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[3] == first["display_id"] and cells[6] == "1"
    assert math.isclose(float(cells[-1]), first["metrics"]["error_rate"])


def test_load_results_is_lazy_about_pandas() -> None:
    import subprocess
    import sys

    code = ("import sys, pytest_sglang_tune, pytest_sglang_tune.plugin, pytest_sglang_tune.cli; "
            "print(json.dumps('pandas' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
