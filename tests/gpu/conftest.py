"""Fixtures of the GPU tests: a fake NVML (``fakes/pynvml.py``) and a fake ``nvidia-smi`` reporting the same GPUs.

Both read one JSON description (``FAKE_NVML_SPEC``); ``gpu_host`` writes it. ``fake_nvml`` puts the fake module
first on ``sys.path`` and ``PYTHONPATH`` (subprocesses and xdist workers see it too); ``fake_smi`` puts the fake
tool first on ``PATH`` and blocks ``pynvml`` everywhere, so the code takes its nvidia-smi fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gpukit import install_fake_nvml, install_fake_smi, write_gpu_host


@pytest.fixture
def gpu_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """``gpu_host(n=8, series=..., **extra)`` writes the fake GPUs' description and points FAKE_NVML_SPEC at it."""
    write_gpu_host(monkeypatch, tmp_path, 0)

    def write(n: int = 8, series: dict[int, dict[str, list[Any]]] | None = None, **extra: Any) -> dict[str, Any]:
        return write_gpu_host(monkeypatch, tmp_path, n, series, **extra)
    return write


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake ``pynvml`` is what ``import pynvml`` finds, here and in subprocesses."""
    install_fake_nvml(monkeypatch)


@pytest.fixture
def fake_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fake ``nvidia-smi`` first on PATH, and no ``pynvml`` (here or in subprocesses)."""
    return install_fake_smi(monkeypatch, tmp_path)
