"""Generate the larger trace samples under ``fixtures/traces/`` with the statistics of the public traces.

    python tools/make_trace_samples.py                  # rewrite fixtures/traces/{mooncake,azure_conv}_sample.*
    python tools/make_trace_samples.py --measure-mooncake synthetic_trace.jsonl --measure-azure \\
        AzureLLMInferenceTrace_conv.csv                 # print the statistics of local copies of the public files

Nothing is downloaded. The statistics below were measured with ``--measure-*`` on the public files (the commits
are in ``fixtures/traces/README.md``) and are what the samples match:

**Mooncake** (``kvcache-ai/Mooncake FAST25-release/traces/synthetic_trace.jsonl``, 3,993 requests over 1,022 s):

* arrivals: a Poisson process at exactly the trace's mean rate (3.906 req/s; exponential gaps rescaled so the
  sample's last arrival lands where that rate puts it); the trace's gaps have a coefficient of variation of
  1.01, as exponential gaps do;
* prefix reuse: a request shares a prefix with an earlier request with the trace's probability (0.446). The
  new tokens after the shared blocks are drawn from the trace's quantiles (none, in a quarter of the cases:
  the prompt repeats); when there are some, the request shares all of the earlier request's full 512-token
  blocks with the trace's probability (0.754), else a part drawn from the trace's quantiles of partial shares.
  Hash ids follow the trace's convention: the source's ids for the shared blocks, a new id per new block;
* lengths: the input length of a request without reuse, the new tokens after a shared prefix, and the output
  length are drawn from the trace's quantiles (``QUANTILES`` points, log-linear between them);
* one deliberate difference: the source of a reuse is one of the ``--reuse-window`` (default 16) previous
  requests, uniformly. In the trace the median reuse distance is 262 requests (67 s), which Mooncake serves from
  a cluster-wide KV cache pool; on one simulated H100 (about 370k KV tokens) such prefixes would be evicted long
  before they are reused, so a sample meant to exercise one server's radix cache keeps them close;
* inputs over ``--max-context`` (32,768 tokens, less the output) are redrawn: Qwen3-8B serves at most 40,960
  tokens, and 16 % of the trace's requests do not fit in 32,768.

**Azure** (``Azure/AzurePublicDataset data/AzureLLMInferenceTrace_conv.csv``, 19,366 requests over 3,502 s):
arrivals with gamma-distributed gaps of the trace's coefficient of variation (1.094), at exactly its mean
rate (5.530 req/s);
``ContextTokens`` and ``GeneratedTokens`` drawn from the trace's quantiles; timestamps in the trace's format,
starting at its first one.

The script prints the statistics of what it wrote next to the trace's, so a change can be checked.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import datetime as dt
import itertools
import json
import math
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_sglang_tune.loadgen.trace import (  # noqa: E402
    BLOCK_TOKENS,
    TraceRequest,
    implied_hit_fraction,
    load_trace,
    mean_rate,
)

QUANTILES: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)

# Measured with --measure-mooncake on synthetic_trace.jsonl (see the module docstring).
MOONCAKE: dict[str, Any] = {
    "rate": 3.906,
    "gap_cv": 1.011,
    "p_reuse": 0.4463,
    "p_all_blocks": 0.7542,
    "fresh_input": (13, 16, 20, 24, 42, 573, 16523, 26914, 37122, 55173, 191374),
    "new_tokens": (1, 1, 1, 1, 156, 336, 508, 894, 1206, 1892, 59649),
    "block_share": (0.0083, 0.8333, 0.9, 0.9355, 0.9643, 0.9722, 0.9829, 0.9865, 0.9881, 0.9905, 0.9938),
    "output": (1, 2, 2, 4, 11, 69, 250, 389, 519, 768, 893),
}
# Measured with --measure-azure on AzureLLMInferenceTrace_conv.csv.
AZURE_START = "2023-11-16 18:15:46.6805900"  # the trace's first TIMESTAMP
AZURE: dict[str, Any] = {
    "rate": 5.5301,
    "gap_cv": 1.094,
    "context": (2, 29, 181, 207, 396, 1020, 1189, 2734, 4083, 4142, 14050),
    "generated": (7, 16, 41, 54, 85, 129, 395, 424, 451, 601, 1000),
}


def quantiles(values: Sequence[float]) -> tuple[float, ...]:
    """``values`` at ``QUANTILES`` (nearest rank)."""
    xs = sorted(values)
    return tuple(xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] for q in QUANTILES)


def draw(rng: random.Random, qs: Sequence[float], *, log: bool = True) -> float:
    """A value from the distribution given by its quantiles: log-linear (or linear) between them."""
    u = rng.random()
    i = min(bisect.bisect_right(QUANTILES, u) - 1, len(QUANTILES) - 2)
    frac = (u - QUANTILES[i]) / (QUANTILES[i + 1] - QUANTILES[i])
    lo, hi = qs[i], qs[i + 1]
    if log and lo > 0 and hi > 0:
        return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * frac)
    return lo + (hi - lo) * frac


# -- measuring the public traces ------------------------------------------------------------------------------


def reuse_of(requests: Sequence[TraceRequest]) -> list[tuple[int, int, int]]:
    """Per request: (shared blocks, full blocks of the request it shares them with, distance in requests)."""
    last: dict[tuple[int, ...], int] = {}
    out = []
    for i, r in enumerate(requests):
        ids = r.hash_ids or ()
        k, src = 0, -1
        while k < len(ids) and ids[: k + 1] in last:
            src = last[ids[: k + 1]]
            k += 1
        src_full = (requests[src].input_len // BLOCK_TOKENS) if k else 0
        out.append((k, src_full, i - src if k else 0))
        for j in range(1, len(ids) + 1):
            last[ids[:j]] = i
    return out


def measure_mooncake(path: str) -> dict[str, object]:
    reqs = list(load_trace(path).requests)
    reuse = reuse_of(reqs)
    hits = [(r, k, full, d) for r, (k, full, d) in zip(reqs, reuse, strict=True) if k]
    all_blocks = sum(1 for _, k, full, _ in hits if full and k >= full)
    gaps = [b.offset_s - a.offset_s for a, b in itertools.pairwise(reqs)]
    return {
        "requests": len(reqs), "span_s": round(reqs[-1].offset_s, 3), "rate": round(mean_rate(reqs) or 0, 4),
        "gap_cv": round(statistics.pstdev(gaps) / statistics.mean(gaps), 3),
        "p_reuse": round(len(hits) / len(reqs), 4), "p_all_blocks": round(all_blocks / len(hits), 4),
        "fresh_input": quantiles([r.input_len for r, (k, _, _) in zip(reqs, reuse, strict=True) if not k]),
        "new_tokens": quantiles([max(1, r.input_len - k * BLOCK_TOKENS) for r, k, _, _ in hits]),
        "block_share": tuple(round(x, 4) for x in quantiles([k / full for _, k, full, _ in hits if full and k < full])),
        "output": quantiles([r.output_len for r in reqs]),
        "reuse_distance_median": statistics.median(d for *_, d in hits),
        "input_mean": round(statistics.mean(r.input_len for r in reqs), 1),
        "over_32k_fraction": round(sum(r.input_len + r.output_len > 32768 for r in reqs) / len(reqs), 4),
        "implied_hit_fraction": round(implied_hit_fraction(reqs), 4),
    }


def measure_azure(path: str) -> dict[str, object]:
    reqs = list(load_trace(path).requests)
    gaps = [b.offset_s - a.offset_s for a, b in itertools.pairwise(reqs)]
    return {
        "requests": len(reqs), "span_s": round(reqs[-1].offset_s, 3), "rate": round(mean_rate(reqs) or 0, 4),
        "gap_cv": round(statistics.pstdev(gaps) / statistics.mean(gaps), 3),
        "context": quantiles([r.input_len for r in reqs]), "generated": quantiles([r.output_len for r in reqs]),
        "context_mean": round(statistics.mean(r.input_len for r in reqs), 1),
        "generated_mean": round(statistics.mean(r.output_len for r in reqs), 1),
    }


# -- generating -----------------------------------------------------------------------------------------------


def exact_times(gaps: list[float], rate: float) -> list[float]:
    """Arrival times from 0 with ``gaps`` rescaled so that the mean rate is exactly ``rate`` (as
    ``loadgen.arrivals.arrival_offsets(exact=True)``: the process conditioned on its last arrival)."""
    scale = len(gaps) / rate / sum(gaps) if gaps and sum(gaps) > 0 else 1.0
    return list(itertools.accumulate((g * scale for g in gaps), initial=0.0))


def gen_mooncake(n: int, seed: int, reuse_window: int, max_context: int) -> list[dict[str, object]]:
    """``n`` Mooncake trace lines with ``MOONCAKE``'s statistics (see the module docstring)."""
    rng = random.Random(f"mooncake-sample:{seed}")
    m = MOONCAKE
    times = exact_times([rng.expovariate(m["rate"]) for _ in range(n - 1)], m["rate"])
    lines: list[dict[str, object]] = []
    next_id = 0
    for i in range(n):
        out = max(1, round(draw(rng, m["output"])))
        while True:
            shared: list[int] = []
            recent = lines[max(0, i - reuse_window):i]
            if recent and rng.random() < m["p_reuse"]:
                new = round(draw(rng, m["new_tokens"]))
                if new <= 1:  # nothing after the shared blocks: the trace's repeated prompts
                    src = recent[int(rng.random() * len(recent))]
                    n_in, shared = int(src["input_length"]), list(src["hash_ids"])  # type: ignore[call-overload]
                else:  # a continuation: of a request with at least one full block
                    longer = [x for x in recent if int(x["input_length"]) >= BLOCK_TOKENS]  # type: ignore[call-overload]
                    if longer:
                        src = longer[int(rng.random() * len(longer))]
                        full = int(src["input_length"]) // BLOCK_TOKENS  # type: ignore[call-overload]
                        share = 1.0 if rng.random() < m["p_all_blocks"] else draw(rng, m["block_share"], log=False)
                        shared = list(src["hash_ids"])[: max(1, min(full, round(share * full)))]  # type: ignore[call-overload]
                        n_in = len(shared) * BLOCK_TOKENS + new
            if not shared:
                n_in = max(1, round(draw(rng, m["fresh_input"])))
            if n_in + out <= max_context:
                break
        blocks = -(-n_in // BLOCK_TOKENS)
        ids = shared + list(range(next_id, next_id + blocks - len(shared)))
        next_id += blocks - len(shared)
        lines.append({"timestamp": round(times[i] * 1000), "input_length": n_in, "output_length": out,
                      "hash_ids": ids})
    return lines


def gen_azure(n: int, seed: int) -> list[tuple[str, int, int]]:
    """``n`` Azure trace rows with ``AZURE``'s statistics (see the module docstring)."""
    rng = random.Random(f"azure-sample:{seed}")
    a = AZURE
    shape = 1.0 / a["gap_cv"] ** 2
    times = exact_times([rng.gammavariate(shape, 1.0 / (a["rate"] * shape)) for _ in range(n - 1)], a["rate"])
    start = dt.datetime.fromisoformat(AZURE_START[:26])
    rows: list[tuple[str, int, int]] = []
    for t in times:
        when = start + dt.timedelta(microseconds=round(t * 1e6))
        rows.append((when.strftime("%Y-%m-%d %H:%M:%S.%f") + "0", max(1, round(draw(rng, a["context"]))),
                     max(1, round(draw(rng, a["generated"])))))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure-mooncake", metavar="JSONL", help="print the statistics of a Mooncake trace and exit")
    ap.add_argument("--measure-azure", metavar="CSV", help="print the statistics of an Azure trace and exit")
    ap.add_argument("--out", type=Path, default=ROOT / "fixtures" / "traces")
    ap.add_argument("--mooncake-requests", type=int, default=600)
    ap.add_argument("--azure-requests", type=int, default=1200)
    ap.add_argument("--reuse-window", type=int, default=16)
    ap.add_argument("--max-context", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.measure_mooncake or args.measure_azure:
        if args.measure_mooncake:
            print("mooncake", json.dumps(measure_mooncake(args.measure_mooncake)))
        if args.measure_azure:
            print("azure", json.dumps(measure_azure(args.measure_azure)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    mpath = args.out / "mooncake_sample.jsonl"
    lines = gen_mooncake(args.mooncake_requests, args.seed, args.reuse_window, args.max_context)
    mpath.write_text("".join(json.dumps(x) + "\n" for x in lines))
    apath = args.out / "azure_conv_sample.csv"
    with apath.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        w.writerows(gen_azure(args.azure_requests, args.seed))
    got = measure_mooncake(str(mpath))
    print(f"wrote {mpath}")
    for key in ("rate", "gap_cv", "p_reuse", "p_all_blocks", "fresh_input", "new_tokens", "block_share", "output"):
        print(f"  {key:14} sample {got[key]}  trace {MOONCAKE.get(key, 'n/a')}")
    print(f"  implied cache hit fraction {got['implied_hit_fraction']}; reuse distance median "
          f"{got['reuse_distance_median']} requests")
    got_a = measure_azure(str(apath))
    print(f"wrote {apath}")
    for key in ("rate", "gap_cv", "context", "generated"):
        print(f"  {key:14} sample {got_a[key]}  trace {AZURE[key]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
