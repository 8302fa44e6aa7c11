"""Wall time of a 4-config suite on the docker backend with ``-n 1`` vs ``-n 2`` (configs on disjoint GPUs).

Needs a Docker Engine and the sim test image (``.ci/setup-docker.sh``). GPUs are virtual here
(``--sglang-fake-gpus=2``, one per config), so the ratio shows what the harness itself parallelises: deploy,
readiness, load and teardown of two containers at once. Each config serves a ~5 s load point.

    python benchmarks/docker_parallel.py [--image 127.0.0.1:5000/sglang-tune-sim:latest] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """\
name: par
model: {{path: Qwen/Qwen3-8B, served_name: par}}
backends:
  docker: {{image: "{image}", needs_gpus: false}}
server:
  fixed: {{enable-metrics: true}}
  grid: {{schedule-policy: [lpm, fcfs], chunked-prefill-size: [512, 4096]}}
workloads:
  - name: chat
    scenario: D(256,128)
    num_requests: [16]
    warmup_requests: 1
    concurrency: [4]
slos: ["ttft_ms.p99 <= 5000"]
objective: {{maximize: output_throughput_per_gpu}}
"""


def run(workdir: Path, workers: int) -> float:
    cmd = [sys.executable, "-m", "pytest", "tune_par.yaml", "--backend=docker", "--sglang-fake-gpus=2",
           "-n", str(workers), "-q", "-p", "no:cacheprovider"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"pytest -n {workers} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="127.0.0.1:5000/sglang-tune-sim:latest")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sglang-tune-bench-") as tmp:
        work = Path(tmp)
        (work / "tune_par.yaml").write_text(SUITE.format(image=args.image))
        run(work, 1)  # warm-up: the image is pulled here, not in a measured run
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.repeat):
            for n in (1, 2):
                times[n].append(run(work, n))
    best = {n: min(v) for n, v in times.items()}
    out = {"configs": 4, "wall_s_n1": round(best[1], 2), "wall_s_n2": round(best[2], 2),
           "speedup_n2_over_n1": round(best[1] / best[2], 2), "repeat": args.repeat}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
