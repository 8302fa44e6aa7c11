"""The ``sim`` backend: the ``local`` backend launching our simulated SGLang server.

The simulated server has virtual GPUs (8 unless ``--gpus`` says otherwise) and needs no real one.
Sim-only settings travel as environment variables, so the command line stays SGLang's.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_sglang_tune.backends.base import BackendContext, Capacity, DeploymentSpec
from pytest_sglang_tune.backends.gpus import DevicePool
from pytest_sglang_tune.backends.local import LocalBackend, parse_launcher

SIM_LAUNCHER = [sys.executable, "-m", "pytest_sglang_tune.sim"]
DEFAULT_SIM_GPUS = 8
DEFAULT_SIM_GPU = "h100_sxm"


class SimBackend(LocalBackend):
    name = "sim"
    needs_gpus_default = False
    default_ready_timeout = 120.0

    def __init__(self, *, gpus: int | None, sglang_version: str | None = None,
                 env: Mapping[str, str] | None = None, log_dir: Path | None = None) -> None:
        super().__init__(gpus=gpus, env=env, log_dir=log_dir)
        self.sglang_version = sglang_version
        self._pool = DevicePool(())  # virtual GPUs: the host's are never read nor handed on

    def capacity(self) -> Capacity:
        if self.gpus is not None:
            return Capacity(self.gpus, f"--gpus={self.gpus} (virtual GPUs of the sim)")
        return Capacity(DEFAULT_SIM_GPUS, f"the sim's {DEFAULT_SIM_GPUS} virtual GPUs (default; set --gpus)")

    def launcher_argv(self, spec: DeploymentSpec) -> list[str]:
        launcher = spec.settings.get("launcher")
        return parse_launcher(launcher) if launcher else list(SIM_LAUNCHER)

    def extra_env(self, spec: DeploymentSpec) -> dict[str, str]:
        env = super().extra_env(spec)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env.update(sim_env(spec.settings, num_gpus=self.capacity().gpus,
                           sglang_version=spec.settings.get("sglang_version") or self.sglang_version))
        return env

    def deployment_info(self, spec: DeploymentSpec) -> dict[str, Any]:
        return {"image": None, "image_digest": None, "sim_gpu": str(spec.settings.get("gpu", DEFAULT_SIM_GPU))}


def make_backend(context: BackendContext) -> SimBackend:
    """The registry's factory for ``--backend=sim``."""
    return SimBackend(gpus=context.gpus, log_dir=context.log_dir)


def sim_env(settings: Mapping[str, Any], *, num_gpus: int, sglang_version: str | None) -> dict[str, str]:
    """The ``SGLANG_SIM_*`` settings of a sim deployment of a suite's ``backends.sim`` section (the suite's
    ``env`` first): the one rule for the sim backend and for ``sglang-tune predict``."""
    env = {str(k): str(v) for k, v in (settings.get("env") or {}).items()}
    env["SGLANG_SIM_GPU"] = str(settings.get("gpu", DEFAULT_SIM_GPU))
    env["SGLANG_SIM_NUM_GPUS"] = str(num_gpus)
    if settings.get("perf_model"):
        env["SGLANG_SIM_PERF_MODEL"] = str(settings["perf_model"])
    if sglang_version:
        env["SGLANG_SIM_SGLANG_VERSION"] = str(sglang_version)
    return env
