"""From SGLang's command line and the ``SGLANG_SIM_*`` environment to a resolved simulated server.

Flags are parsed with the flag table of one SGLang version (:func:`pytest_sglang_tune.flags.load_flag_table`),
so the command line is exactly SGLang's and an unknown flag exits with argparse's message (code 2). Defaults that
SGLang resolves at startup are resolved the way SGLang 0.5.x does for the simulated GPU (:mod:`.gpus`):

* ``--chunked-prefill-size`` and the decode CUDA-graph cap by GPU memory tier (8192/256 on H100, 16384/512 on
  B200; 512 at tp >= 4 below 160 GB);
* ``--mem-fraction-static`` = ``(gpu_mem - reserved) / gpu_mem`` with ``reserved`` (MiB) =
  ``512 + chunk * 1.5 + cuda_graph_max_bs * 2 + tp * pp / 8 * 1024``, at least 10 GiB on GPUs over 60 GB;
* KV capacity from the model (weights at their stored width, see :mod:`.models`), the GPU and
  ``--mem-fraction-static`` (:func:`.models.kv_capacity_tokens`), capped by ``--max-total-tokens``;
* ``--max-running-requests`` = ``min(max_total_tokens // 2, clamp(max_total_tokens / context_len * 512, 2048,
  4096))`` unless given (then capped by the latter);
* prefill steps carry no decodes unless ``--enable-mixed-chunk`` (with chunked prefill on), as in SGLang.

Sim-only settings are environment variables: ``SGLANG_SIM_GPU`` (any GPU in :data:`.gpus.GPUS`),
``SGLANG_SIM_NUM_GPUS`` (8), ``SGLANG_SIM_PERF_MODEL`` (``auto`` | ``aiconfigurator`` | ``roofline``),
``SGLANG_SIM_SEED``, ``SGLANG_SIM_SGLANG_VERSION`` (flag table and kernel-data version; newest by default),
``SGLANG_SIM_PREFILL`` (``strict`` | ``mixed``: override what ``--enable-mixed-chunk`` says, for comparing
the two without changing the flags and so the ``config_id``) and ``SGLANG_SIM_FORCE_LAG_MS`` (test hook:
artificial CPU time per step).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_sglang_tune.sim.core import EngineConfig
from pytest_sglang_tune.sim.gpus import GPU_ALIASES, GPUS, GpuSpec, resolve_gpu, sglang_memory_defaults
from pytest_sglang_tune.sim.models import (
    ModelSpec,
    SimConfigError,
    kv_capacity_tokens,
    kv_dtype_bytes,
    load_model_spec,
    quant_from_flag,
)
from pytest_sglang_tune.sim.perf import cuda_graph_batch_sizes

__all__ = ["PHYSICS_VERSION", "ResolvedServer", "SimSettings", "parse_server_args", "resolve_server"]

# Bump when the sim's physics changes what a configuration measures (scheduling, step times, memory, request
# path), so reports from different physics are not compared as if the server were the same.
# 1: the first sim (mixed prefill by default, H100/H200 only). 2: issue 11 (SGLang's strict prefill default,
# front-end cost, weights at their stored width, every aiconfigurator GPU, version-aware kernel data, logits
# all-gather under tp, scheduler CPU time overlapped with the GPU).
PHYSICS_VERSION = 2
PREFILL_MODES = ("strict", "mixed")

MODELLED_POLICIES = ("fcfs", "lpm", "random", "lof")

# Flags whose effect the sim reproduces (scheduling, memory, step time, API behaviour).
MODELLED = frozenset(
    """
    model_path tokenizer_path host port tp_size dp_size mem_fraction_static max_total_tokens chunked_prefill_size
    max_prefill_tokens schedule_policy max_running_requests cuda_graph_max_bs cuda_graph_bs disable_cuda_graph
    cuda_graph_max_bs_decode cuda_graph_bs_decode cuda_graph_config disable_decode_cuda_graph
    cuda_graph_backend_decode disable_cuda_graph_padding enable_metrics api_key admin_api_key served_model_name
    stream_interval incremental_streaming_output stream_output page_size context_length disable_radix_cache
    random_seed enable_cache_report stream_response_default_include_usage schedule_conservativeness
    enable_mixed_chunk disable_overlap_schedule quantization ep_size
    """.split()
)
# Flags with no effect on what a benchmark measures, in SGLang as in the sim.
NO_EFFECT = frozenset(
    """
    log_level log_level_http log_requests log_requests_level trust_remote_code skip_server_warmup watchdog_timeout
    tokenizer_mode enable_p2p_check download_dir revision show_time_cost decode_log_interval file_storage_path
    device tokenizer_worker_num
    """.split()
)
PARTLY = {
    "pp_size": "pp_size (weights, KV and step time split over stages; micro-batch pipelining not modelled)",
    "kv_cache_dtype": "kv_cache_dtype (KV capacity only; step times assume the model dtype)",
}
# What the sim never models, whatever the flags (reported in /server_info as sim.not_modelled).
ALWAYS_NOT_MODELLED = (
    "speculative decoding",
    "torch.compile and attention-backend choice (one kernel set per GPU and SGLang data version)",
    "per-output-token detokenizer/streaming cost in the front end",
    "prefill/decode disaggregation, DP attention, cache-aware routers",
    "hierarchical (host-memory) KV cache",
    "n > 1, stop strings, logprobs, tool calls (outputs are planned, not sampled)",
)


@dataclass(frozen=True)
class SimSettings:
    """The ``SGLANG_SIM_*`` environment."""

    gpu: str = "h100_sxm"
    num_gpus: int = 8
    perf_model: str = "auto"
    seed: int | None = None
    force_lag_ms: float = 0.0
    sglang_version: str | None = None
    prefill: str | None = None  # "strict" | "mixed": overrides --enable-mixed-chunk; None follows the flag

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SimSettings:
        def number(name: str, kind: type, default: Any) -> Any:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise SimConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None

        raw_gpu = env.get("SGLANG_SIM_GPU", "").strip() or "h100_sxm"
        gpu = resolve_gpu(raw_gpu)
        if gpu is None:
            names = ", ".join([*GPUS, *(f"{a} (= {t})" for a, t in GPU_ALIASES.items())])
            raise SimConfigError(f"SGLANG_SIM_GPU={raw_gpu!r} is not simulated; choose one of: {names}")
        perf = env.get("SGLANG_SIM_PERF_MODEL", "").strip().lower() or "auto"
        if perf not in ("auto", "aiconfigurator", "roofline"):
            raise SimConfigError(f"SGLANG_SIM_PERF_MODEL={perf!r}; choose one of: auto, aiconfigurator, roofline")
        num_gpus = number("SGLANG_SIM_NUM_GPUS", int, 8)
        if num_gpus < 1:
            raise SimConfigError(f"SGLANG_SIM_NUM_GPUS={num_gpus} must be at least 1")
        lag = number("SGLANG_SIM_FORCE_LAG_MS", float, 0.0)
        if env.get("SGLANG_SIM_STRICT_PREFILL", "").strip():
            raise SimConfigError(
                "SGLANG_SIM_STRICT_PREFILL is gone: strict prefill is now the default (as in SGLang); use "
                "SGLANG_SIM_PREFILL=strict|mixed to override --enable-mixed-chunk"
            )
        prefill = env.get("SGLANG_SIM_PREFILL", "").strip().lower() or None
        if prefill is not None and prefill not in PREFILL_MODES:
            raise SimConfigError(f"SGLANG_SIM_PREFILL={prefill!r}; choose one of: {', '.join(PREFILL_MODES)}")
        return cls(
            gpu.name,
            num_gpus,
            perf,
            number("SGLANG_SIM_SEED", int, None),
            max(0.0, lag),
            env.get("SGLANG_SIM_SGLANG_VERSION", "").strip() or None,
            prefill,
        )


def parse_server_args(
    argv: Sequence[str], version: str | None, prog: str = "python -m pytest_sglang_tune.sim"
) -> tuple[dict[str, Any], set[str], str]:
    """Parse SGLang flags: (values by ServerArgs name, names given on the command line, SGLang version).

    argparse errors exit with code 2, as ``sglang.launch_server`` does.
    """
    parser, probe, table_version = _parsers(version, prog)
    values = vars(parser.parse_args(list(argv)))
    given = {k for k, v in vars(probe.parse_args(list(argv))).items() if v is not _UNSET}
    return values, given, table_version


_UNSET = object()


@functools.lru_cache(maxsize=8)
def _parsers(version: str | None, prog: str) -> tuple[Any, Any, str]:
    """(the version's parser, a twin whose defaults are a sentinel: which flags were given, the table's version);
    built once per version (``sglang-tune predict`` parses hundreds of configs)."""
    from pytest_sglang_tune.flags import load_flag_table

    table = load_flag_table(version)
    parser = table.build_parser(prog)
    probe = table.build_parser(prog)
    for action in probe._actions:
        if action.dest != "help":
            action.default = _UNSET
            action.required = False
    return parser, probe, table.version


@dataclass
class ResolvedServer:
    """Everything the server needs, resolved once at startup."""

    args: dict[str, Any]  # every ServerArgs field as /server_info reports it
    given: set[str]
    sglang_version: str
    settings: SimSettings
    model: ModelSpec
    gpu: GpuSpec
    engine: EngineConfig
    prefill_mode: str
    context_len: int
    graph_batch_sizes: tuple[int, ...]
    overlap_schedule: bool
    served_model_name: str
    stream_interval: int
    incremental_output: bool
    seed: int
    not_modelled: list[str] = field(default_factory=list)

    @property
    def max_total_num_tokens(self) -> int:
        return self.engine.max_total_tokens

    @property
    def gpus_used(self) -> int:
        return int(self.args["tp_size"]) * int(self.args.get("dp_size") or 1) * int(self.args.get("pp_size") or 1)


def _graph_settings(a: Mapping[str, Any], default_cap: int) -> tuple[int, bool, str | None]:
    """(decode CUDA-graph cap, disabled, dest that holds the cap) across SGLang versions."""
    raw = a.get("cuda_graph_config")
    config: dict[str, Any] = raw if isinstance(raw, dict) else {}
    raw = config.get("decode")
    decode: dict[str, Any] = raw if isinstance(raw, dict) else {}
    disabled = bool(
        a.get("disable_cuda_graph")
        or a.get("disable_decode_cuda_graph")
        or a.get("cuda_graph_backend_decode") == "disabled"
        or decode.get("backend") == "disabled"
    )
    dest = (
        "cuda_graph_max_bs_decode"
        if "cuda_graph_max_bs_decode" in a
        else ("cuda_graph_max_bs" if "cuda_graph_max_bs" in a else None)
    )
    bs_list = a.get("cuda_graph_bs_decode") or a.get("cuda_graph_bs")
    cap = a.get(dest) if dest else None
    cap = cap or decode.get("max_bs") or (max(bs_list) if bs_list else None) or default_cap
    return int(cap), disabled, dest


def resolve_server(a: dict[str, Any], given: set[str], version: str, settings: SimSettings) -> ResolvedServer:
    """Resolve defaults, capacity and limits; :class:`SimConfigError` when SGLang would refuse to start."""
    a = dict(a)
    gpu = GPUS[settings.gpu]
    tp, dp, pp = int(a.get("tp_size") or 1), int(a.get("dp_size") or 1), int(a.get("pp_size") or 1)
    if min(tp, dp, pp) < 1:
        raise SimConfigError(f"tp_size, dp_size and pp_size must be at least 1 (got {tp}, {dp}, {pp})")
    if tp * dp * pp > settings.num_gpus:
        raise SimConfigError(
            f"this configuration needs tp_size*dp_size*pp_size = {tp}*{dp}*{pp} = {tp * dp * pp} GPUs, "
            f"but only {settings.num_gpus} are visible (SGLANG_SIM_NUM_GPUS={settings.num_gpus})"
        )
    quantization = a.get("quantization")
    model = load_model_spec(str(a["model_path"]), quantization)
    if model.num_heads % tp:
        raise SimConfigError(
            f"Total number of attention heads ({model.num_heads}) must be divisible by tensor parallel size ({tp})."
        )
    context_len = int(a.get("context_length") or model.context_len)
    default_chunk, default_cap = sglang_memory_defaults(gpu.mem_total_mib, tp)
    chunk = a.get("chunked_prefill_size")
    if chunk is None:
        chunk = default_chunk
        a["chunked_prefill_size"] = chunk
    chunk_size = int(chunk) if int(chunk) > 0 else None
    max_prefill = int(a.get("max_prefill_tokens") or 16384)
    cap, graph_disabled, cap_dest = _graph_settings(a, default_cap)
    if cap_dest:
        a[cap_dest] = cap
    graphs = (
        () if graph_disabled else cuda_graph_batch_sizes(cap, disable_padding=bool(a.get("disable_cuda_graph_padding")))
    )
    if a.get("mem_fraction_static") is None:
        activation = max(chunk_size, 2048) if chunk_size else max(max_prefill, 2048)
        reserved = 512 + activation * 1.5 + (0 if graph_disabled else cap * 2) + tp * pp / 8 * 1024
        if gpu.mem_total_mib > 60 * 1024:
            reserved = max(reserved, 10 * 1024)
        a["mem_fraction_static"] = round((gpu.mem_total_mib - reserved) / gpu.mem_total_mib, 3)
    mem_frac = float(a["mem_fraction_static"])
    if not 0.0 < mem_frac < 1.0:
        raise SimConfigError(f"--mem-fraction-static={mem_frac} must be between 0 and 1")
    page = int(a.get("page_size") or 1)
    a["page_size"] = page
    tokens = kv_capacity_tokens(
        model, gpu, tp=tp, pp=pp, mem_fraction_static=mem_frac, kv_bytes=kv_dtype_bytes(a.get("kv_cache_dtype"), model)
    )
    if a.get("max_total_tokens"):
        tokens = min(tokens, int(a["max_total_tokens"]))
    tokens -= tokens % page
    if tokens <= 0:
        raise SimConfigError(
            "Not enough memory. Please try to increase --mem-fraction-static. "
            f"Current value: mem_fraction_static={mem_frac} (model weights of {model.name} leave no room "
            f"for the KV cache on {gpu.name} at tp {tp})"
        )
    pool = min(max(int(tokens / context_len * 512), 2048), 4096)
    given_max = a.get("max_running_requests")
    max_running = min(int(given_max), pool) if given_max else min(tokens // 2, pool)
    a["max_running_requests"] = max_running
    policy = str(a.get("schedule_policy") or "fcfs")
    seed = settings.seed if settings.seed is not None else int(a.get("random_seed") or 0)
    a["random_seed"] = seed
    a["served_model_name"] = a.get("served_model_name") or a["model_path"]
    a["tokenizer_path"] = a.get("tokenizer_path") or a["model_path"]
    if settings.prefill is not None:
        prefill_mode = settings.prefill
    else:  # SGLang mixes only with --enable-mixed-chunk and chunked prefill on (is_mixed_chunk)
        prefill_mode = "mixed" if a.get("enable_mixed_chunk") and chunk_size else "strict"
    engine = EngineConfig(
        max_total_tokens=tokens,
        max_running_requests=max(1, max_running),
        chunked_prefill_size=chunk_size,
        max_prefill_tokens=max_prefill,
        page_size=page,
        schedule_policy=policy if policy in MODELLED_POLICIES else "fcfs",
        disable_radix_cache=bool(a.get("disable_radix_cache")),
        mixed_steps=prefill_mode == "mixed",
        overlap_schedule=not a.get("disable_overlap_schedule"),
        schedule_conservativeness=float(a.get("schedule_conservativeness") or 1.0),
        dp_size=dp,
        seed=seed,
    )
    not_modelled = []
    for dest in sorted(given - MODELLED - NO_EFFECT):
        not_modelled.append(PARTLY.get(dest, dest))
    if "schedule_policy" in given and policy not in MODELLED_POLICIES:
        not_modelled.append(f"schedule_policy={policy} (runs as fcfs)")
    if quantization and quant_from_flag(str(quantization)) is None:
        not_modelled.append(f"quantization={quantization} (weights counted at the checkpoint's width)")
    incremental = bool(a.get("incremental_streaming_output") or a.get("stream_output"))
    return ResolvedServer(
        args=a,
        given=set(given),
        sglang_version=version,
        settings=settings,
        model=model,
        gpu=gpu,
        engine=engine,
        prefill_mode=prefill_mode,
        context_len=context_len,
        graph_batch_sizes=graphs,
        overlap_schedule=not a.get("disable_overlap_schedule"),
        served_model_name=str(a["served_model_name"]),
        stream_interval=max(1, int(a.get("stream_interval") or 1)),
        incremental_output=incremental,
        seed=seed,
        not_modelled=not_modelled,
    )
