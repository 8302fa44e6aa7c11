"""Compare the simulated SGLang server with published SGLang measurements of Llama-3.1-8B on one H100.

The published numbers and their setups live in ``published_sglang_llama8b_h100.json`` next to this file.
Each setup is replayed on the simulator with the same flags, dataset size, arrival process and token totals:

* ``sglang-issue-1268`` (300 ShareGPT prompts, Poisson 1 req/s, prefix cache off: about one request in flight)
  runs on the **real HTTP server** (``python -m pytest_sglang_tune.sim``), measured by the project's own
  streaming client, so the per-token latency includes what a client sees. By default only the first
  ``--latency-prompts`` (60) requests of the 300 are sent, to keep the run to about a minute of wall time; the
  full trace also runs on the virtual clock (next point) for comparison.
* ``sglang-pr-1738`` (3000 ShareGPT prompts at once, prefix cache off) runs on the simulator's **virtual
  clock** (``sim.virtual.run_open_loop``): the same scheduler core without HTTP, so the 2-core machine running
  this script is not what limits a 10k tokens/s server. It is repeated for ``--seeds`` length samples and the
  mean is compared.

ShareGPT itself is not available offline. Its lengths are replaced by a seeded log-normal sample, filtered
as SGLang's ShareGPT sampler filters (prompt and output at least 4 tokens, prompt at most 1024, sum at most
2048), and scaled until its token totals match the published ones within 0.3 %. ``--shapes`` repeats the
throughput point with narrower and wider length distributions of the same totals, to show how much the shape
matters.

Gated ratios (the ones the 0.67-1.5 band applies to) are the per-token latency at about one request in flight
and the offline output throughput. The other rows are reported for information. Exit code 0 when every gated
ratio is inside the band, 1 otherwise (2 on a setup error).

    python benchmarks/sim_vs_published.py [--out results.json] [--latency-prompts 300] [--shapes]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from pytest_sglang_tune.backends.base import Endpoint  # noqa: E402
from pytest_sglang_tune.loadgen.arrivals import arrival_offsets  # noqa: E402
from pytest_sglang_tune.loadgen.client import make_session, stream_request  # noqa: E402
from pytest_sglang_tune.loadgen.prompts import completions_body  # noqa: E402
from pytest_sglang_tune.loadgen.samples import RequestSample  # noqa: E402

PUBLISHED = HERE / "published_sglang_llama8b_h100.json"
MODEL = "meta-llama/Meta-Llama-3.1-8B"
GPU = "h100_sxm"
BAND = (0.67, 1.5)
SERVER_FLAGS = ("--disable-radix-cache",)  # both sources ran with the prefix cache off
SIGMAS = {"narrow": (0.7, 0.5), "default": (1.1, 0.9), "wide": (1.5, 1.3)}  # log-normal sigma (input, output)
TOKEN_IDS = (1000, 7999)
READY_TIMEOUT_S = 120.0


# -- workload ------------------------------------------------------------------------------------------------
def sharegpt_like_lengths(
    n: int, mean_in: float, mean_out: float, *, seed: int, sigma_in: float, sigma_out: float
) -> list[tuple[int, int]]:
    """``n`` (input, output) lengths: log-normal, SGLang's ShareGPT filter, means matched within 0.3 %."""
    mu_in = math.log(mean_in) - sigma_in**2 / 2
    mu_out = math.log(mean_out) - sigma_out**2 / 2
    pairs: list[tuple[int, int]] = []
    for _ in range(40):
        rng = random.Random(f"sharegpt-like:{seed}")
        pairs = []
        while len(pairs) < n:
            a = round(rng.lognormvariate(mu_in, sigma_in))
            b = round(rng.lognormvariate(mu_out, sigma_out))
            if a < 4 or b < 4 or a > 1024 or a + b > 2048:
                continue
            pairs.append((a, b))
        got_in = sum(a for a, _ in pairs) / n
        got_out = sum(b for _, b in pairs) / n
        if abs(got_in / mean_in - 1) < 0.003 and abs(got_out / mean_out - 1) < 0.003:
            break
        mu_in += math.log(mean_in / got_in)
        mu_out += math.log(mean_out / got_out)
    return pairs


def token_ids(rng: random.Random, n: int) -> list[int]:
    lo, hi = TOKEN_IDS
    return [rng.randint(lo, hi) for _ in range(n)]


@dataclass(frozen=True)
class Trace:
    """The replayed request stream of one published setup."""

    lengths: list[tuple[int, int]]
    arrivals: list[float]

    @property
    def stats(self) -> dict[str, float]:
        ins = sorted(a for a, _ in self.lengths)
        outs = sorted(b for _, b in self.lengths)
        return {
            "requests": len(ins),
            "total_input_tokens": sum(ins),
            "total_output_tokens": sum(outs),
            "median_input": statistics.median(ins),
            "median_output": statistics.median(outs),
            "max_input": ins[-1],
            "max_output": outs[-1],
        }


def make_trace(source: dict[str, Any], *, shape: str = "default", seed: int = 1) -> Trace:
    w = source["workload"]
    n = int(w["num_prompts"])
    sigma_in, sigma_out = SIGMAS[shape]
    lengths = sharegpt_like_lengths(
        n, w["total_input_tokens"] / n, w["total_output_tokens"] / n, seed=seed, sigma_in=sigma_in,
        sigma_out=sigma_out,
    )
    rate = w.get("request_rate")
    arrivals = arrival_offsets(float(rate), n, random.Random(f"arrivals:{seed}")) if rate else [0.0] * n
    return Trace(lengths, arrivals)


# -- the simulator on a virtual clock ------------------------------------------------------------------------
class VirtualSim:
    """The simulated server's scheduler core for some flags, resolved as the HTTP server resolves them."""

    def __init__(self, flags: Sequence[str]) -> None:
        from pytest_sglang_tune.sim.config import SimSettings, parse_server_args, resolve_server
        from pytest_sglang_tune.sim.perf import StepTimer, make_perf_model

        logging.getLogger("aiconfigurator_core").setLevel(logging.ERROR)  # its data-loading notices
        argv = ["--model-path", MODEL, *flags]
        values, given, version = parse_server_args(argv, None)
        env = {**os.environ, "SGLANG_SIM_GPU": GPU}
        self.resolved = resolve_server(values, given, version, SimSettings.from_env(env))
        model, gpu = self.resolved.model, self.resolved.gpu
        perf, self.perf_note = make_perf_model(self.resolved.settings.perf_model, model, gpu, tp=1)
        self.perf_name = f"{perf.name}: {getattr(perf, 'detail', '')}"
        self.timer = StepTimer(
            perf, num_layers=model.num_layers, graph_batch_sizes=self.resolved.graph_batch_sizes,
            overlap_schedule=self.resolved.overlap_schedule,
        )

    def run(self, trace: Trace) -> dict[str, float]:
        from pytest_sglang_tune.sim.core import Engine
        from pytest_sglang_tune.sim.virtual import TraceRequest, run_open_loop

        rng = random.Random("virtual-prompts")
        items = [
            TraceRequest(t, token_ids(rng, a), [TOKEN_IDS[0]] * b)
            for t, (a, b) in zip(trace.arrivals, trace.lengths, strict=True)
        ]
        result = run_open_loop(Engine(self.resolved.engine, self.timer), items)
        s = result.summary()
        e2e = [r.finish_time - r.arrival for r in result.requests]
        return {
            "median_itl_ms": s["itl_p50"] * 1e3,
            "median_ttft_ms": s["ttft_p50"] * 1e3,
            "mean_ttft_ms": statistics.fmean(r.first_token_time - r.arrival for r in result.requests) * 1e3,
            "median_e2e_latency_ms": s["e2e_p50"] * 1e3,
            "mean_e2e_latency_ms": statistics.fmean(e2e) * 1e3,
            "output_throughput_tok_s": s["output_throughput"],
            "request_throughput_req_s": s["request_throughput"],
            "duration_s": s["duration_s"],
            "steps": s["steps"],
            "retractions": s["retractions"],
        }


# -- the simulator behind its HTTP server --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def sim_server(flags: Sequence[str], log_path: Path) -> Iterator[Endpoint]:
    """Start ``python -m pytest_sglang_tune.sim`` on a free port; yield its endpoint once it answers."""
    import requests

    port = free_port()
    cmd = [sys.executable, "-m", "pytest_sglang_tune.sim", "--model-path", MODEL, "--host", "127.0.0.1",
           "--port", str(port), *flags]
    env = {**os.environ, "SGLANG_SIM_GPU": GPU, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
           os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    endpoint = Endpoint(f"http://127.0.0.1:{port}", MODEL)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the simulated server exited with code {proc.returncode}:\n{tail}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(endpoint.url("/health_generate"), timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulated server did not answer within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.25)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _replay(endpoint: Endpoint, trace: Trace, warmup: int) -> list[RequestSample]:
    rng = random.Random("http-prompts")
    url = endpoint.url("/v1/completions")
    session = make_session(endpoint, None)
    try:
        for _ in range(warmup):  # first requests pay one-off costs (connections, caches)
            await stream_request(session, url, _body(rng, 32, 8), RequestSample(32, 8, warmup=True))
        bodies = [_body(rng, a, b) for a, b in trace.lengths]
        start = time.perf_counter()

        async def one(i: int) -> RequestSample:
            a, b = trace.lengths[i]
            sample = RequestSample(a, b, intended_send=start + trace.arrivals[i])
            await asyncio.sleep(max(0.0, sample.intended_send - time.perf_counter()))
            await stream_request(session, url, bodies[i], sample)
            return sample

        return list(await asyncio.gather(*(one(i) for i in range(len(trace.lengths)))))
    finally:
        await session.close()


def _body(rng: random.Random, n_in: int, n_out: int) -> bytes:
    return json.dumps(completions_body(MODEL, token_ids(rng, n_in), n_out), separators=(",", ":")).encode()


def run_http(trace: Trace, flags: Sequence[str], log_path: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """Replay ``trace`` against the HTTP server: (client-side metrics, the server's ``sim`` section)."""
    import requests

    with sim_server(flags, log_path) as endpoint:
        samples = asyncio.run(_replay(endpoint, trace, warmup=2))
        info = requests.get(endpoint.url("/server_info"), timeout=10).json().get("sim", {})
    bad = [s for s in samples if not s.ok]
    if bad:
        first = bad[0]
        raise RuntimeError(
            f"{len(bad)} of {len(samples)} requests failed, e.g. {first.error}: {first.error_detail}"
        )
    itl = [x for s in samples for x in s.itl_s()]
    ttft = [s.ttft_s for s in samples if s.ttft_s is not None]
    e2e = [s.e2e_s for s in samples if s.e2e_s is not None]
    late = [s.sent - s.intended_send for s in samples]
    out_tokens = sum(s.output_tokens or 0 for s in samples)
    duration = max(s.done or 0.0 for s in samples) - min(s.sent for s in samples)
    measured = {
        "median_itl_ms": statistics.median(itl) * 1e3,
        "median_ttft_ms": statistics.median(ttft) * 1e3,
        "mean_ttft_ms": statistics.fmean(ttft) * 1e3,
        "median_e2e_latency_ms": statistics.median(e2e) * 1e3,
        "mean_e2e_latency_ms": statistics.fmean(e2e) * 1e3,
        "output_throughput_tok_s": out_tokens / duration,
        "client_send_lag_max_ms": max(late) * 1e3,
        "requests": float(len(samples)),
    }
    keep = ("perf_model", "lag", "prefill_mode", "step_time_ms")
    return measured, {k: info[k] for k in keep if k in info}


# -- comparison ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    source: str
    metric: str
    where: str  # "http" | "virtual"
    published: float
    sim: float
    gated: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.sim / self.published

    @property
    def within(self) -> bool:
        return BAND[0] <= self.ratio <= BAND[1]


def compare(source: dict[str, Any], measured: dict[str, float], where: str, gated: Sequence[str],
            metrics: Sequence[str], note: str = "") -> list[Row]:
    pub = source["metrics"]
    return [Row(source["id"], m, where, float(pub[m]), float(measured[m]), m in gated, note) for m in metrics]


def print_table(rows: Sequence[Row]) -> None:
    head = (f"{'source':<18} {'metric':<26} {'sim run':<8} {'published':>11} {'sim':>11} {'sim/pub':>8}"
            "  in band")
    print(head)
    print("-" * len(head))
    for r in rows:
        band = ("yes" if r.within else "NO") + ("" if r.gated else " (info)")
        print(f"{r.source:<18} {r.metric:<26} {r.where:<8} {r.published:>11.2f} {r.sim:>11.2f} "
              f"{r.ratio:>8.2f}  {band}")


LATENCY_METRICS = ("median_itl_ms", "median_ttft_ms", "mean_e2e_latency_ms")
THROUGHPUT_METRICS = ("output_throughput_tok_s", "request_throughput_req_s", "median_ttft_ms",
                      "median_e2e_latency_ms")


def mean_over_seeds(sim: VirtualSim, source: dict[str, Any], seeds: int, shape: str) -> dict[str, Any]:
    """The throughput point for ``seeds`` length samples: per-seed results and their mean."""
    per_seed = [sim.run(make_trace(source, shape=shape, seed=k)) for k in range(1, seeds + 1)]
    mean = {m: statistics.fmean(r[m] for r in per_seed) for m in per_seed[0]}
    spread = {m: (min(r[m] for r in per_seed), max(r[m] for r in per_seed)) for m in THROUGHPUT_METRICS}
    return {"mean": mean, "min_max": spread, "per_seed": per_seed}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--latency-prompts", type=int, default=60, metavar="N",
                    help="requests of the 300-request rate-1 trace sent to the HTTP server (60: ~1 min)")
    ap.add_argument("--seeds", type=int, default=5, metavar="K",
                    help="length samples averaged for the throughput point (default 5)")
    ap.add_argument("--shapes", action="store_true",
                    help="also run the throughput point with other length shapes")
    ap.add_argument("--skip-http", action="store_true", help="virtual clock only (no server process)")
    args = ap.parse_args(argv)
    if args.latency_prompts < 1 or args.seeds < 1:
        ap.error("--latency-prompts and --seeds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    published = json.loads(PUBLISHED.read_text())
    sources = {s["id"]: s for s in published["sources"]}
    lat, thr = sources["sglang-issue-1268"], sources["sglang-pr-1738"]
    t0 = time.perf_counter()
    sim = VirtualSim(SERVER_FLAGS)
    rows: list[Row] = []
    runs: dict[str, Any] = {}

    # per-token latency at about one request in flight: HTTP server (gated), virtual clock (information)
    lat_trace = make_trace(lat)
    if not args.skip_http:
        n = min(args.latency_prompts, len(lat_trace.lengths))
        sub = Trace(lat_trace.lengths[:n], lat_trace.arrivals[:n])
        with tempfile.TemporaryDirectory() as tmp:
            h_lat, server_sim = run_http(sub, SERVER_FLAGS, Path(tmp) / "sim-server.log")
        runs["latency_http"] = {"trace": sub.stats, "measured": h_lat, "server_sim_info": server_sim}
        rows += compare(lat, h_lat, "http", ["median_itl_ms"], ("median_itl_ms", "median_ttft_ms"),
                        note=f"first {n} of 300 requests")
    v_lat = sim.run(lat_trace)
    runs["latency_virtual"] = {"trace": lat_trace.stats, "measured": v_lat}
    rows += compare(lat, v_lat, "virtual", ["median_itl_ms"] if args.skip_http else [], LATENCY_METRICS,
                    note="all 300 requests")

    # offline throughput: virtual clock, mean over length samples
    thr_runs = mean_over_seeds(sim, thr, args.seeds, "default")
    runs["throughput_virtual"] = {"trace": make_trace(thr, seed=1).stats, **thr_runs}
    rows += compare(thr, thr_runs["mean"], "virtual", ["output_throughput_tok_s"], THROUGHPUT_METRICS,
                    note=f"mean of {args.seeds} length samples")
    if args.shapes:
        pub_tput = thr["metrics"]["output_throughput_tok_s"]
        runs["throughput_shapes"] = {}
        for shape, sigmas in SIGMAS.items():
            got = mean_over_seeds(sim, thr, args.seeds, shape)["mean"]["output_throughput_tok_s"]
            runs["throughput_shapes"][shape] = {"sigma": sigmas, "output_throughput_tok_s": got,
                                                "ratio": got / pub_tput}

    print(f"Simulated SGLang ({sim.perf_name}; flags: {' '.join(SERVER_FLAGS)})\n"
          f"vs published SGLang, {MODEL}, one H100 ({PUBLISHED.name})\n")
    print_table(rows)
    lo, hi = thr_runs["min_max"]["output_throughput_tok_s"]
    print(f"\noffline output throughput over {args.seeds} length samples: {lo:.0f}-{hi:.0f} tok/s")
    if "throughput_shapes" in runs:
        print("by length shape (same token totals): " + ", ".join(
            f"{k} {v['output_throughput_tok_s']:.0f} tok/s ({v['ratio']:.2f}x)"
            for k, v in runs["throughput_shapes"].items()))
    gated = [r for r in rows if r.gated]
    ok = all(r.within for r in gated)
    elapsed = time.perf_counter() - t0
    inside = sum(r.within for r in gated)
    print(f"\n{inside}/{len(gated)} gated ratios within {BAND[0]}-{BAND[1]}x ({elapsed:.0f} s)")
    if args.out:
        report = {
            "schema_version": 1,
            "ok": ok,
            "band": BAND,
            "model": MODEL,
            "gpu": GPU,
            "server_flags": list(SERVER_FLAGS),
            "perf_model": sim.perf_name,
            "perf_model_fallback_reason": sim.perf_note,
            "engine": asdict(sim.resolved.engine),
            "rows": [{**asdict(r), "ratio": r.ratio, "within": r.within} for r in rows],
            "runs": runs,
            "published_file": str(PUBLISHED.relative_to(REPO)),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "elapsed_s": elapsed,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
