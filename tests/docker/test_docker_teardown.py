"""Containers die or pytest is interrupted: points fail cleanly, configs redeploy, and no container of ours is left.

Each test runs pytest in a subprocess (signals must be real) against the real Docker Engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from dockerkit import ours, popen_pytest, results, suite_yaml, wait_for, wait_none_left

from pytest_sglang_tune.backends.docker_ops import L_GPUS, L_PID

pytestmark = pytest.mark.docker


def running(client: Any) -> list[Any]:
    """Our running server containers (not the short-lived one that asks an image for its SGLang version)."""
    return [c for c in ours(client) if c.status == "running" and "org.sglang-tune.config" in c.labels]


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


def test_container_killed_mid_point_fails_that_point_and_redeploys(tmp_path: Path, docker_client: Any,
                                                                   test_image: str) -> None:
    (tmp_path / "tune_kill.yaml").write_text(suite_yaml(grid="schedule-policy: [lpm]", concurrency="[1, 2]",
                                                        num_requests="[40, 4]", output=200))
    proc = popen_pytest(tmp_path, "tune_kill.yaml", "--backend=docker", "--tb=line", "-rA")
    try:
        (victim,) = wait_for(lambda: running(docker_client), 60, "the container to run")
        victim.reload()
        wait_for(lambda: victim.logs().count(b"Uvicorn running") and time.sleep(2.0) is None, 30,
                 "the server to start and the first point to get going")
        victim.kill()
        out = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    assert "ServerCrashed: server crashed during the point: the container exited with code 137" in out, out
    recs = {r["load"]["concurrency"]: r for r in results(tmp_path)}
    assert recs[1]["status"] == "failed" and "exited with code 137" in recs[1]["reason"]
    assert recs[2]["status"] == "passed", "the config was not redeployed for its next point"


def test_ctrl_c_mid_run_removes_the_container_and_keeps_results(tmp_path: Path, docker_client: Any,
                                                                test_image: str) -> None:
    (tmp_path / "tune_long.yaml").write_text(suite_yaml(grid="schedule-policy: [lpm]", concurrency="[1, 2]",
                                                        num_requests="[2, 60]", output=200))
    proc = popen_pytest(tmp_path, "tune_long.yaml", "--backend=docker")
    try:
        def first_result_and_running() -> bool:
            logs = list(tmp_path.glob("reports/*/results.jsonl"))
            return bool(logs and logs[0].read_text().count("\n") >= 1 and running(docker_client))
        wait_for(first_result_and_running, 90, "the first result while the server runs")
        time.sleep(1.0)  # into the second point
        proc.send_signal(signal.SIGINT)
        out = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    recs = results(tmp_path)  # every line parses
    assert recs[0]["status"] == "passed" and recs[0]["image_digest"]
    assert not wait_none_left(docker_client, timeout=5), "Ctrl-C left a container behind"


def test_sigkilled_xdist_worker_leaves_no_container(tmp_path: Path, docker_client: Any, test_image: str) -> None:
    (tmp_path / "tune_two.yaml").write_text(suite_yaml(concurrency="[1]", num_requests="[8]", output=200))
    proc = popen_pytest(tmp_path, "tune_two.yaml", "--backend=docker", "--sglang-fake-gpus=2", "-n", "2",
                        "--max-worker-restart=1")
    try:
        pair = wait_for(lambda: len(running(docker_client)) == 2 and running(docker_client), 90,
                        "two containers, one per worker")
        victim = pair[0]
        worker_pid = int(victim.labels[L_PID])
        assert worker_pid != proc.pid
        os.kill(worker_pid, signal.SIGKILL)
        # the reaper of that worker removes its container while the run goes on
        wait_for(lambda: victim.id not in {c.id for c in ours(docker_client)}, 10, "the killed worker's container "
                 "to be removed")
        out = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "crashed" in out, out
    recs = results(tmp_path)  # every line parses
    assert {r["status"] for r in recs} >= {"passed"}
    assert not wait_none_left(docker_client, timeout=5)


def test_two_workers_share_three_fake_gpus_through_leases(tmp_path: Path, docker_client: Any, test_image: str) -> None:
    (tmp_path / "tune_tp.yaml").write_text(suite_yaml(grid="tp-size: [1, 2], schedule-policy: [lpm, fcfs]",
                                                      concurrency="[2]", num_requests="[6]", output=64))
    seen: list[list[tuple[int, ...]]] = []
    stop = threading.Event()

    def sample() -> None:  # what the daemon runs, as the run goes
        while not stop.is_set():
            try:
                snap = [tuple(int(x) for x in c.labels.get(L_GPUS, "").split(",") if x)
                        for c in docker_client.containers.list(filters={"label": [L_GPUS]})]
            except Exception:
                snap = []
            seen.append(snap)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc = popen_pytest(tmp_path, "tune_tp.yaml", "--backend=docker", "--sglang-fake-gpus=3", "-n", "2")
    try:
        out = finish(proc)
    finally:
        stop.set()
        sampler.join()
    assert proc.returncode == 0, out
    recs = results(tmp_path)
    assert len(recs) == 4 and all(r["status"] == "passed" for r in recs)
    for r in recs:
        assert len(r["gpus_used"]) == r["gpus_required"] == r["server_args"]["tp-size"]
    for snap in seen:
        devices = [d for ids in snap for d in ids]
        assert len(devices) == len(set(devices)), f"a GPU was shared by two live containers: {snap}"
    assert any(len(snap) == 2 for snap in seen), "the two workers never ran configs at the same time"
