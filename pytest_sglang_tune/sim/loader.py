"""Build the engine of a resolved server: perf model, step timer, front end; and load it in the background.

:func:`load_perf` and :func:`build_engine` are the one way to turn a :class:`~.config.ResolvedServer` into an
:class:`~.engine.Engine`: the HTTP server and the virtual clock (:mod:`.virtual`) both use them, so they run the
same physics. Building ``aiconfigurator-core``'s model takes about a second (mostly Rust, partly outside the
GIL), so the server starts it in a thread first and imports aiohttp meanwhile.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

from pytest_sglang_tune.sim.aic import AICONFIGURATOR_PIN, AiconfiguratorPerf
from pytest_sglang_tune.sim.config import ResolvedServer
from pytest_sglang_tune.sim.engine import Engine
from pytest_sglang_tune.sim.frontend import FrontEnd
from pytest_sglang_tune.sim.gpus import GpuSpec
from pytest_sglang_tune.sim.models import ModelSpec
from pytest_sglang_tune.sim.perf import PerfModel, RooflinePerf, StepTimer
from pytest_sglang_tune.sim.tokenizer import SimTokenizer

__all__ = ["Loaded", "build_engine", "load_perf", "make_perf_model", "start_loading"]
log = logging.getLogger("sglang_sim")

Loaded = tuple[PerfModel, "str | None", SimTokenizer]


def make_perf_model(
    choice: str,
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    tp: int,
    pp: int = 1,
    ep: int = 1,
    sglang_version: str | None = None,
) -> tuple[PerfModel, str | None]:
    """``auto`` | ``aiconfigurator`` | ``roofline`` -> (model, why the roofline runs instead, if it does)."""
    if choice not in ("auto", "aiconfigurator", "roofline"):
        raise ValueError(f"SGLANG_SIM_PERF_MODEL={choice!r}; allowed: auto, aiconfigurator, roofline")
    if choice == "roofline":
        return RooflinePerf(model, gpu, tp=tp, pp=pp, ep=ep), "SGLANG_SIM_PERF_MODEL=roofline"
    try:
        return AiconfiguratorPerf(model, gpu, tp=tp, pp=pp, ep=ep, sglang_version=sglang_version), None
    except ImportError as exc:
        if choice == "aiconfigurator":
            raise RuntimeError(
                f"SGLANG_SIM_PERF_MODEL=aiconfigurator but aiconfigurator-core is not installed ({exc}); "
                f"install 'aiconfigurator-core=={AICONFIGURATOR_PIN}' (Linux x86-64 only) or use roofline"
            ) from exc
        note = f"aiconfigurator-core is not installed ({exc})"
    except Exception as exc:  # the model, GPU or parallelism is not covered by aiconfigurator's data
        where = f"{model.name} on {gpu.name} at tp={tp}" + (f" ep={ep}" if ep > 1 else "")
        if choice == "aiconfigurator":
            raise RuntimeError(f"aiconfigurator-core cannot model {where}: {exc}") from exc
        note = f"aiconfigurator-core cannot model {where}: {' '.join(str(exc).split())[:240]}"
    log.warning("perf model: roofline (%s)", note)
    return RooflinePerf(model, gpu, tp=tp, pp=pp, ep=ep), note


def load_perf(cfg: ResolvedServer) -> tuple[PerfModel, str | None]:
    """The perf model the settings ask for, and why the roofline runs instead (None when it does not)."""
    tp, pp = int(cfg.args["tp_size"]), int(cfg.args.get("pp_size") or 1)
    ep = int(cfg.args.get("ep_size") or 1)
    return make_perf_model(
        cfg.settings.perf_model, cfg.model, cfg.gpu, tp=tp, pp=pp, ep=ep, sglang_version=cfg.sglang_version
    )


def build_engine(
    cfg: ResolvedServer, perf: PerfModel, *, record_steps: bool = False, frontend: FrontEnd | None = None
) -> Engine:
    """The engine of ``cfg`` priced by ``perf``, with SGLang's front-end cost unless ``frontend`` says else."""
    timer = StepTimer(
        perf,
        num_layers=cfg.model.num_layers,
        graph_batch_sizes=cfg.graph_batch_sizes,
        overlap_schedule=cfg.overlap_schedule,
        tp=int(cfg.args["tp_size"]),
        vocab_size=cfg.model.vocab_size,
        link_bytes_per_s=cfg.gpu.link_bytes_per_s,
    )
    return Engine(cfg.engine, timer, record_steps=record_steps, frontend=frontend)


def _load(cfg: ResolvedServer) -> Loaded:
    perf, note = load_perf(cfg)
    tokenizer = SimTokenizer.load(
        cfg.args.get("tokenizer_path") if "tokenizer_path" in cfg.given else None,
        str(cfg.args["model_path"]),
        seed=cfg.seed,
    )
    return perf, note, tokenizer


def start_loading(cfg: ResolvedServer) -> Future[Loaded]:
    """Start loading in a daemon thread; the future holds (perf model, roofline note, tokenizer)."""
    future: Future[Loaded] = Future()

    def run() -> None:
        try:
            future.set_result(_load(cfg))
        except BaseException as exc:  # delivered to the server's startup
            future.set_exception(exc)

    threading.Thread(target=run, name="sim-loader", daemon=True).start()
    return future
