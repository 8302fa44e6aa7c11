"""Helpers of the GPU tests: fake GPUs (a fake NVML and a fake ``nvidia-smi`` reading one JSON description).

The fixtures in conftest.py wrap these; tests elsewhere (tests/docker) put this folder on ``sys.path`` and call
them with their own ``monkeypatch``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

FAKES = Path(__file__).with_name("fakes")
NONVML = Path(__file__).with_name("nonvml")


def uuid_of(i: int) -> str:
    """A UUID in NVML's format (``GPU-`` + 8-4-4-4-12 hex digits), distinct per index."""
    return f"GPU-{i:08x}-5c1f-1a6b-3c8b-{0xabc000000000 + i:012x}"


def describe_gpus(n: int = 8, series: dict[int, dict[str, list[Any]]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"driver": "550.54.15", "cuda": 12040, **extra,
            "devices": [{"uuid": uuid_of(i), "name": "NVIDIA H200", "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0",
                         "memory_total_mib": 143771, "series": (series or {}).get(i, {})} for i in range(n)]}


def _prepend(monkeypatch: pytest.MonkeyPatch, var: str, path: Path) -> None:
    old = os.environ.get(var)
    monkeypatch.setenv(var, f"{path}{os.pathsep}{old}" if old else str(path))


def write_gpu_host(monkeypatch: pytest.MonkeyPatch, where: Path, n: int = 8,
                   series: dict[int, dict[str, list[Any]]] | None = None, **extra: Any) -> dict[str, Any]:
    """Describe ``n`` fake GPUs in ``where/fake-gpus.json`` and point FAKE_NVML_SPEC at it (no GPU mask set)."""
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(var, raising=False)
    spec = describe_gpus(n, series, **extra)
    path = where / "fake-gpus.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setenv("FAKE_NVML_SPEC", str(path))
    return spec


def install_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake ``pynvml`` is what ``import pynvml`` finds, here and in subprocesses (no nvidia-smi on PATH)."""
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.syspath_prepend(str(FAKES))
    _prepend(monkeypatch, "PYTHONPATH", FAKES)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if not (Path(p) / "nvidia-smi").exists()))


def install_fake_smi(monkeypatch: pytest.MonkeyPatch, where: Path) -> Path:
    """A fake ``nvidia-smi`` first on PATH, and no ``pynvml`` (here or in subprocesses)."""
    bin_dir = where / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKES / 'nvidia_smi.py'} \"$@\"\n")
    tool.chmod(0o755)
    _prepend(monkeypatch, "PATH", bin_dir)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml → ImportError in this process
    _prepend(monkeypatch, "PYTHONPATH", NONVML)
    return tool
