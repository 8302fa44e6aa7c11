"""Load the perf model and the tokenizer in a background thread, started before the HTTP stack is imported.

Building ``aiconfigurator-core``'s model takes about a second (mostly Rust, partly outside the GIL), so the
server starts it first and imports aiohttp meanwhile.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from pytest_sglang_tune.sim.config import ResolvedServer
from pytest_sglang_tune.sim.perf import PerfModel, make_perf_model
from pytest_sglang_tune.sim.tokenizer import SimTokenizer

__all__ = ["Loaded", "start_loading"]

Loaded = tuple[PerfModel, "str | None", SimTokenizer]


def _load(cfg: ResolvedServer) -> Loaded:
    tp, pp = int(cfg.args["tp_size"]), int(cfg.args.get("pp_size") or 1)
    perf, note = make_perf_model(cfg.settings.perf_model, cfg.model, cfg.gpu, tp=tp, pp=pp)
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
