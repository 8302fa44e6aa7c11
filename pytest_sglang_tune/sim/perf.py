"""How long one scheduler step takes: a forward-pass model plus SGLang's CUDA-graph and CPU costs.

``PerfModel`` prices one forward pass (prefill, decode or mixed) on the GPU:

* :class:`AiconfiguratorPerf` asks NVIDIA's ``aiconfigurator-core`` (pin 0.12.0, Apache-2.0) through its
  forward-pass model ``RustForwardPassPerfModel.estimate_forward_pass_time_ms`` for ``backend="sglang"``
  (collected kernel data of SGLang 0.5.14 on the chosen GPU). Offline, pure Rust per query (~10 µs).
* :class:`RooflinePerf` stands in where ``aiconfigurator-core`` is not installable (it ships wheels for
  Linux x86-64 only): ``max(compute, memory) + all-reduce + fixed`` with the constants documented below,
  calibrated to land within ~10 % of aiconfigurator for dense 8B models on H100.

:class:`StepTimer` turns a forward pass into a scheduler step as SGLang runs it: decode batches up to the
CUDA-graph cap replay a captured graph padded to the next captured batch size; larger ones run eagerly and pay
the launch overhead (:data:`EAGER_*`); every step pays a CPU overhead (:data:`CPU_*`), smaller when the overlap
scheduler hides most of it.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pytest_sglang_tune.sim.models import GpuSpec, ModelSpec

__all__ = [
    "AICONFIGURATOR_PIN",
    "AiconfiguratorPerf",
    "PerfModel",
    "RooflinePerf",
    "StepShape",
    "StepTimer",
    "cuda_graph_batch_sizes",
    "make_perf_model",
]

log = logging.getLogger("sglang_sim")

AICONFIGURATOR_PIN = "0.12.0"
AICONFIGURATOR_SGLANG_DATA = "0.5.14"  # newest SGLang kernel data bundled with aiconfigurator-core 0.12.0

# -- roofline constants (documented; used only without aiconfigurator-core) ------------------------------------
ROOFLINE_MFU = 0.70  # achieved fraction of dense BF16 peak in GEMM-bound steps (prefill)
ROOFLINE_BW_EFFICIENCY = 0.80  # achieved fraction of HBM bandwidth (aiconfigurator's own empirical factor)
ROOFLINE_FIXED_MS = 0.45  # per forward: embedding, sampling, norms, kernel tails
ROOFLINE_ALLREDUCE_LATENCY_MS = 0.008  # per all-reduce (2 per layer) when tp > 1

# -- CUDA graph and CPU overhead (documented estimates of SGLang 0.5.x behaviour) ------------------------------
EAGER_MS_PER_LAYER = 0.05  # kernel-launch cost per layer of a decode step run without a CUDA graph
EAGER_SLOWDOWN = 1.10  # and the GPU work itself is ~10 % slower without graph-captured fusion
CPU_OVERLAP_MS = 0.10  # exposed scheduler CPU time per step with the overlap scheduler (default)
CPU_OVERLAP_MS_PER_REQ = 0.002
CPU_NO_OVERLAP_MS = 0.60  # with --disable-overlap-schedule the whole CPU step is exposed
CPU_NO_OVERLAP_MS_PER_REQ = 0.010


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

    name: str

    def forward_ms(self, shape: StepShape) -> float: ...


@contextlib.contextmanager
def _fast_yaml() -> Iterator[None]:
    """Let aiconfigurator read its system YAML files with libyaml (same data, ~0.4 s faster startup)."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        yield
        return
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        yield
        return
    original = yaml.safe_load

    def safe_load(stream: Any) -> Any:
        return yaml.load(stream, Loader=loader)

    yaml.safe_load = safe_load
    try:
        yield
    finally:
        yaml.safe_load = original


class AiconfiguratorPerf:
    """``aiconfigurator-core``'s forward-pass model for SGLang on one GPU type."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, *, tp: int, pp: int = 1) -> None:
        from aiconfigurator_core.sdk import RustForwardPassPerfModel

        config = {
            "schema_version": 1,
            "model_name": model.name,
            "system_name": gpu.name,
            "backend": "sglang",
            "backend_version": AICONFIGURATOR_SGLANG_DATA,
            "tp_size": tp,
            "pp_size": pp,
        }
        with _fast_yaml():
            self._model = RustForwardPassPerfModel.from_native(config)
        self._estimate = self._model._inner.estimate_forward_pass_time_ms  # JSON string in, ms out
        self.name = f"aiconfigurator-core {_installed_version()}"
        self.detail = f"RustForwardPassPerfModel sglang {AICONFIGURATOR_SGLANG_DATA} data, {gpu.name}, tp={tp}"
        self.forward_ms(StepShape(decode_reqs=1, decode_context=1))  # loads the perf tables now, not mid-run

    def forward_ms(self, shape: StepShape) -> float:
        if not shape.prefill_tokens and not shape.decode_reqs:
            return 0.0
        has_prefill = shape.prefill_tokens > 0
        has_decode = shape.decode_reqs > 0
        n_prefill = shape.prefill_reqs if has_prefill else 0
        prefill_kv = shape.prefill_context if has_prefill else 0
        n_decode = shape.decode_reqs if has_decode else 0
        decode_kv = max(shape.decode_context, shape.decode_reqs) if has_decode else 0
        sched = (
            f'{{"num_prefill_requests":{n_prefill},"sum_prefill_tokens":{shape.prefill_tokens},'
            f'"var_prefill_length":0.0,"sum_prefill_kv_tokens":{prefill_kv},"num_decode_requests":{n_decode},'
            f'"sum_decode_kv_tokens":{decode_kv},"var_decode_kv_tokens":0.0}}'
        )
        fpm = (
            '{"version":1,"worker_id":"sim","dp_rank":0,"counter_id":0,"wall_time":0.0,'
            f'"scheduled_requests":{sched},"queued_requests":{_EMPTY_QUEUE}}}'
        )
        value = self._estimate(fpm)
        if value is None:  # pragma: no cover - native models always answer
            raise RuntimeError(f"aiconfigurator-core returned no estimate for {shape}")
        return float(value)


_EMPTY_QUEUE = json.dumps(
    {
        "num_prefill_requests": 0,
        "sum_prefill_tokens": 0,
        "var_prefill_length": 0.0,
        "num_decode_requests": 0,
        "sum_decode_kv_tokens": 0,
        "var_decode_kv_tokens": 0.0,
    },
    separators=(",", ":"),
)


def _installed_version() -> str:
    try:
        from importlib.metadata import version

        return version("aiconfigurator-core")
    except Exception:  # pragma: no cover - metadata missing
        return AICONFIGURATOR_PIN


class RooflinePerf:
    """A small roofline: ``max(FLOPs / (peak * MFU), bytes / (HBM * efficiency)) + all-reduce + fixed``."""

    name = "roofline"

    def __init__(self, model: ModelSpec, gpu: GpuSpec, *, tp: int, pp: int = 1) -> None:
        self.model, self.gpu, self.tp, self.pp = model, gpu, tp, pp
        self.detail = (
            f"roofline: MFU {ROOFLINE_MFU}, HBM efficiency {ROOFLINE_BW_EFFICIENCY}, "
            f"fixed {ROOFLINE_FIXED_MS} ms, {gpu.name}, tp={tp}"
        )
        self._weight_bytes = model.total_params * model.dtype_bytes / (tp * pp)
        self._active_flops_per_token = 2.0 * model.active_params / (tp * pp)
        self._kv_bytes_per_token = model.kv_bytes_per_token(tp, pp)
        # attention score + value FLOPs per (query token, context token) on one GPU
        self._attn_flops = 4.0 * model.num_layers * model.num_heads * model.head_dim / (tp * pp)

    def forward_ms(self, s: StepShape) -> float:
        tokens = s.prefill_tokens + s.decode_reqs
        if tokens == 0:
            return 0.0
        avg_new = s.prefill_tokens / max(1, s.prefill_reqs)
        prefill_pairs = s.prefill_tokens * (s.prefill_context / max(1, s.prefill_reqs) + avg_new / 2)
        flops = self._active_flops_per_token * tokens + self._attn_flops * (prefill_pairs + s.decode_context)
        weight_bytes = self._weight_bytes
        if self.model.num_experts:  # only the experts the batch touches are read
            touched = min(1.0, tokens * self.model.experts_per_token / self.model.num_experts)
            weight_bytes *= max(self.model.active_params / self.model.total_params, touched)
        kv_bytes = self._kv_bytes_per_token * (s.decode_context + s.prefill_context + s.prefill_tokens)
        compute_s = flops / (self.gpu.bf16_flops * ROOFLINE_MFU)
        memory_s = (weight_bytes + kv_bytes) / (self.gpu.hbm_bytes_per_s * ROOFLINE_BW_EFFICIENCY)
        comm_ms = 0.0
        if self.tp > 1:
            layers = self.model.num_layers / self.pp
            volume = 2 * layers * tokens * self.model.hidden_size * 2 * (self.tp - 1) / self.tp
            comm_ms = volume / self.gpu.nvlink_bytes_per_s * 1e3 + 2 * layers * ROOFLINE_ALLREDUCE_LATENCY_MS
        return max(compute_s, memory_s) * 1e3 + comm_ms + ROOFLINE_FIXED_MS


def make_perf_model(
    choice: str, model: ModelSpec, gpu: GpuSpec, *, tp: int, pp: int = 1
) -> tuple[PerfModel, str | None]:
    """``auto`` | ``aiconfigurator`` | ``roofline`` -> (model, note why the roofline runs, if it does)."""
    if choice not in ("auto", "aiconfigurator", "roofline"):
        raise ValueError(f"SGLANG_SIM_PERF_MODEL={choice!r}; allowed: auto, aiconfigurator, roofline")
    if choice == "roofline":
        return RooflinePerf(model, gpu, tp=tp, pp=pp), "SGLANG_SIM_PERF_MODEL=roofline"
    try:
        return AiconfiguratorPerf(model, gpu, tp=tp, pp=pp), None
    except ImportError as exc:
        if choice == "aiconfigurator":
            raise RuntimeError(
                f"SGLANG_SIM_PERF_MODEL=aiconfigurator but aiconfigurator-core is not installed ({exc}); "
                f"install 'aiconfigurator-core=={AICONFIGURATOR_PIN}' (Linux x86-64 only) or use roofline"
            ) from exc
        note = f"aiconfigurator-core is not installed ({exc})"
    except Exception as exc:  # the model or GPU is not covered by aiconfigurator's data
        if choice == "aiconfigurator":
            raise RuntimeError(f"aiconfigurator-core cannot model {model.name} on {gpu.name}: {exc}") from exc
        note = f"aiconfigurator-core cannot model {model.name} on {gpu.name}: {str(exc)[:200]}"
    log.warning("perf model: roofline (%s)", note)
    return RooflinePerf(model, gpu, tp=tp, pp=pp), note


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
    """Seconds per scheduler step: the forward pass, CUDA-graph padding or eager penalty, CPU overhead."""

    def __init__(
        self,
        perf: PerfModel,
        *,
        num_layers: int,
        graph_batch_sizes: tuple[int, ...],
        overlap_schedule: bool = True,
        extra_cpu_ms: float = 0.0,
    ) -> None:
        self.perf = perf
        self.graph_bs = graph_batch_sizes
        self.graph_cap = graph_batch_sizes[-1] if graph_batch_sizes else 0
        self.eager_ms = num_layers * EAGER_MS_PER_LAYER
        self.cpu_ms = (CPU_OVERLAP_MS if overlap_schedule else CPU_NO_OVERLAP_MS) + extra_cpu_ms
        self.cpu_ms_per_req = CPU_OVERLAP_MS_PER_REQ if overlap_schedule else CPU_NO_OVERLAP_MS_PER_REQ
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
        ms = self.forward_ms(shape) + self.cpu_ms + self.cpu_ms_per_req * reqs
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[shape] = seconds = ms / 1e3
        return seconds


def env_perf_choice() -> str:
    return os.environ.get("SGLANG_SIM_PERF_MODEL", "auto").strip().lower() or "auto"
