"""Start a real server process on a free loopback port for a test, and stop it afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from pytest_sglang_tune.backends.local import free_port

SIM = [sys.executable, "-m", "pytest_sglang_tune.sim", "--model-path", "Qwen/Qwen3-8B"]


@contextmanager
def serving(cmd: list[str], *, timeout: float = 60.0) -> Iterator[str]:
    """Run ``cmd --port <free port>`` until its ``/health`` answers 200; yield its base URL."""
    port = free_port()
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{cmd} exited with {proc.returncode}"
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, f"{cmd} not ready within {timeout:.0f} s"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
