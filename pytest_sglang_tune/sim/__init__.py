"""The simulated SGLang server: a drop-in for ``python -m sglang.launch_server`` that needs no GPU.

``python -m pytest_sglang_tune.sim --model-path Qwen/Qwen3-8B --port 30000 [SGLang flags]`` accepts one SGLang
version's flags and serves SGLang's HTTP API. Behind it, a discrete-event scheduler core (:mod:`.core`,
:mod:`.scheduler`, :mod:`.radix`) batches requests the way SGLang does, with step times from NVIDIA's
``aiconfigurator-core`` or a documented roofline (:mod:`.perf`). The HTTP server drives the core on the wall
clock (:mod:`.driver`); :mod:`.virtual` drives the same core on a virtual clock.
"""

from __future__ import annotations

from pytest_sglang_tune.sim.core import Clock, EngineConfig, SimRequest, StepRecord, VirtualClock
from pytest_sglang_tune.sim.engine import Engine
from pytest_sglang_tune.sim.perf import PerfModel, StepShape, StepTimer

__all__ = [
    "Clock",
    "Engine",
    "EngineConfig",
    "PerfModel",
    "SimRequest",
    "StepRecord",
    "StepShape",
    "StepTimer",
    "VirtualClock",
]
