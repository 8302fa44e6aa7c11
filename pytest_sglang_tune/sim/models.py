"""Facts about models and GPUs, and SGLang's KV-cache capacity arithmetic.

Model architecture comes, in this order, from ``<model-path>/config.json`` when the path is a local folder,
from the model configs bundled with ``aiconfigurator-core`` (85+ models), or from the small table shipped in
``sim/data/models.json``. GPU facts are the vendor numbers (HBM size as CUDA reports it, bandwidth, BF16 dense
tensor throughput, NVLink bandwidth per direction).
"""

from __future__ import annotations

import importlib.resources
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "GPUS",
    "GpuSpec",
    "ModelSpec",
    "SimConfigError",
    "kv_capacity_tokens",
    "load_model_spec",
]


class SimConfigError(Exception):
    """The simulated server cannot start with these arguments (SGLang would fail too); exit code 1."""


@dataclass(frozen=True)
class GpuSpec:
    name: str
    mem_total_mib: int  # what torch.cuda.mem_get_info reports as total
    hbm_bytes_per_s: float
    bf16_flops: float
    nvlink_bytes_per_s: float


GPUS: dict[str, GpuSpec] = {
    "h100_sxm": GpuSpec("h100_sxm", 81_559, 3.35e12, 989e12, 450e9),
    "h200_sxm": GpuSpec("h200_sxm", 143_771, 4.8e12, 989e12, 450e9),
}

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "fp8": 1}
_KV_DTYPE_BYTES = {"fp8_e5m2": 1, "fp8_e4m3": 1, "mxfp8": 1, "nvfp4": 0.5, "fp4_mx_block16": 0.5}


@dataclass(frozen=True)
class ModelSpec:
    """The architecture numbers the sim needs (dense, MoE and MLA models)."""

    name: str  # canonical name (the aiconfigurator / table key)
    source: str  # where the facts came from
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_len: int
    tie_word_embeddings: bool
    dtype_bytes: int
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    kv_lora_rank: int = 0  # MLA (DeepSeek): compressed KV width per token and layer
    qk_rope_head_dim: int = 0

    @property
    def total_params(self) -> float:
        return self._params(active=False)

    @property
    def active_params(self) -> float:
        return self._params(active=True)

    def _params(self, *, active: bool) -> float:
        h = self.hidden_size
        attn = h * self.num_heads * self.head_dim * 2 + h * self.num_kv_heads * self.head_dim * 2
        if self.num_experts:
            per_expert = 3 * h * self.moe_intermediate_size
            mlp = per_expert * (self.experts_per_token if active else self.num_experts)
        else:
            mlp = 3 * h * self.intermediate_size
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return float(self.num_layers * (attn + mlp) + embed)

    def kv_bytes_per_token(self, tp: int, pp: int = 1, kv_dtype_bytes: float | None = None) -> float:
        """KV-cache bytes one token takes on one GPU (SGLang's ``cell_size``)."""
        width = kv_dtype_bytes if kv_dtype_bytes is not None else self.dtype_bytes
        layers = math.ceil(self.num_layers / pp)
        if self.kv_lora_rank:
            return (self.kv_lora_rank + self.qk_rope_head_dim) * layers * width
        kv_heads = max(1, self.num_kv_heads // tp)
        return kv_heads * self.head_dim * layers * 2 * width


def _canonical_candidates(model_path: str) -> list[str]:
    """``meta-llama/Llama-3.1-8B-Instruct`` -> the names the bundled tables might use for it."""
    name = model_path.rstrip("/")
    out = [name]
    org, _, base = name.rpartition("/")
    for suffix in ("-Instruct", "-Chat", "-Base"):
        if base.endswith(suffix):
            out.append(f"{org}/{base[: -len(suffix)]}" if org else base[: -len(suffix)])
    more = []
    for cand in out:
        o, _, b = cand.rpartition("/")
        if b.startswith("Llama-3"):
            more.append(f"{o}/Meta-{b}")
        elif b.startswith("Meta-Llama-3"):
            more.append(f"{o}/{b[len('Meta-') :]}")
    return out + more


def _aiconfigurator_configs_dir() -> Path | None:
    try:
        root = importlib.resources.files("aiconfigurator_core") / "model_configs"
    except (ModuleNotFoundError, TypeError):
        return None
    path = Path(str(root))
    return path if path.is_dir() else None


def _shipped_table() -> dict[str, dict[str, Any]]:
    text = (importlib.resources.files("pytest_sglang_tune.sim") / "data" / "models.json").read_text("utf-8")
    models: dict[str, dict[str, Any]] = json.loads(text)["models"]
    return models


def known_models() -> list[str]:
    names = set(_shipped_table())
    cfg_dir = _aiconfigurator_configs_dir()
    if cfg_dir is not None:
        names |= {
            p.name[: -len("_config.json")].replace("--", "/", 1)
            for p in cfg_dir.glob("*_config.json")
            if not p.name.endswith("_hf_quant_config.json")
        }
    return sorted(names)


def load_model_spec(model_path: str) -> ModelSpec:
    """The architecture of ``model_path``; :class:`SimConfigError` naming the known models if unknown."""
    local = Path(model_path)
    if local.is_dir() and (local / "config.json").is_file():
        config = json.loads((local / "config.json").read_text("utf-8"))
        return _spec_from_config(local.name, f"{local / 'config.json'}", config)
    cfg_dir = _aiconfigurator_configs_dir()
    table = _shipped_table()
    for cand in _canonical_candidates(model_path):
        if cfg_dir is not None:
            path = cfg_dir / (cand.replace("/", "--") + "_config.json")
            if path.is_file():
                return _spec_from_config(cand, "aiconfigurator-core model_configs", json.loads(path.read_text()))
        if cand in table:
            return _spec_from_config(cand, "sim/data/models.json", table[cand])
    raise SimConfigError(
        f"model {model_path!r} is unknown to the simulated server (no local config.json, not bundled with "
        f"aiconfigurator-core, not in sim/data/models.json); known models: {', '.join(known_models())}"
    )


def _spec_from_config(name: str, source: str, c: dict[str, Any]) -> ModelSpec:
    text = c.get("text_config") if isinstance(c.get("text_config"), dict) else None
    if text:  # multimodal wrappers keep the language model in text_config
        c = {**c, **text}
    try:
        hidden = int(c["hidden_size"])
        heads = int(c["num_attention_heads"])
        layers = int(c["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SimConfigError(f"{source}: model config of {name!r} lacks {exc}") from exc
    experts = int(c.get("num_experts") or c.get("n_routed_experts") or c.get("num_local_experts") or 0)
    dtype = str(c.get("torch_dtype") or c.get("dtype") or "bfloat16")
    return ModelSpec(
        name=name,
        source=source,
        architecture=str((c.get("architectures") or ["unknown"])[0]),
        hidden_size=hidden,
        intermediate_size=int(c.get("intermediate_size") or 4 * hidden),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or hidden // heads),
        vocab_size=int(c.get("vocab_size") or 32000),
        context_len=int(c.get("max_position_embeddings") or 4096),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        dtype_bytes=_DTYPE_BYTES.get(dtype, 2),
        num_experts=experts,
        experts_per_token=int(c.get("num_experts_per_tok") or c.get("moe_topk") or (2 if experts else 0)),
        moe_intermediate_size=int(c.get("moe_intermediate_size") or c.get("intermediate_size") or 0),
        kv_lora_rank=int(c.get("kv_lora_rank") or 0),
        qk_rope_head_dim=int(c.get("qk_rope_head_dim") or 0),
    )


def kv_dtype_bytes(kv_cache_dtype: str | None, model: ModelSpec) -> float:
    """Bytes per KV element for ``--kv-cache-dtype`` (``auto`` follows the model's dtype)."""
    if not kv_cache_dtype or kv_cache_dtype in ("auto", "bf16", "bfloat16"):
        return float(model.dtype_bytes)
    return float(_KV_DTYPE_BYTES.get(kv_cache_dtype, model.dtype_bytes))


# CUDA context, NCCL buffers and allocator slack measured after weight loading on a real H100
# (SGLang logs "avail mem" about 0.7 GB below total - weights for an 8B model at tp1).
RUNTIME_OVERHEAD_GIB = 0.7


def kv_capacity_tokens(
    model: ModelSpec, gpu: GpuSpec, *, tp: int, pp: int, mem_fraction_static: float, kv_bytes: float
) -> int:
    """SGLang's ``profile_max_num_token``: KV tokens that fit in the static memory left after the weights.

    ``rest = avail_after_weights - total * (1 - mem_fraction_static)``; ``tokens = rest / cell_size``.
    """
    gib = float(1 << 30)
    total = gpu.mem_total_mib / 1024.0
    weights = model.total_params * model.dtype_bytes / (tp * pp) / gib
    avail = total - weights - RUNTIME_OVERHEAD_GIB
    rest = avail - total * (1.0 - mem_fraction_static)
    cell = model.kv_bytes_per_token(tp, pp, kv_bytes)
    return max(0, int(rest * gib // cell))
