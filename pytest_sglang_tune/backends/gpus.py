"""GPU inventory of this host (NVML when ``nvidia-ml-py`` is installed, else ``nvidia-smi``)."""

from __future__ import annotations

import shutil
import subprocess


def detect_gpus() -> tuple[int, str]:
    """(count, how it was found). Never raises; zero with the reason when there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            n = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
        return n, f"NVML reports {n} GPU(s) on this host"
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0, "no GPU on this host (no NVML, no nvidia-smi)"
    try:
        out = subprocess.run([smi, "--list-gpus"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"nvidia-smi failed: {exc}"
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return n, f"nvidia-smi lists {n} GPU(s) on this host"
