"""A local-backend launcher for tests: records the GPU environment it was given, then runs the simulated server."""

from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__":
    argv = sys.argv[1:]
    with open(os.environ["ENV_LOG"], "a") as fh:
        fh.write(json.dumps({k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")} |
                            {"tp": argv[argv.index("--tp-size") + 1] if "--tp-size" in argv else "1"}) + "\n")
    os.execv(sys.executable, [sys.executable, "-m", "pytest_sglang_tune.sim", *argv])
