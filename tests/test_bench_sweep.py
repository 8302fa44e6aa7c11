"""``sglang-tune bench``: rate sweeps, datasets, multi-turn sessions, burstiness and several processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_loadgen_workloads import SHAREGPT, sim_url  # noqa: F401  (the module-scoped sim fixture)

from pytest_sglang_tune.bench import parse_rate_sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("spec", "rates"),
    [("10:40:10", [10, 20, 30, 40]), ("5:5:1", [5]), ("0.5:1.6:0.5", [0.5, 1.0, 1.5]), ("1:2:0.1", [
        1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0])],
)
def test_parse_rate_sweep(spec: str, rates: list[float]) -> None:
    assert parse_rate_sweep(spec) == pytest.approx(rates)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("10:40", "is not START:STOP:STEP"), ("a:b:c", "is not START:STOP:STEP"), ("0:10:5", "need START > 0"),
     ("10:5:1", "STOP >= START"), ("1:10:0", "STEP > 0"), ("1:100000:1", "at most 1000")],
)
def test_bad_rate_sweeps(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate_sweep(spec)


def bench(url: str, tmp_path: Path, *extra: str, ok: bool = True) -> tuple[dict[str, Any], str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pytest_sglang_tune.cli", "bench", "--url", url, "--model", "q",
                           "--num-requests", "6", "-o", str(out), *extra],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    if not ok:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        return {}, proc.stderr
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(out.read_text())), proc.stdout


def test_rate_sweep_with_burstiness_and_two_processes(sim_url: str, tmp_path: Path) -> None:  # noqa: F811
    report, _ = bench(sim_url, tmp_path, "--scenario", "D(50,4)", "--rate-sweep", "20:40:20", "--request-rate",
                      "80", "--burstiness", "0.5", "--procs", "2")
    assert [r["load"]["request_rate"] for r in report["results"]] == [80, 20, 40]
    for r in report["results"]:
        assert r["metrics"]["completed"] == 6 and r["metrics"]["failed"] == 0
        assert r["metrics"]["self_check"]["input_mismatches"] == 0
        assert r["workload"]["burstiness"] == 0.5 and r["workload"]["procs"] == 2
        # a simulated server names its perf model (issue 11: bench wrote perf_model null before)
        assert r["perf_model"]["name"] in ("aiconfigurator-core", "roofline") and r["perf_model"]["gpu"] == "h100_sxm"
        assert r["sim"]["physics_version"] == 2


def test_dataset_and_turns(sim_url: str, tmp_path: Path) -> None:  # noqa: F811
    report, out = bench(sim_url, tmp_path, "--dataset", SHAREGPT, "--turns", "3", "--endpoint", "chat",
                        "--concurrency", "2")
    (r,) = report["results"]
    assert "dataset sharegpt_small.json" in out
    assert r["workload"]["turns"] == 3 and r["workload"]["dataset"] == SHAREGPT
    assert r["metrics"]["completed"] == 6 and r["metrics"]["self_check"]["output_mismatches"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--rate-sweep", "1:2"), "is not START:STOP:STEP"), (("--procs", "0"), "--procs 0 must be at least 1"),
     (("--turns", "2"), "turns 2 needs endpoint 'chat'"),
     (("--dataset", SHAREGPT, "--shared-prefix", "2:8"), "cannot be combined with --dataset")],
)
def test_bad_bench_options(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    _, err = bench("http://127.0.0.1:9", tmp_path, *args, ok=False)
    assert message in err


def test_bench_against_a_sim_warns_on_flags_it_does_not_model(tmp_path: Path) -> None:
    """Issue 11 item 7: ``sglang-tune bench`` against a sim names its perf model and the flags it does not model."""
    from servers import SIM, serving

    with serving([*SIM, "--served-model-name", "q", "--schedule-policy", "dfs-weight"]) as url:
        report, out = bench(url, tmp_path, "--scenario", "D(16,4)", "--num-requests", "2")
    (r,) = report["results"]
    assert r["perf_model"]["name"] in ("aiconfigurator-core", "roofline") and r["perf_model"]["gpu"] == "h100_sxm"
    expected = "flags not modelled by the sim (accepted, no effect): schedule_policy=dfs-weight (runs as fcfs)"
    assert expected in r["warnings"]
    assert "dfs-weight" in out
