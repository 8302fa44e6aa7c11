"""How long one scheduler step takes: a forward-pass model plus SGLang's CUDA-graph and CPU costs.

``PerfModel`` prices one forward pass (prefill, decode or mixed) on the GPU:

* :class:`~.aic.AiconfiguratorPerf` asks NVIDIA's ``aiconfigurator-core`` (pin 0.12.0, Apache-2.0) through its
  forward-pass model for ``backend="sglang"``: collected SGLang kernel data (the version nearest to the
  server's SGLang version) on the chosen GPU, all-reduces included. Offline, pure Rust per query (~10 µs).
* :class:`RooflinePerf` stands in where ``aiconfigurator-core`` is not installable or cannot model the
  model/GPU/parallelism: ``max(compute, memory) + all-reduce + fixed`` with the constants documented below.
  The reason it runs is recorded (``fallback_reason`` in ``/server_info``).

:class:`StepTimer` turns a forward pass into a scheduler step as SGLang runs it: decode batches up to the
CUDA-graph cap replay a captured graph padded to the next captured batch size; larger ones run eagerly and pay
the launch overhead (:data:`EAGER_*`); every step pays the scheduler's CPU time (:data:`CPU_*`): hidden behind
the GPU by the overlap scheduler (SGLang's default) when it is shorter than the forward pass, exposed in full
with ``--disable-overlap-schedule``. Under tensor parallelism every step also gathers the vocabulary-parallel
logits across the ranks (:data:`LOGITS_ALLGATHER_*`), which ``aiconfigurator-core``'s op list leaves out.
"""

from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from pytest_sglang_tune.sim.gpus import GpuSpec
from pytest_sglang_tune.sim.models import ModelSpec

__all__ = [
    "PerfModel",
    "RooflinePerf",
    "StepShape",
    "StepTimer",
    "cuda_graph_batch_sizes",
    "perf_model_info",
]

log = logging.getLogger("sglang_sim")

ROOFLINE_DATA_VERSION = "sim-gpu-table-1"  # bump when GPU facts or roofline constants change
# -- roofline constants (documented; used only without aiconfigurator-core) ------------------------------------
ROOFLINE_MFU = 0.70  # achieved fraction of dense tensor peak in GEMM-bound steps (prefill)
ROOFLINE_BW_EFFICIENCY = 0.80  # achieved fraction of HBM bandwidth (aiconfigurator's own empirical factor)
ROOFLINE_FIXED_MS = 0.45  # per forward: embedding, sampling, norms, kernel tails
ROOFLINE_ALLREDUCE_LATENCY_MS = 0.008  # per all-reduce (2 per layer) when tp > 1

# -- CUDA graph and CPU overhead (documented estimates of SGLang 0.5.x behaviour) ------------------------------
# Kernel-launch (Python dispatch) cost per layer of a decode step run without a CUDA graph (batches above
# --cuda-graph-max-bs). CALIBRATED on one published point, gpustack-qwen3-14b-offline in
# benchmarks/published_points.json (median ITL 51.4 ms; 0.30 gives 51.8), which is therefore not scored.
EAGER_MS_PER_LAYER = 0.30
EAGER_SLOWDOWN = 1.10  # and the GPU work itself is ~10 % slower without graph-captured fusion
CPU_EXPOSED_MS = 0.10  # per step even with the overlap scheduler (launch + result sync it cannot hide)
CPU_MS = 0.60  # the scheduler's whole CPU time per step (Python: schedule, prepare, process results) ...
CPU_MS_PER_REQ = 0.010  # ... plus this per request in the batch
# -- tensor parallelism: the logits all-gather of the vocabulary-parallel LM head (SGLang's LogitsProcessor
# gathers bf16 logits of every sampled row across the tp ranks each step; not in aiconfigurator's op list).
LOGITS_ALLGATHER_LATENCY_MS = 0.010  # one NCCL all-gather launch + sync on NVLink
LOGITS_BYTES = 2  # bf16


@dataclass(frozen=True, slots=True)
class StepShape:
    """The work of one forward pass."""

    prefill_reqs: int = 0
    prefill_tokens: int = 0  # new tokens computed for the prefill requests
    prefill_context: int = 0  # tokens already in the KV cache for them (cached prefix, earlier chunks)
    decode_reqs: int = 0
    decode_context: int = 0  # sum of the KV lengths the decode requests attend to

    @property
    def kind(self) -> str:
        if self.prefill_tokens and self.decode_reqs:
            return "mixed"
        return "prefill" if self.prefill_tokens else ("decode" if self.decode_reqs else "idle")


class PerfModel(Protocol):
    """Prices one forward pass on the GPU(s) of one model replica."""

    name: str  # "aiconfigurator-core" | "roofline"
    data_version: str  # aiconfigurator-core's package version, or the sim's roofline table version
    sglang_data_version: str | None  # the SGLang kernel-data version asked for (None: roofline)
    detail: str

    def forward_ms(self, shape: StepShape) -> float: ...


class RooflinePerf:
    """A small roofline: ``max(FLOPs / (peak * MFU), bytes / (HBM * efficiency)) + all-reduce + fixed``.

    Weights are read at their stored width; FP8 weights compute at the GPU's FP8 rate where it has FP8 tensor
    cores (elsewhere they are dequantized to BF16, as SGLang's weight-only kernels do).
    """

    name = "roofline"
    data_version = ROOFLINE_DATA_VERSION
    sglang_data_version: str | None = None

    def __init__(self, model: ModelSpec, gpu: GpuSpec, *, tp: int, pp: int = 1, ep: int = 1) -> None:
        self.model, self.gpu, self.tp, self.pp = model, gpu, tp, pp
        self.detail = (
            f"roofline: MFU {ROOFLINE_MFU}, HBM efficiency {ROOFLINE_BW_EFFICIENCY}, "
            f"fixed {ROOFLINE_FIXED_MS} ms, {gpu.name}, tp={tp}" + (f", weights {model.quant}" if model.quant else "")
        )
        self._weight_bytes = model.weight_bytes() / (tp * pp)
        self._active_ratio = model.weight_bytes(active=True) / model.weight_bytes()
        self._active_flops_per_token = 2.0 * model.active_params / (tp * pp)
        self._kv_bytes_per_token = model.kv_bytes_per_token(tp, pp)
        # attention score + value FLOPs per (query token, context token) on one GPU
        self._attn_flops = 4.0 * model.num_layers * model.num_heads * model.head_dim / (tp * pp)
        fp8 = model.quant in ("fp8", "fp8_block") and gpu.fp8_flops > 0
        self._peak = (gpu.fp8_flops if fp8 else gpu.bf16_flops) * ROOFLINE_MFU

    def forward_ms(self, s: StepShape) -> float:
        tokens = s.prefill_tokens + s.decode_reqs
        if tokens == 0:
            return 0.0
        avg_new = s.prefill_tokens / max(1, s.prefill_reqs)
        prefill_pairs = s.prefill_tokens * (s.prefill_context / max(1, s.prefill_reqs) + avg_new / 2)
        linear = self._active_flops_per_token * tokens
        attn = self._attn_flops * (prefill_pairs + s.decode_context)
        weight_bytes = self._weight_bytes
        if self.model.num_experts:  # only the experts the batch touches are read
            touched = min(1.0, tokens * self.model.experts_per_token / self.model.num_experts)
            weight_bytes *= max(self._active_ratio, touched)
        kv_bytes = self._kv_bytes_per_token * (s.decode_context + s.prefill_context + s.prefill_tokens)
        compute_s = linear / self._peak + attn / (self.gpu.bf16_flops * ROOFLINE_MFU)
        memory_s = (weight_bytes + kv_bytes) / (self.gpu.hbm_bytes_per_s * ROOFLINE_BW_EFFICIENCY)
        comm_ms = 0.0
        if self.tp > 1:
            layers = self.model.num_layers / self.pp
            volume = 2 * layers * tokens * self.model.hidden_size * 2 * (self.tp - 1) / self.tp
            comm_ms = volume / self.gpu.link_bytes_per_s * 1e3 + 2 * layers * ROOFLINE_ALLREDUCE_LATENCY_MS
        return max(compute_s, memory_s) * 1e3 + comm_ms + ROOFLINE_FIXED_MS


def perf_model_info(perf: PerfModel | None, gpu: str, fallback_reason: str | None) -> dict[str, Any]:
    """``/server_info``'s ``sim.perf_model``: which model priced the steps, on what data, and why."""
    return {
        "name": perf.name if perf is not None else None,
        "data_version": perf.data_version if perf is not None else None,
        "gpu": gpu,
        "sglang_data_version": perf.sglang_data_version if perf is not None else None,
        "fallback_reason": fallback_reason,
    }


def cuda_graph_batch_sizes(max_bs: int, *, disable_padding: bool = False) -> tuple[int, ...]:
    """The decode batch sizes SGLang 0.5.x captures: 1, 2, 4, 8, 12, 16..256 by 8, 272..496 by 16, 512.. by 32."""
    if max_bs <= 0:
        return ()
    if disable_padding:
        sizes = list(range(1, max_bs + 1))
    else:
        sizes = [1, 2, 4, 8, 12, *range(16, 257, 8), *range(272, 512, 16), *range(512, max_bs + 1, 32)]
    sizes = sorted({s for s in sizes if s <= max_bs} | {max_bs})
    return tuple(sizes)


class StepTimer:
    """Seconds per scheduler step: the forward pass, CUDA-graph padding or eager penalty, logits all-gather, CPU.

    CPU: SGLang's scheduler spends ``CPU_MS + CPU_MS_PER_REQ * requests`` of Python per step. The overlap
    scheduler (default) prepares the next batch while the GPU runs this one, so a step lasts
    ``max(GPU + CPU_EXPOSED_MS, CPU)``; with ``--disable-overlap-schedule`` it lasts ``GPU + CPU``.
    """

    def __init__(
        self,
        perf: PerfModel,
        *,
        num_layers: int,
        graph_batch_sizes: tuple[int, ...],
        overlap_schedule: bool = True,
        extra_cpu_ms: float = 0.0,
        tp: int = 1,
        vocab_size: int = 0,
        link_bytes_per_s: float = 0.0,
    ) -> None:
        self.perf = perf
        self.graph_bs = graph_batch_sizes
        self.graph_cap = graph_batch_sizes[-1] if graph_batch_sizes else 0
        self.eager_ms = num_layers * EAGER_MS_PER_LAYER
        self.overlap = overlap_schedule
        self.cpu_ms = CPU_MS + extra_cpu_ms
        self.cpu_ms_per_req = CPU_MS_PER_REQ
        # ms per sampled row for the logits all-gather (0 at tp 1)
        self.gather_ms_per_row = (
            vocab_size * LOGITS_BYTES * (tp - 1) / tp / link_bytes_per_s * 1e3 if tp > 1 and link_bytes_per_s else 0.0
        )
        self.gather_ms = LOGITS_ALLGATHER_LATENCY_MS if tp > 1 else 0.0
        self._cache: dict[StepShape, float] = {}

    def forward_ms(self, shape: StepShape) -> float:
        """GPU time of the step including CUDA-graph padding (decode) or the eager penalty."""
        if shape.decode_reqs and not shape.prefill_tokens:
            n = shape.decode_reqs
            if n <= self.graph_cap:
                padded = self.graph_bs[bisect.bisect_left(self.graph_bs, n)]
                return self.perf.forward_ms(StepShape(decode_reqs=padded, decode_context=shape.decode_context))
            return self.perf.forward_ms(shape) * EAGER_SLOWDOWN + self.eager_ms
        return self.perf.forward_ms(shape)

    def step_seconds(self, shape: StepShape) -> float:
        cached = self._cache.get(shape)
        if cached is not None:
            return cached
        reqs = shape.prefill_reqs + shape.decode_reqs
        gpu = self.forward_ms(shape)
        if self.gather_ms:
            gpu += self.gather_ms + self.gather_ms_per_row * reqs
        cpu = self.cpu_ms + self.cpu_ms_per_req * reqs
        ms = max(gpu + CPU_EXPOSED_MS, cpu) if self.overlap else gpu + cpu
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[shape] = seconds = ms / 1e3
        return seconds


def env_perf_choice() -> str:
    return os.environ.get("SGLANG_SIM_PERF_MODEL", "auto").strip().lower() or "auto"
