"""From SGLang's command line and the ``SGLANG_SIM_*`` environment to a resolved simulated server.

Flags are parsed with the flag table of one SGLang version (:func:`pytest_sglang_tune.flags.load_flag_table`),
so the command line is exactly SGLang's and an unknown flag exits with argparse's message (code 2). Defaults that
SGLang resolves at startup are resolved the way SGLang 0.5.x does for an H100/H200-class GPU:

* ``--chunked-prefill-size`` 8192 (16384 on GPUs with 160 GB or more); ``--cuda-graph-max-bs`` 256 below tp 4,
  else 512;
* ``--mem-fraction-static`` = ``(gpu_mem - reserved) / gpu_mem`` with ``reserved`` (MiB) =
  ``chunked_prefill_size * 1.5 + cuda_graph_max_bs * 2 + tp * pp / 8 * 1024``, at least 10 GiB on GPUs over 60 GB;
* KV capacity from the model, the GPU and ``--mem-fraction-static`` (:func:`.models.kv_capacity_tokens`), capped
  by ``--max-total-tokens``;
* ``--max-running-requests`` = ``min(max_total_tokens // 2, clamp(max_total_tokens / context_len * 512, 2048,
  4096))`` unless given (then capped by the latter).

Sim-only settings are environment variables: ``SGLANG_SIM_GPU`` (``h100_sxm`` | ``h200_sxm``),
``SGLANG_SIM_NUM_GPUS`` (8), ``SGLANG_SIM_PERF_MODEL`` (``auto`` | ``aiconfigurator`` | ``roofline``),
``SGLANG_SIM_SEED``, ``SGLANG_SIM_SGLANG_VERSION`` (flag table; newest by default),
``SGLANG_SIM_STRICT_PREFILL`` (``1``: SGLang's default prefill-first steps instead of mixed steps, see
:mod:`.scheduler`) and ``SGLANG_SIM_FORCE_LAG_MS`` (test hook: artificial CPU time per step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_sglang_tune.sim.core import EngineConfig
from pytest_sglang_tune.sim.models import (
    GPUS,
    GpuSpec,
    ModelSpec,
    SimConfigError,
    kv_capacity_tokens,
    kv_dtype_bytes,
    load_model_spec,
)
from pytest_sglang_tune.sim.perf import cuda_graph_batch_sizes

__all__ = ["ResolvedServer", "SimSettings", "parse_server_args", "resolve_server"]

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
    enable_mixed_chunk disable_overlap_schedule
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


@dataclass(frozen=True)
class SimSettings:
    """The ``SGLANG_SIM_*`` environment."""

    gpu: str = "h100_sxm"
    num_gpus: int = 8
    perf_model: str = "auto"
    seed: int | None = None
    force_lag_ms: float = 0.0
    sglang_version: str | None = None
    strict_prefill: bool = False  # SGLang's default prefill-first steps instead of mixed steps

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

        gpu = env.get("SGLANG_SIM_GPU", "").strip() or "h100_sxm"
        if gpu not in GPUS:
            raise SimConfigError(f"SGLANG_SIM_GPU={gpu!r} is not simulated; choose one of: {', '.join(GPUS)}")
        perf = env.get("SGLANG_SIM_PERF_MODEL", "").strip().lower() or "auto"
        if perf not in ("auto", "aiconfigurator", "roofline"):
            raise SimConfigError(f"SGLANG_SIM_PERF_MODEL={perf!r}; choose one of: auto, aiconfigurator, roofline")
        num_gpus = number("SGLANG_SIM_NUM_GPUS", int, 8)
        if num_gpus < 1:
            raise SimConfigError(f"SGLANG_SIM_NUM_GPUS={num_gpus} must be at least 1")
        lag = number("SGLANG_SIM_FORCE_LAG_MS", float, 0.0)
        strict = env.get("SGLANG_SIM_STRICT_PREFILL", "").strip().lower()
        if strict not in ("", "0", "1", "true", "false"):
            raise SimConfigError(f"SGLANG_SIM_STRICT_PREFILL={strict!r}; use 1 or 0")
        return cls(
            gpu,
            num_gpus,
            perf,
            number("SGLANG_SIM_SEED", int, None),
            max(0.0, lag),
            env.get("SGLANG_SIM_SGLANG_VERSION", "").strip() or None,
            strict in ("1", "true"),
        )


def parse_server_args(
    argv: Sequence[str], version: str | None, prog: str = "python -m pytest_sglang_tune.sim"
) -> tuple[dict[str, Any], set[str], str]:
    """Parse SGLang flags: (values by ServerArgs name, names given on the command line, SGLang version).

    argparse errors exit with code 2, as ``sglang.launch_server`` does.
    """
    from pytest_sglang_tune.flags import load_flag_table

    table = load_flag_table(version)
    parser = table.build_parser(prog)
    values = vars(parser.parse_args(list(argv)))
    probe = table.build_parser(prog)
    unset = object()
    for action in probe._actions:
        if action.dest != "help":
            action.default = unset
            action.required = False
    given = {k for k, v in vars(probe.parse_args(list(argv))).items() if v is not unset}
    return values, given, table.version


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


def _graph_settings(a: Mapping[str, Any], tp: int) -> tuple[int, bool, str | None]:
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
    cap = cap or decode.get("max_bs") or (max(bs_list) if bs_list else None) or (256 if tp < 4 else 512)
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
    model = load_model_spec(str(a["model_path"]))
    if model.num_heads % tp:
        raise SimConfigError(
            f"Total number of attention heads ({model.num_heads}) must be divisible by tensor parallel size ({tp})."
        )
    context_len = int(a.get("context_length") or model.context_len)
    chunk = a.get("chunked_prefill_size")
    if chunk is None:
        chunk = 16384 if gpu.mem_total_mib >= 160 * 1024 else 8192
        a["chunked_prefill_size"] = chunk
    chunk_size = int(chunk) if int(chunk) > 0 else None
    max_prefill = int(a.get("max_prefill_tokens") or 16384)
    cap, graph_disabled, cap_dest = _graph_settings(a, tp)
    if cap_dest:
        a[cap_dest] = cap
    graphs = (
        () if graph_disabled else cuda_graph_batch_sizes(cap, disable_padding=bool(a.get("disable_cuda_graph_padding")))
    )
    if a.get("mem_fraction_static") is None:
        reserved = (chunk_size or max(max_prefill, 2048)) * 1.5 + cap * 2 + tp * pp / 8 * 1024
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
    engine = EngineConfig(
        max_total_tokens=tokens,
        max_running_requests=max(1, max_running),
        chunked_prefill_size=chunk_size,
        max_prefill_tokens=max_prefill,
        page_size=page,
        schedule_policy=policy if policy in MODELLED_POLICIES else "fcfs",
        disable_radix_cache=bool(a.get("disable_radix_cache")),
        mixed_steps=bool(a.get("enable_mixed_chunk")) or not settings.strict_prefill,
        schedule_conservativeness=float(a.get("schedule_conservativeness") or 1.0),
        dp_size=dp,
        seed=seed,
    )
    not_modelled = []
    for dest in sorted(given - MODELLED - NO_EFFECT):
        not_modelled.append(PARTLY.get(dest, dest))
    if "schedule_policy" in given and policy not in MODELLED_POLICIES:
        not_modelled.append(f"schedule_policy={policy} (runs as fcfs)")
    incremental = bool(a.get("incremental_streaming_output") or a.get("stream_output"))
    return ResolvedServer(
        args=a,
        given=set(given),
        sglang_version=version,
        settings=settings,
        model=model,
        gpu=gpu,
        engine=engine,
        context_len=context_len,
        graph_batch_sizes=graphs,
        overlap_schedule=not a.get("disable_overlap_schedule"),
        served_model_name=str(a["served_model_name"]),
        stream_interval=max(1, int(a.get("stream_interval") or 1)),
        incremental_output=incremental,
        seed=seed,
        not_modelled=not_modelled,
    )
