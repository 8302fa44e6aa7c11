"""A constructed report with everything report.html shows: two suites, several workloads and load levels,
repeats with confidence intervals and ties, SLO misses, an infeasible config with a log tail, a skipped one,
an excluded one, and (optionally) the ``analysis`` block. Metrics follow simple formulas of the flags, so the
pictures look like a tuning run's."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

from pytest_sglang_tune.analysis import analyse
from pytest_sglang_tune.grammar import parse_slo
from pytest_sglang_tune.report.store import build_report

CHAT_SLOS = ["ttft_ms.p99 <= 1800", "itl_ms.p95 <= 40"]
AGENT_SLOS = ["error_rate <= 0.01", "e2e_ms.p90 <= 6000"]


def _dist(base: float, spread: float) -> dict[str, float]:
    return {"mean": round(base * 1.1, 3), "p50": round(base, 3), "p90": round(base * (1 + spread), 3),
            "p95": round(base * (1 + spread * 1.4), 3), "p99": round(base * (1 + spread * 2.2), 3)}


def _metrics(tp: int, policy: str, chunk: int, conc: float, out_len: int = 256) -> dict[str, Any]:
    speed = (1.0 if policy == "lpm" else 0.93) * (1.0 if chunk == 2048 else 1.06)
    tput = 95.0 * conc ** 0.8 * speed * (1.7 if tp == 2 else 1.0)
    itl = 9.0 + conc * (0.55 if tp == 1 else 0.33) / speed
    ttft = 60 + conc * (14 if tp == 1 else 8) * (1.25 if chunk == 8192 else 1.0) / speed
    e2e = ttft + itl * out_len
    return {"ttft_ms": _dist(ttft, 0.9), "itl_ms": _dist(itl, 0.3), "tpot_ms": _dist(itl * 1.02, 0.3),
            "e2e_ms": _dist(e2e, 0.25), "output_throughput": round(tput, 3),
            "output_throughput_per_gpu": round(tput / tp, 3), "input_throughput": round(tput * 4, 3),
            "request_throughput": round(tput / out_len, 4), "goodput": round(tput / out_len * 0.97, 4),
            "error_rate": 0.0, "completed": 64, "failed": 0}


def _ci(value: float, rel: float) -> list[float]:
    return [round(value * (1 - rel), 3), round(value * (1 + rel), 3)]


def _result(suite: str, workload: str, args: dict[str, Any], load: dict[str, Any], metrics: dict[str, Any],
            label: str, **extra: Any) -> dict[str, Any]:
    cid = ",".join(f"{k}={v}" for k, v in sorted(args.items()))
    conc, rate = load.get("concurrency"), load.get("request_rate")
    load_text = f"r{rate:g}" if rate is not None else f"c{conc}"
    cmd = "python -m sglang.launch_server --model-path Qwen/Qwen3-8B " + " ".join(
        f"--{k}" if v is True else f"--{k} {v}" for k, v in args.items())
    content_hash = hashlib.sha256(workload.encode()).hexdigest()[:12]
    return {"suite": suite, "workload": {"name": workload, "content_hash": content_hash},
            "config_id": cid, "display_id": f"{workload}[{label}-{load_text}]", "server_args": args,
            "launch_command": cmd, "sglang_version": "0.5.23", "perf_model": "aiconfigurator-core 0.12.0",
            "load": {"concurrency": conc, "request_rate": rate}, "status": "passed", "metrics": metrics,
            "model": "Qwen/Qwen3-8B", "backend": "sim", "gpus_used": list(range(int(args.get("tp-size", 1)))),
            **extra}


def _slo_pass(metrics: dict[str, Any], slos: list[str]) -> bool:
    return all(parse_slo(s).check(metrics) for s in slos)


def rich_report(*, with_analysis: bool = True) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for tp, policy, chunk in itertools.product((1, 2), ("lpm", "fcfs"), (2048, 8192)):
        args = {"enable-metrics": True, "tp-size": tp, "schedule-policy": policy, "chunked-prefill-size": chunk}
        label = f"tp{tp}-{policy}-chunk{chunk}"
        for conc in (8, 32, 64):
            load = {"concurrency": conc, "request_rate": None}
            if tp == 1 and policy == "fcfs" and chunk == 8192 and conc == 64:
                results.append(_result("chat-tune", "chat", args, load, {}, label, status="infeasible",
                                       reason="InfeasibleConfig: out of memory while allocating the KV cache",
                                       log_tail="[2026-11-27 13:05:11] Scheduler hit an exception\n"
                                                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
                                                "2.00 GiB", slo_pass=None))
                continue
            m = _metrics(tp, policy, chunk, conc)
            extra: dict[str, Any] = {}
            if conc == 32:  # measured three times: intervals, and ties where they overlap
                extra = {"repeats": {"n": 3, "redeploy": False},
                         "confidence_method": {"method": "student-t over repeats (95%)", "repeats": 3},
                         "confidence": {"output_throughput_per_gpu": _ci(m["output_throughput_per_gpu"], 0.04),
                                        "ttft_ms.p99": _ci(m["ttft_ms"]["p99"], 0.08)}}
            results.append(_result("chat-tune", "chat", args, load, m, label,
                                   slo_pass=_slo_pass(m, CHAT_SLOS), slos=CHAT_SLOS, **extra))
        if chunk == 2048:
            m = _metrics(tp, policy, chunk, 12, out_len=1024)
            results.append(_result("chat-tune", "long-output", args, {"concurrency": None, "request_rate": 2.5}, m,
                                   label, slo_pass=_slo_pass(m, CHAT_SLOS), slos=CHAT_SLOS))
    results.append(_result("chat-tune", "long-output", {"enable-metrics": True, "tp-size": 8,
                                                        "schedule-policy": "lpm", "chunked-prefill-size": 2048},
                           {"concurrency": None, "request_rate": 2.5}, {}, "tp8-lpm-chunk2048", status="skipped",
                           reason="needs 8 GPUs, 4 available", slo_pass=None))
    for mrr in (32, 128):
        args = {"enable-metrics": True, "max-running-requests": mrr}
        m = _metrics(1, "lpm", 2048, 16 if mrr == 32 else 24, out_len=64)
        results.append(_result("agent", "rag", args, {"concurrency": 32, "request_rate": None}, m, f"mrr{mrr}",
                               slo_pass=_slo_pass(m, AGENT_SLOS), slos=AGENT_SLOS))
    results.append(_result("agent", "rag", {"enable-metrics": True, "max-running-requests": 512},
                           {"concurrency": 32, "request_rate": None}, {}, "mrr512", status="error",
                           reason="NotReady: the server process exited with code 1 during start-up",
                           log_tail="ValueError: max_running_requests 512 exceeds the KV cache capacity",
                           slo_pass=None))
    suites = {
        "chat-tune": {"objective": "maximize: output_throughput_per_gpu", "slos": CHAT_SLOS,
                      "sglang_version": "0.5.23", "model": "Qwen/Qwen3-8B",
                      "varying_flags": ["tp-size", "schedule-policy", "chunked-prefill-size"],
                      "excluded": [{"config_id": "tp-size=4", "server_args": {"tp-size": 4, "dp-size": 2},
                                    "reason": "constraint 'tp-size * dp-size <= 4' is false"}]},
        "agent": {"objective": "maximize: goodput", "slos": AGENT_SLOS, "sglang_version": "0.5.23",
                  "model": "Qwen/Qwen3-8B"},
    }
    run = {"id": "20261127-130501-3fa2", "started_at": "2026-11-27T13:05:01+00:00",
           "finished_at": "2026-11-27T13:41:40+00:00", "backend": "sim", "gpus": 4,
           "argv": ["pytest", "suites/", "--backend=sim", "--gpus=4", "--sglang-repeats=3"],
           "machine": {"host": "bench-01", "platform": "Linux-6.1.0-x86_64", "python": "3.11.7",
                       "cpu": {"model": "AMD EPYC 7R13", "count": 96}, "gpus": []}}
    report = build_report(run=run, results=results, suites=suites,
                          warnings=["chat-tune: 1 config skipped for lack of GPUs"])
    if with_analysis:
        analyse(report)
    return report
