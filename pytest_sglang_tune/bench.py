"""``sglang-tune bench``: the plugin's load generator against any running server, writing the same report.json.

    sglang-tune bench --url http://127.0.0.1:30000 --model qwen3-8b --scenario 'D(128,32)' \\
        --endpoint completions --concurrency 16 --concurrency 64 --num-requests 200 -o bench.json
    sglang-tune bench --url http://127.0.0.1:30000 --model qwen3-8b --endpoint generate \\
        --trace fixtures/traces/mooncake_sample.jsonl --time-scale 1 --time-scale 0.5 --max-requests 300
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from pytest_sglang_tune.errors import GrammarError, SuiteError, TuneError


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="benchmark a running server with the plugin's load generator",
                       description="Run the load generator against a running OpenAI/SGLang-compatible server "
                                   "and write a report.json (schema 1) with one result per load level.")
    b.add_argument("--url", required=True, help="base URL of the server, e.g. http://127.0.0.1:30000")
    b.add_argument("--model", required=True, help="model name to send (the server's served model name)")
    b.add_argument("--scenario", default=None,
                   help="input/output lengths: D(in,out), N(mi,si)/(mo,so) or U(min,max)/(min,max) "
                        "(default D(128,32))")
    b.add_argument("--endpoint", default="completions", choices=("chat", "completions", "generate"))
    b.add_argument("--concurrency", type=int, action="append", default=[],
                   help="closed-loop concurrency (repeat for a sweep)")
    b.add_argument("--request-rate", type=float, action="append", default=[],
                   help="open-loop Poisson rate in req/s (repeat for a sweep); with one --concurrency, capped by it")
    b.add_argument("--rate-sweep", metavar="START:STOP:STEP", action="append", default=[],
                   help="request rates START, START+STEP, ... up to STOP inclusive (added to --request-rate)")
    b.add_argument("--burstiness", type=float, default=1.0,
                   help="open-loop arrivals: gamma shape (1 = Poisson, < 1 burstier, > 1 more regular)")
    b.add_argument("--dataset", type=Path, default=None,
                   help="ShareGPT-format JSON: prompts and reference output lengths (--scenario's output length "
                        "overrides them only when --scenario is given)")
    b.add_argument("--trace", type=Path, default=None,
                   help="replay a timestamped trace: Mooncake .jsonl (timestamp ms, input_length, output_length, "
                        "hash_ids) or Azure LLM inference .csv (TIMESTAMP, ContextTokens, GeneratedTokens)")
    b.add_argument("--time-scale", type=float, action="append", default=[],
                   help="trace replay: multiply the trace's gaps (0.5 = twice as fast); repeat for a sweep (default 1)")
    b.add_argument("--max-requests", type=int, default=None, help="trace replay: at most this many requests")
    b.add_argument("--window", metavar="START:END", default=None,
                   help="trace replay: only requests from START to END seconds after the trace's first (END may be "
                        "empty: to the end)")
    b.add_argument("--no-flush-cache", action="store_true",
                   help="trace replay: keep the server's prefix cache between points (default: POST /flush_cache "
                        "before each, so every point sees only its own sharing)")
    b.add_argument("--turns", type=int, default=1, help="chat sessions of this many requests carrying the history")
    b.add_argument("--warmup-s", type=float, default=0.0, help="leave out requests sent in the first seconds")
    b.add_argument("--cooldown-s", type=float, default=0.0, help="leave out requests ending in the last seconds")
    b.add_argument("--procs", type=int, default=1, help="spread each point over this many client processes")
    b.add_argument("--num-requests", type=int, default=None, help="requests per point (default 100)")
    b.add_argument("--warmup-requests", type=int, default=2)
    b.add_argument("--shared-prefix", metavar="GROUPS:PREFIX_LEN", help="requests share one of GROUPS prefixes")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-duration", type=float, default=None, help="stop sending after this many seconds")
    b.add_argument("--slo", action="append", default=[], help="an SLO for goodput, e.g. 'ttft_ms.p99 <= 2000'")
    b.add_argument("--gpus", type=int, default=1, help="GPUs behind the server (for per-GPU throughput)")
    b.add_argument("--api-key", default=os.environ.get("SGLANG_API_KEY"),
                   help="sent as a Bearer token (default: $SGLANG_API_KEY)")
    b.add_argument("-o", "--output", type=Path, default=Path("bench-report.json"))


def run(args: argparse.Namespace) -> int:
    from pytest_sglang_tune.backends.base import Endpoint
    from pytest_sglang_tune.grammar import parse_slo
    from pytest_sglang_tune.loadgen.point import run_point
    from pytest_sglang_tune.loadgen.trace import replay_stats, trace_summary
    from pytest_sglang_tune.loadgen.workload import FROM_DATASET, SharedPrefix, Workload, loads_from, parse_scenario
    from pytest_sglang_tune.metrics import summarize
    from pytest_sglang_tune.report.json import dumps
    from pytest_sglang_tune.report.store import atomic_write_text, build_report, machine_info, new_run_id, now_iso

    try:
        inp, out = parse_scenario(args.scenario or "D(128,32)")
        if args.dataset is not None:
            inp, out = FROM_DATASET, (out if args.scenario else FROM_DATASET)
        slos = [parse_slo(s) for s in args.slo]
        shared = None
        if args.shared_prefix:
            groups, _, plen = args.shared_prefix.partition(":")
            shared = SharedPrefix(int(groups), int(plen))
        rates = [*args.request_rate, *(r for spec in args.rate_sweep for r in parse_rate_sweep(spec))]
        if args.dataset is not None and shared is not None:
            raise ValueError("--shared-prefix cannot be combined with --dataset (the prompts come from the file)")
        if args.procs < 1:
            raise ValueError(f"--procs {args.procs} must be at least 1")
        trace_kw = trace_options(args, rates) if args.trace is not None else None
    except (SuiteError, GrammarError, ValueError) as exc:
        print(f"sglang-tune bench: error: {exc}", file=sys.stderr)
        return 2
    if trace_kw is not None:
        loads = trace_kw.pop("loads")
        inp, out = FROM_DATASET, FROM_DATASET
    else:
        try:
            loads = loads_from(args.concurrency or ([] if rates else [1]), rates)
        except SuiteError as exc:
            print(f"sglang-tune bench: error: --concurrency/--request-rate: {exc}", file=sys.stderr)
            return 2
    endpoint = Endpoint(args.url, args.model, api_key=args.api_key)
    run_id, started = new_run_id(), now_iso()
    results = []
    sim = _sim_block(args.url, args.api_key)  # a simulated server names its perf model and what it leaves out
    for load in loads:
        try:
            common: dict[str, Any] = {"num_requests": 100 if args.num_requests is None else args.num_requests,
                                      **(trace_kw or {})}
            wl = Workload(name="bench", input_len=inp, output_len=out, warmup_requests=args.warmup_requests,
                          endpoint=args.endpoint, loads=(load,),
                          shared_prefix=shared, seed=args.seed, max_duration_s=args.max_duration,
                          dataset=str(args.dataset) if args.dataset is not None else None, turns=args.turns,
                          burstiness=args.burstiness, warmup_s=args.warmup_s, cooldown_s=args.cooldown_s,
                          **common)
            if wl.trace is not None:
                wl = wl.at_load(0)  # the level's time_scale
        except SuiteError as exc:
            print(f"sglang-tune bench: error: {exc}", file=sys.stderr)
            return 2
        what = f"dataset {args.dataset.name}" if args.dataset is not None else f"{inp}/{out}"
        if wl.trace is not None:
            what = trace_line(wl)
        print(f"bench {args.url} {args.endpoint} {what} {load.label()} ...", flush=True)
        if wl.trace is not None and not args.no_flush_cache and not flush_cache(endpoint):
            print("  warning: POST /flush_cache did not succeed within 30 s; cached prefixes of earlier points may "
                  "raise this point's cache hits", flush=True)
        t0 = time.monotonic()
        try:
            point = run_point(endpoint, wl, load, procs=args.procs)
        except TuneError as exc:
            print(f"sglang-tune bench: error: {exc}", file=sys.stderr)
            return 1
        metrics = summarize(point, gpus=args.gpus, slos=slos)
        replay = replay_stats(point, wl) if wl.trace is not None else None
        results.append({
            "test_id": f"bench[{load.label()}]", "suite": "bench", "config_id": "external",
            "workload": {"name": "bench", "content_hash": wl.content_hash, "endpoint": wl.endpoint,
                         "input_len": str(inp), "output_len": str(out), "num_requests": wl.num_requests,
                         "dataset": wl.dataset, "turns": wl.turns, "burstiness": wl.burstiness,
                         "procs": args.procs, **({"trace": trace_summary(wl)} if wl.trace is not None else {})},
            "server_args": {}, "launch_command": None, "sglang_version": None, "image": None, "image_digest": None,
            "perf_model": _perf_model(sim), "load": load.to_dict(), "status": "passed", "reason": None,
            "metrics": metrics, **({"sim": sim} if sim else {}),
            "slo_pass": all(s.check(metrics) for s in slos) if slos else None, "gpus_used": [],
            "slos": [str(s) for s in slos], "warnings": point.warnings, "endpoint_url": args.url,
            "server_metrics": point.server_metrics, "duration_s": round(time.monotonic() - t0, 3),
            **({"replay": replay} if replay is not None else {}),
        })
        m = metrics
        print(f"  completed {m['completed']} failed {m['failed']}  ttft p50 {_f(m['ttft_ms']['p50'])} ms "
              f"p99 {_f(m['ttft_ms']['p99'])} ms  itl p50 {_f(m['itl_ms']['p50'])} ms  "
              f"output {_f(m['output_throughput'])} tok/s  client cpu {_pct(m['client_cpu_util'])}", flush=True)
        if sim and sim.get("not_modelled_flags"):
            point.warnings.append("flags not modelled by the sim (accepted, no effect): "
                                  + ", ".join(map(str, sim["not_modelled_flags"])))
        if replay is not None:
            print(replay_line(replay), flush=True)
        for w in point.warnings:
            print(f"  warning: {w}", flush=True)
    run = {"id": run_id, "started_at": started, "finished_at": now_iso(), "backend": "external",
           "gpus": args.gpus, "argv": sys.argv, "machine": machine_info()}
    suites = {"bench": {"objective": "maximize: output_throughput", "slos": [str(s) for s in slos]}}
    report = build_report(run=run, results=results, suites=suites)
    atomic_write_text(args.output, dumps(report))
    print(f"wrote {args.output}")
    return 0


def _sim_block(url: str, api_key: str | None) -> dict[str, Any] | None:
    """``/server_info``'s ``sim`` section when the server is the simulated one (None for a real SGLang)."""
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        info = requests.get(url.rstrip("/") + "/server_info", headers=headers, timeout=10).json()
    except (requests.RequestException, ValueError):
        return None
    sim = info.get("sim") if isinstance(info, dict) else None
    return sim if isinstance(sim, dict) else None


def _perf_model(sim: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report's ``perf_model`` ``{name, data_version, gpu}`` from the sim's ``perf_model`` object."""
    pm = sim.get("perf_model") if sim else None
    if not isinstance(pm, dict):
        return None
    return {"name": pm.get("name"), "data_version": pm.get("data_version"), "gpu": pm.get("gpu")}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def parse_rate_sweep(spec: str) -> list[float]:
    """``START:STOP:STEP`` → ``[START, START+STEP, ..., ≤ STOP]`` (STOP included when the steps land on it).

    >>> parse_rate_sweep("10:40:10")
    [10.0, 20.0, 30.0, 40.0]
    """
    parts = spec.split(":")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--rate-sweep {spec!r} is not START:STOP:STEP (three numbers, e.g. 10:50:10)") from None
    if not (start > 0 and step > 0 and stop >= start):
        raise ValueError(f"--rate-sweep {spec!r}: need START > 0, STEP > 0 and STOP >= START")
    n = int((stop - start) / step + 1e-9) + 1
    if n > 1000:
        raise ValueError(f"--rate-sweep {spec!r} gives {n} rates; at most 1000")
    return [round(start + i * step, 9) for i in range(n)]


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}"


_NOT_WITH_TRACE = (("scenario", None, "lengths come from the trace"), ("dataset", None, "prompts come from the trace"),
                   ("shared_prefix", None, "shared content comes from the trace's hash_ids"),
                   ("num_requests", None, "use --max-requests or --window"), ("turns", 1, "one request per line"),
                   ("burstiness", 1.0, "arrivals come from the trace; use --time-scale"))


def trace_options(args: argparse.Namespace, rates: list[float]) -> dict[str, Any]:
    """The Workload fields and load levels of ``--trace``: one level per ``--time-scale`` (or per
    ``--concurrency`` cap when one time scale is given). Raises ValueError/SuiteError on a bad combination."""
    from pytest_sglang_tune.loadgen.trace import load_trace, select, trace_loads

    for name, default, why in _NOT_WITH_TRACE:
        if getattr(args, name) != default:
            raise ValueError(f"--{name.replace('_', '-')} cannot be combined with --trace: {why}")
    if rates:
        raise ValueError("--request-rate/--rate-sweep cannot be combined with --trace: arrivals come from the "
                         "trace; use --time-scale")
    scales = args.time_scale or [1.0]
    caps: list[int | None] = list(args.concurrency) or [None]
    if len(scales) > 1 and len(caps) > 1:
        raise ValueError("with --trace, give several --time-scale or several --concurrency, not both")
    if any(not ts > 0 for ts in scales):
        raise ValueError(f"--time-scale {scales} must be positive (0.5 replays twice as fast)")
    if args.max_requests is not None and args.max_requests < 1:
        raise ValueError(f"--max-requests {args.max_requests} must be at least 1")
    window = parse_window(args.window) if args.window else None
    reqs = select(load_trace(args.trace), window, args.max_requests)
    return {"trace": str(args.trace), "time_scale": scales[0], "trace_window": window,
            "max_requests": args.max_requests, "num_requests": len(reqs), "loads": trace_loads(reqs, scales, caps)}


def parse_window(spec: str) -> tuple[float, float | None]:
    """``START:END`` seconds (END may be empty) → ``(start, end)``.

    >>> parse_window("60:120"), parse_window("30:")
    ((60.0, 120.0), (30.0, None))
    """
    start, sep, end = spec.partition(":")
    try:
        lo, hi = float(start), (float(end) if end.strip() else None)
    except ValueError:
        raise ValueError(f"--window {spec!r} is not START:END (seconds from the trace's first request, e.g. "
                         "60:120, or 60: for the rest)") from None
    if not sep or lo < 0 or (hi is not None and hi <= lo):
        raise ValueError(f"--window {spec!r}: need START:END with 0 <= START < END")
    return lo, hi


def trace_line(wl: Any) -> str:
    """``trace x.jsonl (mooncake, 300 requests over 76.8 s, 3.91 req/s, implied cache hit 0.41)``."""
    from pytest_sglang_tune.loadgen.trace import trace_summary

    t = trace_summary(wl)
    rate = "all at once" if t["mean_rate"] is None else f"{t['mean_rate']:.3g} req/s"
    return (f"trace {t['file']} ({t['format']}, {t['requests']} requests over {t['span_s']:.1f} s, {rate}, "
            f"implied cache hit {t['implied_cache_hit_fraction']:.2f})")


def replay_line(r: dict[str, Any]) -> str:
    """The schedule and cache check of one replayed point, for the terminal."""
    lag = r["send_lag_ms"]
    rate = "n/a" if r["achieved_rate"] is None else (
        f"{r['achieved_rate']:.4g} req/s (schedule {r['scheduled_rate']:.4g}, {r['rate_error']:+.2%})")
    hit = r["cache_hit_fraction"]
    hit_s = ("n/a (the server reported no cached tokens: use --endpoint generate, or SGLang's --enable-cache-report)"
             if hit is None else f"{hit:.3f}")
    return (f"  replay: sent {r['sent']} at {rate}; send lag p50 {_f2(lag['p50'])} p99 {_f2(lag['p99'])} "
            f"max {_f2(lag['max'])} ms; cache hit {hit_s} (trace implies {r['implied_cache_hit_fraction']:.3f})")


def _f2(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def flush_cache(endpoint: Any, timeout: float = 30.0) -> bool:
    """POST ``/flush_cache`` until the server accepts it (SGLang refuses while requests run); False on timeout."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.post(endpoint.url("/flush_cache"), headers=endpoint.headers(), timeout=10).status_code == 200:
                return True
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
