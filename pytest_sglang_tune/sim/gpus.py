"""The GPUs the simulated server can stand in for, with the facts the roofline and SGLang's defaults need.

Every GPU for which the installed ``aiconfigurator-core`` ships SGLang kernel data is simulated (its system
names are the keys). Facts per GPU, from the vendors' data sheets (dense, not sparse, tensor throughput):

* ``mem_total_mib`` — the total CUDA reports (``nvidia-smi`` ``memory.total``); it drives SGLang's defaults
  (chunked-prefill size and CUDA-graph batch cap by memory tier) and the KV-cache arithmetic;
* ``hbm_bytes_per_s`` — memory bandwidth; ``bf16_flops`` / ``fp8_flops`` — dense tensor-core throughput
  (``fp8_flops`` 0 where the GPU has no FP8 tensor cores: FP8 weights then run as weight-only);
* ``link_bytes_per_s`` — GPU-to-GPU bandwidth per direction (NVLink, or PCIe where the board has no NVLink).

Sources (data sheets): A100 — "NVIDIA A100 Tensor Core GPU" data sheet (SXM4 80GB: 2,039 GB/s, BF16 312
TFLOPS, NVLink 600 GB/s); H100 — "NVIDIA H100 Tensor Core GPU" data sheet (SXM: 3.35 TB/s, BF16 989 TFLOPS,
FP8 1,979 TFLOPS, NVLink 900 GB/s); H200 — "NVIDIA H200 Tensor Core GPU" product brief (141 GB, 4.8 TB/s,
same compute as H100 SXM); B200 / B300 — "NVIDIA HGX B200" and "HGX B300" data sheets (per GPU: 8 TB/s,
BF16 2.25 PFLOPS dense, FP8 4.5 PFLOPS dense, NVLink 5 1.8 TB/s); GB200 / GB300 — "GB200 NVL72" and "GB300
NVL72" data sheets (per GPU: 8 TB/s, BF16 2.5 PFLOPS dense, FP8 5 PFLOPS dense, NVLink 1.8 TB/s); L40S —
"NVIDIA L40S" data sheet (48 GB GDDR6, 864 GB/s, BF16 362 TFLOPS dense, FP8 733, PCIe Gen4 x16 64 GB/s);
RTX PRO 6000 Blackwell Server Edition — data sheet (96 GB GDDR7, 1,792 GB/s, PCIe Gen5 x16 128 GB/s; BF16
dense as in aiconfigurator-core's ``systems/rtx_pro_6000_server.yaml``). Memory totals are the MiB
``nvidia-smi`` reports for these boards; they agree with ``aiconfigurator-core``'s ``systems/*.yaml``
``mem_capacity`` within 1 % (H100, H200 and B200 there are the nominal 80/141/180 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPUS", "GPU_ALIASES", "GpuSpec", "known_gpu", "resolve_gpu", "sglang_memory_defaults"]


@dataclass(frozen=True)
class GpuSpec:
    name: str  # aiconfigurator-core's system name
    mem_total_mib: int  # what CUDA reports as total memory
    hbm_bytes_per_s: float
    bf16_flops: float  # dense
    link_bytes_per_s: float  # GPU-to-GPU, per direction
    fp8_flops: float = 0.0  # dense; 0: no FP8 tensor cores (FP8 weights run weight-only)
    label: str = ""

    @property
    def nvlink_bytes_per_s(self) -> float:  # kept for callers of the 0.1 name
        return self.link_bytes_per_s


GPUS: dict[str, GpuSpec] = {
    "a100_sxm": GpuSpec("a100_sxm", 81_920, 2.039e12, 312e12, 300e9, 0.0, "NVIDIA A100-SXM4-80GB"),
    "h100_sxm": GpuSpec("h100_sxm", 81_559, 3.35e12, 989e12, 450e9, 1979e12, "NVIDIA H100 80GB HBM3"),
    "h200_sxm": GpuSpec("h200_sxm", 143_771, 4.8e12, 989e12, 450e9, 1979e12, "NVIDIA H200"),
    "b200_sxm": GpuSpec("b200_sxm", 183_359, 8.0e12, 2250e12, 900e9, 4500e12, "NVIDIA B200"),
    "b300_sxm": GpuSpec("b300_sxm", 275_040, 8.0e12, 2250e12, 900e9, 4500e12, "NVIDIA B300 SXM6 AC"),
    "gb200": GpuSpec("gb200", 189_471, 8.0e12, 2500e12, 900e9, 5000e12, "NVIDIA GB200"),
    "gb300": GpuSpec("gb300", 284_208, 8.0e12, 2500e12, 900e9, 5000e12, "NVIDIA GB300"),
    "l40s": GpuSpec("l40s", 46_068, 0.864e12, 362e12, 32e9, 733e12, "NVIDIA L40S"),
    "rtx_pro_6000_server": GpuSpec(
        "rtx_pro_6000_server", 97_887, 1.792e12, 468e12, 64e9, 936e12, "NVIDIA RTX PRO 6000 Blackwell Server Edition"
    ),
}

# Shorter names users reach for (the and NVIDIA's marketing names) -> the system names above.
GPU_ALIASES: dict[str, str] = {
    "a100": "a100_sxm",
    "h100": "h100_sxm",
    "h200": "h200_sxm",
    "b200": "b200_sxm",
    "b300": "b300_sxm",
    "rtx_pro_6000": "rtx_pro_6000_server",
}


def resolve_gpu(name: str) -> GpuSpec | None:
    """The GPU for a system name or alias (case-insensitive); None when unknown."""
    key = name.strip().lower()
    return GPUS.get(GPU_ALIASES.get(key, key))


def sglang_memory_defaults(mem_total_mib: int, tp: int) -> tuple[int, int]:
    """(``--chunked-prefill-size``, decode CUDA-graph max batch) SGLang 0.5.x picks for a GPU's memory.

    From ``_handle_gpu_memory_settings`` (``sglang/srt/arg_groups/memory_hook.py`` in 0.5.23): < 20 GB 2k/8,
    < 35 GB 4k/48 (160 at tp >= 4), < 60 GB 4k/32 (160), < 90 GB 8k/256 (512), < 160 GB 8k/256 (512),
    else 16k/512.
    """
    gib = 1024
    if mem_total_mib < 20 * gib:
        return 2048, 8
    if mem_total_mib < 35 * gib:
        return 4096, 48 if tp < 4 else 160
    if mem_total_mib < 60 * gib:
        return 4096, 32 if tp < 4 else 160
    if mem_total_mib < 160 * gib:
        return 8192, 256 if tp < 4 else 512
    return 16384, 512


def known_gpu(name: str) -> str:
    """A sim GPU's canonical name, or a ``ValueError`` listing the GPUs the sim knows."""
    spec = resolve_gpu(name)
    if spec is None:
        raise ValueError(f"{name!r} is not a GPU the sim knows; choose one of: {', '.join([*GPUS, *GPU_ALIASES])}")
    return spec.name
