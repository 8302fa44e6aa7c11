"""``aiconfigurator-core``'s forward-pass model for SGLang, asked the way the sim needs it.

* **Model**: a model bundled by name with ``aiconfigurator-core`` is passed by name; any other (a local folder,
  a model from ``sim/data/models.json``, a bundled config the package does not list as a default) is passed as a
  local folder holding its ``config.json``, so ``aiconfigurator-core`` never reaches for a model hub.
* **Weights**: a quantization known only from the model name or from ``--quantization`` is passed as
  ``weight_dtype``/``moe_dtype``; one declared in ``config.json`` is read by ``aiconfigurator-core`` itself.
* **Parallelism**: MoE layers run tensor-parallel across the ``tp`` ranks (SGLang's default without
  ``--ep-size``), or expert-parallel over ``--ep-size`` ranks.
* **Kernel data version**: the SGLang data version nearest to the server's SGLang version among those the
  package holds for the GPU (:func:`nearest_sglang_data_version`), recorded in ``/server_info``.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytest_sglang_tune.sim.gpus import GpuSpec
from pytest_sglang_tune.sim.models import ModelSpec
from pytest_sglang_tune.sim.perf import StepShape

__all__ = [
    "AICONFIGURATOR_PIN",
    "AICONFIGURATOR_SGLANG_DATA",
    "AiconfiguratorPerf",
    "installed_version",
    "nearest_sglang_data_version",
    "sglang_data_versions",
]

AICONFIGURATOR_PIN = "0.12.0"
AICONFIGURATOR_SGLANG_DATA = "0.5.14"  # the "current" SGLang data of aiconfigurator-core 0.12.0 (most GPUs)
_QUANT_DTYPES = {"fp8": "fp8", "fp8_block": "fp8_block", "int8": "int8", "int4": "int4", "nvfp4": "nvfp4"}


def installed_version() -> str:
    try:
        from importlib.metadata import version

        return version("aiconfigurator-core")
    except Exception:  # pragma: no cover - metadata missing
        return AICONFIGURATOR_PIN


def _version_key(version: str) -> tuple[int, ...]:
    """``0.5.5.post3`` -> (0, 5, 5, 3); non-numeric parts count as 0."""
    parts = [int(p) if p.isdigit() else 0 for p in re.split(r"[.\-]|post|rc", version.lower()) if p != ""]
    return tuple([*parts, 0, 0, 0, 0][:4])


def sglang_data_versions(gpu: str) -> list[str]:
    """The SGLang kernel-data versions ``aiconfigurator-core`` answers for ``gpu`` (its query slots)."""
    try:
        from aiconfigurator_core.sdk import perf_database

        slots = perf_database.get_version_slots(gpu, "sglang") or {}
    except Exception:  # pragma: no cover - older/newer package layouts
        slots = {}
    versions = sorted({str(v) for v in slots.values() if v}, key=_version_key)
    return versions or [AICONFIGURATOR_SGLANG_DATA]


def nearest_sglang_data_version(requested: str, available: list[str]) -> str:
    """The version in ``available`` nearest to ``requested`` (by release number; a tie picks the older one)."""
    want = _version_key(requested)

    def distance(v: str) -> tuple[int, ...]:
        have = _version_key(v)
        return tuple(abs(a - b) for a, b in zip(want, have, strict=True))

    return min(sorted(available, key=_version_key), key=distance)


def _aic_model_path(model: ModelSpec) -> str:
    """What to hand ``aiconfigurator-core`` as the model: a default name, or a local folder with config.json."""
    if model.local_dir:
        return model.local_dir
    try:
        from aiconfigurator_core.sdk.common import DefaultHFModels

        defaults: set[str] = set(DefaultHFModels)
    except Exception:  # pragma: no cover - older/newer package layouts
        defaults = set()
    if model.name in defaults:
        return model.name
    folder = Path(tempfile.gettempdir()) / "sglang-sim-model-configs" / model.name.replace("/", "--")
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in model.config.items() if k != "hf_quant_config"}
    text = json.dumps(config, sort_keys=True)
    target = folder / "config.json"
    if not target.is_file() or target.read_text("utf-8") != text:
        tmp = folder / f"config.json.{id(model)}.tmp"
        tmp.write_text(text, "utf-8")
        tmp.replace(target)
    return str(folder)


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


_EMPTY_QUEUE = json.dumps(
    {
        "num_prefill_requests": 0,
        "sum_prefill_tokens": 0,
        "var_prefill_length": 0.0,
        "sum_prefill_kv_tokens": 0,
        "num_decode_requests": 0,
        "sum_decode_kv_tokens": 0,
        "var_decode_kv_tokens": 0.0,
    },
    separators=(",", ":"),
)


class AiconfiguratorPerf:
    """``aiconfigurator-core``'s forward-pass model for SGLang on one GPU type (see the module docstring)."""

    name = "aiconfigurator-core"

    def __init__(
        self, model: ModelSpec, gpu: GpuSpec, *, tp: int, pp: int = 1, ep: int = 1, sglang_version: str | None = None
    ) -> None:
        from aiconfigurator_core.sdk import RustForwardPassPerfModel

        available = sglang_data_versions(gpu.name)
        self.sglang_data_version: str | None = nearest_sglang_data_version(sglang_version or available[-1], available)
        self.data_version = installed_version()
        config: dict[str, Any] = {
            "schema_version": 1,
            "model_name": _aic_model_path(model),
            "system_name": gpu.name,
            "backend": "sglang",
            "backend_version": self.sglang_data_version,
            "tp_size": tp,
            "pp_size": pp,
        }
        if model.num_experts:
            ep = max(1, min(ep, tp))
            config["moe_ep_size"], config["moe_tp_size"] = ep, tp // ep
        if model.quant and model.quant_source != "config.json" and model.quant in _QUANT_DTYPES:
            config["weight_dtype"] = _QUANT_DTYPES[model.quant]
            if model.num_experts:
                config["moe_dtype"] = _QUANT_DTYPES[model.quant]
        with _fast_yaml():
            self._model = RustForwardPassPerfModel.from_native(config)
        self._estimate = self._model._inner.estimate_forward_pass_time_ms  # JSON string in, ms out
        self.detail = (
            f"RustForwardPassPerfModel, SGLang {self.sglang_data_version} kernel data, {gpu.name}, tp={tp}"
            + (f", weights {model.quant}" if model.quant else "")
        )
        self.forward_ms(StepShape(decode_reqs=1, decode_context=1))  # loads the perf tables now, not mid-run

    def forward_ms(self, s: StepShape) -> float:
        """One forward pass in ms (prefill requests/tokens/cached context, decode requests/KV tokens)."""
        if not s.prefill_tokens and not s.decode_reqs:
            return 0.0
        p = s.prefill_tokens > 0
        sched = (
            f'{{"num_prefill_requests":{s.prefill_reqs if p else 0},"sum_prefill_tokens":{s.prefill_tokens},'
            f'"var_prefill_length":0.0,"sum_prefill_kv_tokens":{s.prefill_context if p else 0},'
            f'"num_decode_requests":{s.decode_reqs},'
            f'"sum_decode_kv_tokens":{max(s.decode_context, s.decode_reqs) if s.decode_reqs else 0},'
            f'"var_decode_kv_tokens":0.0}}'
        )
        fpm = (
            '{"version":1,"worker_id":"sim","dp_rank":0,"counter_id":0,"wall_time":0.0,'
            f'"scheduled_requests":{sched},"queued_requests":{_EMPTY_QUEUE}}}'
        )
        value = self._estimate(fpm)
        if value is None:  # pragma: no cover - native models always answer
            raise RuntimeError("aiconfigurator-core returned no estimate")
        return float(value)
