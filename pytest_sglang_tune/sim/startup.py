"""How long a real SGLang server of a resolved config would take to become ready: the *virtual* deploy time
that GPU-time accounting charges a sim deployment and ``sglang-tune predict`` charges each config.

A stated default, not a measurement (the sim starts in about a second). It adds:

* ``BASE_S`` — process start, imports, NCCL/torch.distributed initialisation, tokenizer and the first warm-up
  request: ~30 s in SGLang 0.5 start-up logs of 8B models on one H100 (launch → "fired up"), less loading;
* weights over ``LOAD_BYTES_PER_S`` per GPU (each tp/pp rank reads its shard): 2 GB/s, a safetensors load from a
  local NVMe disk or page cache into GPU memory (cold network storage is slower; users with a warm cache faster);
* CUDA-graph capture: ``GRAPH_S_PER_BATCH_SIZE`` per captured batch size (about 0.35 s each in SGLang's
  "Capture cuda graph" progress for 8B on H100), none with ``--disable-cuda-graph``.

For an 8B BF16 model on one H100 (16 GB, ~36 batch sizes): 30 + 8 + 12.6 ≈ 51 s.
"""

from __future__ import annotations

from typing import Any

BASE_S = 30.0
LOAD_BYTES_PER_S = 2.0e9
GRAPH_S_PER_BATCH_SIZE = 0.35


def predicted_startup_s(cfg: Any) -> float:
    """Seconds from launch to ready for ``cfg`` (a :class:`~.config.ResolvedServer`), by the defaults above."""
    tp, pp = int(cfg.args.get("tp_size") or 1), int(cfg.args.get("pp_size") or 1)
    weights = cfg.model.weight_bytes() / max(1, tp * pp) / LOAD_BYTES_PER_S
    graphs = 0.0 if cfg.args.get("disable_cuda_graph") else GRAPH_S_PER_BATCH_SIZE * len(cfg.graph_batch_sizes)
    return float(round(BASE_S + weights + graphs, 3))
