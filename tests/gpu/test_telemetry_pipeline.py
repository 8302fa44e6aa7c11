"""GPU telemetry end to end through the seam: a local-backend run on fake GPUs (a fake NVML whose series move
over time) records each point's telemetry in its result, and report.html shows it beside SGLang's /metrics."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gpukit import uuid_of

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow
LAUNCHER = Path(__file__).with_name("envlauncher.py")

SUITE = f"""\
model: {{path: Qwen/Qwen3-8B, served_name: telemetry}}
backends:
  local: {{launcher: "{sys.executable} {LAUNCHER}", needs_gpus: true}}
server:
  fixed: {{enable-metrics: true}}
workloads:
  - name: chat
    scenario: D(64,256)
    num_requests: 6
    warmup_requests: 0
    concurrency: 2
"""


def test_a_point_on_visible_gpus_carries_its_telemetry(pytester: pytest.Pytester, gpu_host: Callable[..., Any],
                                                        fake_nvml: None, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_host(2, series={0: {"util": [20, 60, 100, 80], "power_w": [200.0, 400.0, 650.0, 500.0],
                            "reasons": [0, 0, 0x20, 0]}})
    monkeypatch.setenv("ENV_LOG", str(pytester.path / "env.jsonl"))
    pytester.makefile(".yaml", tune_tel=SUITE)
    result = pytester.runpytest_subprocess("--backend=local", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    (rep,) = pytester.path.glob("reports/*/report.json")
    (res,) = json.loads(rep.read_text())["results"]
    tel = res["telemetry"]
    assert tel["source"] == "nvml" and tel["samples"] >= 3  # the point takes seconds; sampled at 2 Hz
    (gpu,) = tel["gpus"]
    assert gpu["uuid"] == uuid_of(0) and gpu["name"] == "NVIDIA H200"
    assert 20 <= gpu["util_pct"]["mean"] < gpu["util_pct"]["max"] <= 100   # the series moved during the point
    # every fourth sample carries NVML's 0x20 (software thermal slowdown): a warning of the point
    assert "sw_thermal_slowdown" in gpu["throttle"]
    assert any("thermal" in w for w in res["warnings"])
    html = (rep.parent / "report.html").read_text()
    assert 'data-chart="gpu-telemetry"' in html and f'data-gpu="{uuid_of(0)}"' in html
    assert "KV cache used % (mean / max)" in html  # beside SGLang's own /metrics
