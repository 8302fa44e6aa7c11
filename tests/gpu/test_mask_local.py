"""Issue 14 done-when (local backend): with CUDA_VISIBLE_DEVICES=3,5 on a host whose NVML (fake) reports 8 GPUs,
a ``-n 2`` run leases only devices 3 and 5, and each server gets them by UUID in its environment."""

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


def local_suite(grid: str) -> str:
    return f"""\
model: {{path: Qwen/Qwen3-8B, served_name: masked}}
backends:
  local: {{launcher: "{sys.executable} {LAUNCHER}", needs_gpus: true}}
server:
  grid: {{{grid}}}
workloads:
  - name: chat
    scenario: D(32,8)
    num_requests: 2
    warmup_requests: 0
    concurrency: 1
objective: {{maximize: output_throughput_per_gpu}}
"""


@pytest.mark.parametrize("inventory", ["fake_nvml", "fake_smi"])
def test_xdist_run_leases_only_the_masked_gpus_by_uuid(pytester: pytest.Pytester, gpu_host: Callable[..., Any],
                                                       monkeypatch: pytest.MonkeyPatch, inventory: str,
                                                       request: pytest.FixtureRequest) -> None:
    gpu_host(8)
    request.getfixturevalue(inventory)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    log = pytester.path / "env.jsonl"
    monkeypatch.setenv("ENV_LOG", str(log))
    pytester.makefile(".yaml", tune_mask=local_suite("tp-size: [1, 2], schedule-policy: [lpm, fcfs]"))
    result = pytester.runpytest_subprocess("--backend=local", "-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(seen) == 4
    allowed = {uuid_of(3), uuid_of(5)}
    for env in seen:
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        ids = env["CUDA_VISIBLE_DEVICES"].split(",")
        assert set(ids) <= allowed and len(ids) == int(env["tp"])
        if env["tp"] == "2":
            assert ids == [uuid_of(3), uuid_of(5)]  # the mask's order
    (rep,) = pytester.path.glob("reports/*/report.json")
    results = json.loads(rep.read_text())["results"]
    assert {u for r in results for u in r["gpus_used"]} == allowed


def test_gpus_larger_than_the_mask_stops_the_run_before_workers_start(
        pytester: pytest.Pytester, gpu_host: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
        fake_nvml: None) -> None:
    gpu_host(8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    pytester.makefile(".yaml", tune_mask=local_suite("schedule-policy: [lpm]"))
    result = pytester.runpytest_subprocess("--backend=local", "--gpus=4", "-n", "2", "-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["ERROR: --gpus=4 but CUDA_VISIBLE_DEVICES=3,5 allows 2 GPU(s) (NVML reports 8 "
                                 "GPU(s) on this host); lower --gpus to at most 2 or widen the mask"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
