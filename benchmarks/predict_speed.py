"""How long ``sglang-tune predict`` takes on a 200-config × 3-load suite (issue 12: under 60 s on a 2-core machine).

    python benchmarks/predict_speed.py                       # benchmarks/suites/tune_bench_chat.yaml, every core
    python benchmarks/predict_speed.py --jobs 1 --configs 20  # a slice, one process

Prints the suite's size (configs, points, requests per point), the wall time, seconds per point, and the target
met or missed (exit 1 when missed). ``--out`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SUITE = HERE / "suites" / "tune_bench_chat.yaml"
TARGET_S = 60.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    ap.add_argument("--configs", type=int, default=None, help="only the first N configs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from pytest_sglang_tune.predict.grid import predict_suite
    from pytest_sglang_tune.space import expand
    from pytest_sglang_tune.suite import load_suite

    suite = load_suite(args.suite)
    configs = list(expand(suite).configs)[: args.configs]
    started = time.perf_counter()
    prediction = predict_suite(suite, configs=configs, jobs=args.jobs)
    wall = time.perf_counter() - started
    points = len(prediction.results)
    requests = [(w.name, ld.label(), w.at_load(i).num_requests) for w in suite.workloads
                for i, ld in enumerate(w.loads)]
    jobs = max(1, min(args.jobs or (os.cpu_count() or 1), len(configs)))
    figures = {"suite": str(args.suite.name), "configs": len(configs), "points": points,
               "requests_per_point": [f"{w}@{lb}: {n}" for w, lb, n in requests], "jobs": jobs,
               "cpus": os.cpu_count(), "wall_s": round(wall, 2), "s_per_point": round(wall / max(points, 1), 4),
               "target_s": TARGET_S}
    print(f"predict {args.suite.name}: {len(configs)} configs x {len(suite.workloads[0].loads)} loads = {points} "
          f"points ({', '.join(figures['requests_per_point'])} requests), {jobs} process(es) on {os.cpu_count()} "
          f"cores: {wall:.1f} s ({wall / max(points, 1):.3f} s per point)")
    full = len(configs) >= 200 and points >= 600
    met = wall < TARGET_S
    verdict = "met" if met else "MISSED"
    scope = "" if full else " (a slice: the target is for the full 200 x 3 suite)"
    print(f"target: 200 configs x 3 loads in < {TARGET_S:.0f} s: {verdict} ({wall:.1f} s){scope}")
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({**figures, "met": met}, indent=2))
        tmp.replace(args.out)
    return 0 if met or not full else 1


if __name__ == "__main__":
    sys.exit(main())
