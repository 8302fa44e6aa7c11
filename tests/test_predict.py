"""``sglang-tune predict``: the suite's points on the sim's virtual clock agree with the sim server run over HTTP
(one engine, one physics), infeasible configs are named, the CLI prints the ranking and the grid's GPU-hours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.cli import main
from pytest_sglang_tune.predict.grid import predict_suite
from pytest_sglang_tune.suite import load_suite

pytest_plugins = ["pytester"]

SUITE = """\
model: {path: Qwen/Qwen3-8B, served_name: predicted}
backends:
  sim: {gpu: h100_sxm}
server:
  fixed: {enable-metrics: true}
  grid:
    chunked-prefill-size: [512, 4096]
workloads:
  - name: chat
    scenario: D(1024,64)
    endpoint: completions
    num_requests: [8, 24]
    warmup_requests: 1
    concurrency: [1, 8]
slos: ["ttft_ms.p99 <= 2000"]
objective: {maximize: output_throughput_per_gpu}
"""


def _metrics(result: Any) -> dict[str, float]:
    m = result["metrics"] if isinstance(result, dict) else dict(result.metrics)
    return {"thr": m["output_throughput"], "ttft": m["ttft_ms"]["p50"], "tpot": m["tpot_ms"]["p50"],
            "e2e": m["e2e_ms"]["p50"]}


@pytest.mark.slow
def test_prediction_agrees_with_a_sim_run_of_the_same_points(pytester: pytest.Pytester) -> None:
    path = pytester.makefile(".yaml", tune_pred=SUITE)
    prediction = predict_suite(load_suite(path), jobs=1)
    predicted = {(r.point.config_id, r.point.concurrency): _metrics(r) for r in prediction.results}
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    (rep,) = pytester.path.glob("reports/*/report.json")
    measured = {(r["config_id"], r["load"]["concurrency"]): _metrics(r) for r in json.loads(rep.read_text())["results"]}
    assert measured.keys() == predicted.keys()
    for key, m in measured.items():
        p = predicted[key]
        # the sim server runs on wall time over HTTP: its own noise is the client and event-loop time (a few ms)
        assert p["thr"] == pytest.approx(m["thr"], rel=0.10), key
        assert p["tpot"] == pytest.approx(m["tpot"], rel=0.10, abs=0.5), key
        assert p["ttft"] == pytest.approx(m["ttft"], rel=0.20, abs=5.0), key
        assert p["e2e"] == pytest.approx(m["e2e"], rel=0.10, abs=5.0), key


def test_infeasible_configs_and_costs(tmp_path: Path) -> None:
    text = SUITE.replace("chunked-prefill-size: [512, 4096]", "mem-fraction-static: [0.05, 0.85]")
    path = tmp_path / "tune_x.yaml"
    path.write_text(text)
    prediction = predict_suite(load_suite(path), jobs=1)
    bad, good = sorted(prediction.configs, key=lambda c: c.config.config_id)
    assert bad.infeasible and "mem" in bad.infeasible.lower() and bad.gpu_s == 0
    assert {r.status for r in bad.results} == {"infeasible"}
    assert good.infeasible is None and good.deploy_s > 30 and good.gpu_s > good.deploy_s
    assert all(r.fidelity == "predicted" and r.cost.measure_s and r.cost.measure_s > 0 for r in good.results)
    assert prediction.grid_gpu_s == pytest.approx(good.gpu_s)
    assert [e["config_id"] for e in prediction.ranking()] == [good.config.config_id] * 2


def test_cli_prints_ranking_infeasible_and_gpu_hours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tune_x.yaml"
    path.write_text(SUITE.replace("chunked-prefill-size: [512, 4096]", "mem-fraction-static: [0.05, 0.85]"))
    out_json = tmp_path / "p.json"
    assert main(["predict", str(path), "--top", "1", "--json", str(out_json), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "sglang-tune predict x on h100_sxm (virtual clock" in out and "chat @ c1" in out and "chat @ c8" in out
    assert "infeasible: mem0.05:" in out
    assert "measuring the whole grid for real would take ~" in out and "GPU-h on h100_sxm" in out
    data = json.loads(out_json.read_text())
    assert data["gpu"] == "h100_sxm" and len(data["results"]) == 4 and data["grid_gpu_hours"] > 0


def test_cli_names_the_gpus_it_knows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tune_x.yaml"
    path.write_text(SUITE)
    assert main(["predict", str(path), "--gpu", "h800"]) == 2
    err = capsys.readouterr().err
    assert "--gpu='h800' is not a GPU the sim knows; choose one of: a100_sxm, h100_sxm, h200_sxm" in err
