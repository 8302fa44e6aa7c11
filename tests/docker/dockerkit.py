"""Helpers of the Docker tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pytest_sglang_tune.backends.docker_ops import LABEL, split_image

IMAGE = os.environ.get("SGLANG_TUNE_TEST_IMAGE", "127.0.0.1:5000/sglang-tune-sim:latest")


def registry_digest(image: str = IMAGE) -> str | None:
    """The digest the registry serves for ``image`` (``Docker-Content-Digest``), or None."""
    repo, tag = split_image(image)
    host, _, name = repo.partition("/")
    req = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return str(r.headers.get("Docker-Content-Digest"))
    except Exception:
        return None


def ours(client: Any) -> list[Any]:
    """Our containers, any state (listed low-level: the high-level list fails on one removed meanwhile)."""
    found = []
    for c in client.api.containers(all=True, filters={"label": [LABEL]}):
        try:
            found.append(client.containers.get(c["Id"]))
        except Exception:  # removed between the listing and the inspection
            pass
    return found


def wait_none_left(client: Any, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = ours(client)
        if not left or time.monotonic() > deadline:
            return [f"{c.name} ({c.status})" for c in left]
        time.sleep(0.2)


def suite_yaml(*, image: str = IMAGE, needs_gpus: bool | None = False, grid: str = "schedule-policy: [lpm, fcfs]",
               concurrency: str = "[2]", num_requests: str = "[4]", output: int = 16, model: str = "Qwen/Qwen3-8B",
               name: str = "dk") -> str:
    return f"""\
name: {name}
model: {{path: {model}, served_name: {name}}}
backends:
  docker: {{image: "{image}"{"" if needs_gpus is None else f", needs_gpus: {str(needs_gpus).lower()}"}}}
server:
  fixed: {{enable-metrics: true}}
  grid: {{{grid}}}
workloads:
  - name: chat
    scenario: D(64,{output})
    num_requests: {num_requests}
    warmup_requests: 1
    concurrency: {concurrency}
slos: ["ttft_ms.p99 <= 5000"]
objective: {{maximize: output_throughput_per_gpu}}
"""


def results(root: Path) -> list[dict[str, Any]]:
    """Every line of the run's results.jsonl, parsed (a torn line fails the test)."""
    (log,) = root.glob("reports/*/results.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


def popen_pytest(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
