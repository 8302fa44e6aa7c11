"""Facts about models, how wide their weights are, and SGLang's KV-cache capacity arithmetic.

Model architecture comes, in this order, from ``<model-path>/config.json`` when the path is a local folder,
from the model configs bundled with ``aiconfigurator-core`` (85+ models), or from the small table shipped in
``sim/data/models.json``; never from a model hub. Names that differ from a known model only by an
``-Instruct``/``-Chat``/``-Base``/date suffix, by organisation (``nvidia/Llama-3.1-8B-Instruct-FP8``) or by a
quantization suffix (``-FP8``, ``-AWQ``, ``-GPTQ``, ``-NVFP4``) reuse its architecture.

Weights are counted at their real width (:attr:`ModelSpec.weight_bytes`): linear layers (attention
projections, MLP, experts) at the checkpoint's quantization (``quantization_config`` in ``config.json``, the
name suffix, or ``--quantization``), embeddings and the LM head at the model dtype, as SGLang loads them.
GPU facts live in :mod:`.gpus`.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_sglang_tune.sim.gpus import GPUS, GpuSpec

__all__ = [
    "GPUS",
    "QUANT_BITS",
    "GpuSpec",
    "ModelSpec",
    "SimConfigError",
    "kv_capacity_tokens",
    "load_model_spec",
    "quant_from_flag",
]


class SimConfigError(Exception):
    """The simulated server cannot start with these arguments (SGLang would fail too); exit code 1."""


# Bits per weight of a quantized linear layer, scales included (NVFP4: one FP8 scale per 16 weights; MXFP4:
# one E8M0 scale per 32; INT4 AWQ/GPTQ: one BF16 scale per group of 128; FP8 block scales are negligible).
QUANT_BITS: dict[str, float] = {
    "fp8": 8.0,
    "fp8_block": 8.0,
    "int8": 8.0,
    "int4": 4.125,
    "nvfp4": 4.5,
    "mxfp4": 4.25,
}
# ``--quantization`` choices of SGLang 0.5.x -> the weight format they load.
_FLAG_QUANT = {
    "fp8": "fp8",
    "w8a8_fp8": "fp8",
    "modelopt": "fp8",
    "modelopt_fp8": "fp8",
    "w8a8_int8": "int8",
    "qoq": "int4",
    "awq": "int4",
    "awq_marlin": "int4",
    "gptq": "int4",
    "gptq_marlin": "int4",
    "marlin": "int4",
    "moe_wna16": "int4",
    "w4afp8": "int4",
    "bitsandbytes": "int4",
    "modelopt_fp4": "nvfp4",
    "petit_nvfp4": "nvfp4",
    "mxfp4": "mxfp4",
}
_NAME_QUANT = (
    (re.compile(r"[-_](fp8|FP8)([-_].*)?$"), "fp8"),
    (re.compile(r"[-_](NVFP4|nvfp4|FP4|fp4)([-_].*)?$"), "nvfp4"),
    (re.compile(r"[-_](AWQ|awq|GPTQ|gptq|Int4|int4|INT4)([-_].*)?$"), "int4"),
    (re.compile(r"[-_](W8A8|w8a8|Int8|INT8)([-_].*)?$"), "int8"),
)
_NAME_SUFFIXES = ("-Instruct", "-Chat", "-Base", "-Instruct-2507", "-Thinking-2507", "-it", "-IT")


def quant_from_flag(value: str | None) -> str | None:
    """The weight format ``--quantization value`` loads (None: not given, or not a weight format we model)."""
    if not value:
        return None
    return _FLAG_QUANT.get(str(value).lower())


def _quant_from_config(c: dict[str, Any]) -> str | None:
    """The weight format a checkpoint's ``quantization_config`` (or NVIDIA's ``hf_quant_config``) declares."""
    q = c.get("quantization_config")
    if not isinstance(q, dict):
        hq = c.get("hf_quant_config")
        q = hq.get("quantization") if isinstance(hq, dict) else None
        if not isinstance(q, dict):
            return None
    method = str(q.get("quant_method") or q.get("quant_algo") or "").lower()
    algo = str(q.get("quant_algo") or "").lower()
    if method == "fp8" or algo == "fp8":
        return "fp8_block" if q.get("weight_block_size") else "fp8"
    if "nvfp4" in (method, algo) or algo.startswith("nvfp4"):
        return "nvfp4"
    if method == "mxfp4":
        return "mxfp4"
    if method in ("awq", "gptq", "awq_marlin", "gptq_marlin") or "awq" in algo:
        return "int4" if int(q.get("bits") or q.get("w_bit") or 4) <= 4 else "int8"
    if method == "bitsandbytes":
        return "int4" if q.get("load_in_4bit", True) else "int8"
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        for group in groups.values() if isinstance(groups, dict) else []:
            w = group.get("weights") if isinstance(group, dict) else None
            if isinstance(w, dict):
                bits = int(w.get("num_bits") or 16)
                if w.get("type") == "float" and bits == 8:
                    return "fp8"
                if bits <= 4:
                    return "int4"
                if bits == 8:
                    return "int8"
    return None


def _quant_from_name(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1]
    for pattern, quant in _NAME_QUANT:
        if pattern.search(base):
            return quant
    return None


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "fp8": 1}
_KV_DTYPE_BYTES = {"fp8_e5m2": 1, "fp8_e4m3": 1, "mxfp8": 1, "nvfp4": 0.5, "fp4_mx_block16": 0.5}


@dataclass(frozen=True)
class ModelSpec:
    """The architecture numbers the sim needs (dense, MoE and MLA models) and how its weights are stored."""

    name: str  # canonical name (the aiconfigurator / table key, or the local folder's name)
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
    quant: str | None = None  # weight format of the linear layers: a key of QUANT_BITS, None = model dtype
    quant_source: str | None = None  # "config.json", "model name", "--quantization"
    local_dir: str | None = None  # a local checkpoint folder (read by the perf model, never a hub)
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def total_params(self) -> float:
        return self._params(active=False)

    @property
    def active_params(self) -> float:
        return self._params(active=True)

    @property
    def embed_params(self) -> float:
        return float(self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2))

    def _params(self, *, active: bool) -> float:
        return self.linear_params(active=active) + self.embed_params

    def linear_params(self, *, active: bool = False) -> float:
        """Parameters of the layers a quantized checkpoint stores narrow (attention, MLP, experts)."""
        h = self.hidden_size
        attn = h * self.num_heads * self.head_dim * 2 + h * self.num_kv_heads * self.head_dim * 2
        if self.num_experts:
            per_expert = 3 * h * self.moe_intermediate_size
            mlp = per_expert * (self.experts_per_token if active else self.num_experts)
        else:
            mlp = 3 * h * self.intermediate_size
        return float(self.num_layers * (attn + mlp))

    @property
    def weight_bits(self) -> float:
        """Bits per linear-layer weight (16 for a BF16 checkpoint)."""
        return QUANT_BITS[self.quant] if self.quant else 8.0 * self.dtype_bytes

    def weight_bytes(self, *, active: bool = False) -> float:
        """Bytes of all weights (or of those one token reads, ``active``): linear layers at their width."""
        return self.linear_params(active=active) * self.weight_bits / 8 + self.embed_params * self.dtype_bytes

    def with_quant(self, quant: str, source: str) -> ModelSpec:
        """This model with its linear layers stored as ``quant``."""
        return replace(self, quant=quant, quant_source=source)

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
    for pattern, _quant in _NAME_QUANT:
        stripped = pattern.sub("", base)
        if stripped != base:
            base = stripped
            out.append(f"{org}/{base}" if org else base)
            break
    for suffix in _NAME_SUFFIXES:
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


def _bundled_config(cfg_dir: Path, name: str) -> dict[str, Any] | None:
    path = cfg_dir / (name.replace("/", "--") + "_config.json")
    if not path.is_file():
        return None
    config: dict[str, Any] = json.loads(path.read_text("utf-8"))
    quant = cfg_dir / (name.replace("/", "--") + "_hf_quant_config.json")
    if quant.is_file() and "quantization_config" not in config:
        config["hf_quant_config"] = json.loads(quant.read_text("utf-8"))
    return config


def load_model_spec(model_path: str, quantization: str | None = None) -> ModelSpec:
    """The architecture of ``model_path`` (and ``--quantization``); :class:`SimConfigError` if unknown."""
    spec = _find_model(model_path)
    quant = _quant_from_config(spec.config)
    source = "config.json"
    if quant is None and not spec.local_dir:
        quant, source = _quant_from_name(model_path), "model name"
    flag = quant_from_flag(quantization)
    if flag is not None:
        quant, source = flag, "--quantization"
    return spec.with_quant(quant, source) if quant else spec


def _find_model(model_path: str) -> ModelSpec:
    local = Path(model_path)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise SimConfigError(
                f"model path {model_path!r} is a folder without config.json; the simulated server reads the "
                "architecture from <model-path>/config.json (it never downloads one)"
            )
        try:
            config = json.loads((local / "config.json").read_text("utf-8"))
        except ValueError as exc:
            raise SimConfigError(f"{local / 'config.json'}: not valid JSON ({exc})") from None
        hf_quant = local / "hf_quant_config.json"
        if hf_quant.is_file() and "quantization_config" not in config:
            config["hf_quant_config"] = json.loads(hf_quant.read_text("utf-8"))
        spec = _spec_from_config(local.name, f"{local / 'config.json'}", config)
        return replace(spec, local_dir=str(local.resolve()))
    cfg_dir = _aiconfigurator_configs_dir()
    table = _shipped_table()
    candidates = _canonical_candidates(model_path)
    # the same base name under another organisation (nvidia/Llama-3.1-8B-Instruct-FP8 -> meta-llama/...)
    bases = {c.rpartition("/")[2] for c in candidates}
    candidates += [k for k in known_models() if k.rpartition("/")[2] in bases and k not in candidates]
    for cand in candidates:
        if cfg_dir is not None and (config := _bundled_config(cfg_dir, cand)) is not None:
            return _spec_from_config(cand, "aiconfigurator-core model_configs", config)
        if cand in table:
            return _spec_from_config(cand, "sim/data/models.json", table[cand])
    raise SimConfigError(
        f"model {model_path!r} is unknown to the simulated server (no local folder with config.json, not bundled "
        f"with aiconfigurator-core, not in sim/data/models.json); known models: {', '.join(known_models())}"
    )


def _spec_from_config(name: str, source: str, c: dict[str, Any]) -> ModelSpec:
    raw = c
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
        config=raw,
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

    Weights are counted at their stored width (:meth:`ModelSpec.weight_bytes`), so an FP8 checkpoint leaves
    about twice the KV room of its BF16 original.

    ``rest = avail_after_weights - total * (1 - mem_fraction_static)``; ``tokens = rest / cell_size``.
    """
    gib = float(1 << 30)
    total = gpu.mem_total_mib / 1024.0
    weights = model.weight_bytes() / (tp * pp) / gib
    avail = total - weights - RUNTIME_OVERHEAD_GIB
    rest = avail - total * (1.0 - mem_fraction_static)
    cell = model.kv_bytes_per_token(tp, pp, kv_bytes)
    return max(0, int(rest * gib // cell))
