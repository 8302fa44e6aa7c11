"""Issue 11, items 4-8: weights at their real width, every GPU, local model folders, no silent fallback, and
version-aware kernel data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_sglang_tune.sim.aic import nearest_sglang_data_version, sglang_data_versions
from pytest_sglang_tune.sim.config import SimSettings, parse_server_args, resolve_server
from pytest_sglang_tune.sim.gpus import GPUS, resolve_gpu
from pytest_sglang_tune.sim.models import SimConfigError, load_model_spec
from pytest_sglang_tune.sim.perf import RooflinePerf, StepShape
from pytest_sglang_tune.sim.virtual import virtual_engine

try:
    import aiconfigurator_core

    HAS_AIC = True
except ImportError:  # pragma: no cover - non-x86 machines
    HAS_AIC = False
needs_aic = pytest.mark.skipif(not HAS_AIC, reason="aiconfigurator-core is not installed (Linux x86-64 only)")


def resolved(*flags: str, env: dict[str, str] | None = None, model: str = "Qwen/Qwen3-32B"):  # type: ignore[no-untyped-def]
    values, given, version = parse_server_args(["--model-path", model, *flags], None)
    return resolve_server(values, given, version, SimSettings.from_env(env or {}))


# -- item 4: quantized weights --------------------------------------------------------------------------------
def test_fp8_checkpoint_gets_fp8_kv_room() -> None:
    bf16, fp8 = resolved(), resolved(model="Qwen/Qwen3-32B-FP8")
    assert fp8.model.quant == "fp8_block" and fp8.model.quant_source == "config.json"
    assert fp8.model.weight_bytes() < 0.55 * bf16.model.weight_bytes()
    assert bf16.max_total_num_tokens < 30_000  # 65 GB of BF16 weights on one H100 leave little room
    assert 120_000 < fp8.max_total_num_tokens < 170_000  # the issue: ~150k are plausible, not ~24k


def test_quantization_flag_counts_a_bf16_checkpoint_at_fp8() -> None:
    flagged = resolved("--quantization", "fp8")
    assert flagged.model.quant == "fp8" and flagged.model.quant_source == "--quantization"
    fp8 = resolved(model="Qwen/Qwen3-32B-FP8")
    assert flagged.max_total_num_tokens == pytest.approx(fp8.max_total_num_tokens, 0.01)
    assert "quantization" not in " ".join(flagged.not_modelled)


@pytest.mark.parametrize(
    ("name", "quant"),
    [("Qwen/Qwen3-8B-FP8", "fp8"), ("nvidia/Llama-3.1-8B-Instruct-FP8", "fp8"), ("Qwen/Qwen3-8B-AWQ", "int4")],
)
def test_a_quantization_suffix_reuses_the_base_architecture(name: str, quant: str) -> None:
    spec = load_model_spec(name)
    assert spec.quant == quant and spec.quant_source == "model name"
    assert spec.weight_bits < 9


def test_fp8_weights_are_faster_in_both_perf_models() -> None:
    shape = StepShape(decode_reqs=8, decode_context=8000)
    bf16 = RooflinePerf(load_model_spec("Qwen/Qwen3-8B"), GPUS["h100_sxm"], tp=1).forward_ms(shape)
    fp8 = RooflinePerf(load_model_spec("Qwen/Qwen3-8B-FP8"), GPUS["h100_sxm"], tp=1).forward_ms(shape)
    assert fp8 < 0.8 * bf16
    if HAS_AIC:
        timer = virtual_engine(["--model-path", "Qwen/Qwen3-8B"]).engine.timer
        timer8 = virtual_engine(["--model-path", "Qwen/Qwen3-8B", "--quantization", "fp8"]).engine.timer
        assert timer8.forward_ms(shape) < 0.85 * timer.forward_ms(shape)


# -- item 5: every GPU -------------------------------------------------------------------------------------------
def test_every_aiconfigurator_sglang_gpu_is_simulated() -> None:
    expected = {"a100_sxm", "h100_sxm", "h200_sxm", "b200_sxm", "b300_sxm", "gb200", "gb300", "l40s",
                "rtx_pro_6000_server"}
    assert set(GPUS) == expected
    for gpu in GPUS.values():  # roofline facts present and sane
        assert gpu.mem_total_mib > 40_000 and gpu.hbm_bytes_per_s > 5e11 and gpu.bf16_flops > 1e14
        assert gpu.link_bytes_per_s > 1e10
    assert resolve_gpu("B200") is GPUS["b200_sxm"] and resolve_gpu("rtx_pro_6000") is GPUS["rtx_pro_6000_server"]


@needs_aic
def test_aiconfigurator_ships_sglang_data_for_every_simulated_gpu() -> None:
    systems = Path(aiconfigurator_core.__file__).parent / "systems" / "data"
    with_sglang = {p.parent.parent.name for p in systems.glob("*/gemm/sglang")}
    assert with_sglang == set(GPUS)


def test_a_wrong_gpu_lists_the_simulated_ones() -> None:
    with pytest.raises(SimConfigError) as info:
        SimSettings.from_env({"SGLANG_SIM_GPU": "tpu_v9"})
    for name in ("a100_sxm", "b300_sxm", "gb300", "l40s", "rtx_pro_6000_server"):
        assert name in str(info.value)


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_each_gpu_serves_an_8b_model(gpu: str) -> None:
    vs = virtual_engine(["--model-path", "Qwen/Qwen3-8B"], {"SGLANG_SIM_GPU": gpu})
    assert vs.cfg.max_total_num_tokens > 50_000
    pm = vs.perf_model
    assert pm["gpu"] == gpu and (pm["name"] == "aiconfigurator-core") == HAS_AIC
    assert vs.engine.timer.step_seconds(StepShape(decode_reqs=1, decode_context=500)) > 0


# -- item 6: a local model folder --------------------------------------------------------------------------------
QWEN3_14B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 5120, "intermediate_size": 17408,
    "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "tie_word_embeddings": False, "max_position_embeddings": 40960, "torch_dtype": "bfloat16",
    "rms_norm_eps": 1e-6, "rope_theta": 1000000, "hidden_act": "silu",
}


def test_a_local_folder_reads_its_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "my-finetune"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN3_14B))
    vs = virtual_engine(["--model-path", str(folder)])
    assert vs.cfg.model.hidden_size == 5120 and vs.cfg.model.local_dir == str(folder.resolve())
    assert vs.perf_model["fallback_reason"] is None if HAS_AIC else vs.perf_model["name"] == "roofline"
    quant = {**QWEN3_14B, "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    (folder / "config.json").write_text(json.dumps(quant))
    spec = load_model_spec(str(folder))
    assert spec.quant == "fp8_block" and spec.quant_source == "config.json"


def test_a_local_folder_without_config_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SimConfigError, match=r"without config\.json.*never downloads"):
        load_model_spec(str(tmp_path))


# -- item 7: no silent fallback ------------------------------------------------------------------------------------
@needs_aic
def test_moe_models_at_tp_run_on_aiconfigurator_and_fallbacks_say_why() -> None:
    moe = virtual_engine(["--model-path", "Qwen/Qwen3-30B-A3B", "--tp-size", "2"])
    assert moe.perf_model["name"] == "aiconfigurator-core" and moe.perf_model["fallback_reason"] is None
    forced = virtual_engine(["--model-path", "Qwen/Qwen3-8B"], {"SGLANG_SIM_PERF_MODEL": "roofline"})
    assert forced.perf_model["name"] == "roofline"
    assert forced.perf_model["fallback_reason"] == "SGLANG_SIM_PERF_MODEL=roofline"


# -- item 8: version-aware kernel data ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        ("0.5.23", ["0.5.14", "0.5.16"], "0.5.16"),
        ("0.5.5.post3", ["0.5.14", "0.5.16"], "0.5.14"),
        ("0.5.15", ["0.5.14", "0.5.16"], "0.5.14"),  # a tie picks the older
        ("0.5.23", ["0.5.10"], "0.5.10"),
        ("0.4.3", ["0.5.6.post2", "0.5.14"], "0.5.6.post2"),
    ],
)
def test_nearest_kernel_data_version(requested: str, available: list[str], expected: str) -> None:
    assert nearest_sglang_data_version(requested, available) == expected


@needs_aic
def test_the_chosen_kernel_data_version_is_recorded() -> None:
    assert sglang_data_versions("a100_sxm") == ["0.5.10"]
    new = virtual_engine(["--model-path", "Qwen/Qwen3-8B"])
    old = virtual_engine(["--model-path", "Qwen/Qwen3-8B"], {"SGLANG_SIM_SGLANG_VERSION": "0.5.5.post3"})
    a100 = virtual_engine(["--model-path", "Qwen/Qwen3-8B"], {"SGLANG_SIM_GPU": "a100_sxm"})
    assert new.perf_model["sglang_data_version"] == "0.5.16"
    assert old.perf_model["sglang_data_version"] == "0.5.14"
    assert a100.perf_model["sglang_data_version"] == "0.5.10"
