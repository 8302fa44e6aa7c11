"""benchmarks/search_efficiency.py runs end to end on one tiny suite and two seeds, and caches its grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = """
name: tiny-search
sglang_version: "0.5.5.post3"
model: {path: Qwen/Qwen3-0.6B, served_name: qwen3-0.6b}
backends: {sim: {gpu: h100_sxm}}
server:
  grid:
    max-running-requests: [2, 4, 8]
    chunked-prefill-size: [256, 4096]
    tp-size: [1, 2]
workloads:
  - name: chat
    scenario: D(200,16)
    endpoint: completions
    num_requests: 12
    warmup_requests: 0
    concurrency: [8]
slos: ["ttft_ms.p99 <= 60000"]
objective: {maximize: output_throughput_per_gpu}
"""


def run(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_efficiency.py"), "--suites",
                           str(tmp_path / "tune_tiny.yaml"), "--seeds", "2", "--jobs", "1", "--cache-dir",
                           str(tmp_path / "cache"), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    return proc, json.loads(out.read_text())


def test_benchmark_runs_every_strategy_and_caches_the_grid(tmp_path: Path) -> None:
    (tmp_path / "tune_tiny.yaml").write_text(TINY)
    first, data = run(tmp_path)
    assert first.returncode in (0, 1), first.stderr
    assert "predicted in" in first.stdout
    entry = data["suites"]["tiny-search"]
    assert set(entry["strategies"]) == {"grid", "random", "tpe", "halving", "predicted"}
    for s in entry["strategies"].values():
        assert s["seeds"] == 2
        assert 0.0 <= s["final_within"] <= 1.0
        assert s["median"] > 0  # a GPU share (inf when never within 2 %)
    assert -1.0 <= entry["spearman"] <= 1.0
    assert any(t["target"].startswith("whole benchmark under 10 minutes") and t["met"] for t in data["targets"])
    assert len(list((tmp_path / "cache").glob("tune_tiny-*.json"))) == 1
    second, again = run(tmp_path)
    assert "cached" in second.stdout
    assert again["suites"] == data["suites"]  # same seeds, same cached grid: the same figures
