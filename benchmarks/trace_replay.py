"""Trace replay against the simulated server: on schedule, and with the cache hits the trace's hash_ids imply.

Runs ``sglang-tune bench --trace`` (the CLI, in a subprocess, exactly as a user would) against
``python -m pytest_sglang_tune.sim`` (Qwen3-8B on one simulated H100) and checks issue #14's targets:

* **schedule**: the achieved send rate within 1 % of the trace's, and the send lag (sent − scheduled) p99 at
  most 5 ms, for the Mooncake-style sample and the Azure-style sample;
* **cache**: the prompt-cache hit fraction the server reports (``meta_info.cached_tokens`` on ``/generate``)
  within ±10 % (relative) of the one the trace's ``hash_ids`` imply for an unbounded cache, and about 0
  (below 0.01) when every hash id is made unique (the same lengths and times: ``loadgen.trace.uniquified``).

    python benchmarks/trace_replay.py                      # ~5 min on 2 cores; exit 0 = every target met
    python benchmarks/trace_replay.py --mooncake-requests 200 --control-requests 60 --azure-requests 200

The client and the server share this machine (and, here, two cores with other work). As in
``loadgen_accuracy.py``, the server is pinned to CPU 0 and the client to CPU 1, and the client runs SCHED_FIFO
(``chrt -f 10``, when allowed; ``--no-rt`` turns it off) so that other processes on the machine cannot delay its
sends; the server keeps normal priority. The send lag is the client's, against its own clock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pytest_sglang_tune.backends.base import Endpoint  # noqa: E402
from pytest_sglang_tune.backends.local import LocalBackend, LocalDeployment, free_port  # noqa: E402
from pytest_sglang_tune.loadgen.trace import load_trace, uniquified  # noqa: E402
from pytest_sglang_tune.readiness import wait_ready  # noqa: E402

MODEL = "Qwen/Qwen3-8B"
TRACES = REPO / "fixtures" / "traces"
RATE_TOLERANCE = 0.01
LAG_P99_MS = 5.0
HIT_TOLERANCE = 0.10
CONTROL_MAX_HIT = 0.01


def pinned(cpu: str, *, rt: bool) -> list[str]:
    """``taskset -c cpu`` on 2+ cores, and ``chrt -f 10`` (SCHED_FIFO) when ``rt`` and allowed."""
    cmd = ["taskset", "-c", cpu] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []
    allowed = shutil.which("chrt") and subprocess.run(["chrt", "-f", "10", "true"], capture_output=True).returncode == 0
    if rt and allowed:
        cmd = ["chrt", "-f", "10", *cmd]
    return cmd


@contextlib.contextmanager
def sim_server(log: Path) -> Iterator[str]:
    """The simulated server on a free port, started and stopped the way the local backend does it (its log in
    ``log``); yields its base URL once it is ready."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [*pinned("0", rt=False), sys.executable, "-m", "pytest_sglang_tune.sim", "--model-path", MODEL,
           "--port", str(port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    deployment = LocalDeployment(proc, Endpoint(f"http://127.0.0.1:{port}", MODEL), cmd, log, {}, [])
    try:
        wait_ready(deployment, timeout=120)
        yield deployment.endpoint.base_url
    finally:
        LocalBackend(gpus=None).stop(deployment)


def bench(url: str, trace: Path, requests: int, out: Path, *, rt: bool) -> dict[str, Any]:
    """``sglang-tune bench --trace`` on /generate; the one result of its report."""
    cmd = [*pinned("1", rt=rt), sys.executable, "-m", "pytest_sglang_tune.cli", "bench", "--url", url, "--model",
           "qwen3-8b", "--endpoint", "generate", "--trace", str(trace), "--max-requests", str(requests), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    print(proc.stdout.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"sglang-tune bench failed ({proc.returncode}): {proc.stderr[-2000:]}")
    (result,) = json.loads(out.read_text())["results"]
    return dict(result)


def write_unique(src: Path, dst: Path) -> Path:
    """``src`` with every hash id unique (same lengths, same times)."""
    reqs = uniquified(load_trace(src).requests)
    dst.write_text("".join(json.dumps({"timestamp": round(r.offset_s * 1000, 3), "input_length": r.input_len,
                                       "output_length": r.output_len, "hash_ids": list(r.hash_ids or ())}) + "\n"
                           for r in reqs))
    return dst


def check(name: str, result: dict[str, Any], *, cache: str | None) -> list[tuple[str, str, bool]]:
    """(target, measured, met) rows for one run."""
    r = result["replay"]
    lag = r["send_lag_ms"]
    rows = [(f"{name}: achieved rate within {RATE_TOLERANCE:.0%} of the trace's",
             f"{r['achieved_rate']:.4f} vs {r['scheduled_rate']:.4f} req/s ({r['rate_error']:+.3%})",
             abs(r["rate_error"]) <= RATE_TOLERANCE),
            (f"{name}: send lag p99 <= {LAG_P99_MS:g} ms",
             f"p50 {lag['p50']:.2f}, p99 {lag['p99']:.2f}, max {lag['max']:.2f} ms", lag["p99"] <= LAG_P99_MS)]
    hit, implied = r["cache_hit_fraction"], r["implied_cache_hit_fraction"]
    if cache == "implied":
        rows.append((f"{name}: cache hit within ±{HIT_TOLERANCE:.0%} of the implied",
                     f"{hit:.4f} vs implied {implied:.4f} ({hit / implied - 1:+.2%})",
                     abs(hit / implied - 1) <= HIT_TOLERANCE))
    elif cache == "zero":
        rows.append((f"{name}: cache hit about 0 (< {CONTROL_MAX_HIT})", f"{hit:.5f} (implied {implied:.4f})",
                     hit < CONTROL_MAX_HIT))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mooncake-requests", type=int, default=600, help="of mooncake_sample.jsonl (600: all)")
    ap.add_argument("--control-requests", type=int, default=150, help="of its unique-ids copy")
    ap.add_argument("--azure-requests", type=int, default=300, help="of azure_conv_sample.csv")
    ap.add_argument("--no-rt", action="store_true", help="run the client at normal priority (no chrt)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    rows: list[tuple[str, str, bool]] = []
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        with sim_server(tmp / "sim.log") as url:
            runs = [("mooncake", TRACES / "mooncake_sample.jsonl", args.mooncake_requests, "implied"),
                    ("mooncake, unique ids", write_unique(TRACES / "mooncake_sample.jsonl", tmp / "unique.jsonl"),
                     args.control_requests, "zero"),
                    ("azure", TRACES / "azure_conv_sample.csv", args.azure_requests, None)]
            for name, trace, n, cache in runs:
                res = bench(url, trace, n, tmp / "bench.json", rt=not args.no_rt)
                results[name] = {"replay": res["replay"], "trace": res["workload"]["trace"],
                                 "ttft_ms": res["metrics"]["ttft_ms"], "completed": res["metrics"]["completed"]}
                rows += check(name, res, cache=cache)
    print("\n| target | measured | met |\n|---|---|---|")
    for target, measured, met in rows:
        print(f"| {target} | {measured} | {'yes' if met else '**no**'} |")
    if args.out:
        args.out.write_text(json.dumps({"results": results, "targets": rows}, indent=2))
    return 0 if all(met for *_, met in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
