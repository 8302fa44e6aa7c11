"""The simulated server's HTTP application: state, startup, and SGLang's control endpoints.

Generation endpoints live in :mod:`.api`. The server listens at once and answers ``/health`` with 503 until the
perf model and tokenizer are loaded (SGLang answers 503 while starting too), then logs SGLang's
"The server is fired up and ready to roll!".
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from aiohttp import web

from pytest_sglang_tune.sim.config import ALWAYS_NOT_MODELLED, PHYSICS_VERSION, ResolvedServer
from pytest_sglang_tune.sim.core import SimRequest, StepRecord
from pytest_sglang_tune.sim.driver import WallClockDriver
from pytest_sglang_tune.sim.engine import Engine
from pytest_sglang_tune.sim.loader import Loaded, build_engine, start_loading
from pytest_sglang_tune.sim.metrics import SimMetrics
from pytest_sglang_tune.sim.perf import PerfModel, StepShape, perf_model_info
from pytest_sglang_tune.sim.startup import predicted_startup_s
from pytest_sglang_tune.sim.tokenizer import OutputPlan, SimTokenizer

__all__ = ["Handle", "SimServer", "json_response"]

log = logging.getLogger("sglang_sim")

HEALTH_TIMEOUT_S = 20.0
INLINE_TOKENIZE_CHARS = 2048  # shorter texts are tokenized on the event loop
SECRET_ARGS = ("api_key", "admin_api_key")  # reported as "<redacted>" in /server_info
OPEN_PATHS = ("/health", "/ready", "/metrics")


class Handle:
    """The server side of one request: wakes its HTTP handler when there is something to send."""

    __slots__ = ("arrival", "first", "interval", "last", "probe", "req", "rid", "sent", "stream", "waiter")

    def __init__(self, req: SimRequest, *, stream: bool, interval: int, probe: bool = False) -> None:
        self.req = req
        self.stream = stream
        self.interval = interval
        self.probe = probe
        self.rid: str | None = None
        self.sent = 0
        self.arrival = 0.0
        self.first = -1.0
        self.last = 0.0
        self.waiter: asyncio.Future[None] | None = None

    def ready(self) -> bool:
        r = self.req
        if r.finished:
            return True
        if not self.stream:
            return False
        new = r.out_len - self.sent
        return new > 0 and (self.sent == 0 or new >= self.interval)

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        while not self.ready():
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None


class SimServer:
    """Everything a request handler needs: resolved args, tokenizer, engine, driver, metrics."""

    def __init__(self, cfg: ResolvedServer, argv: list[str]) -> None:
        self.cfg = cfg
        self.argv = argv
        self.ready = False
        self.failed: str | None = None
        self.tokenizer: SimTokenizer | None = None
        self.perf: PerfModel | None = None
        self.perf_note: str | None = None
        self.engine: Engine | None = None
        self.driver: WallClockDriver | None = None
        self.metrics = SimMetrics(
            version=cfg.sglang_version, model_name=cfg.served_model_name, dp_size=cfg.engine.dp_size
        )
        self.started_at = time.time()
        self.ready_after_s: float | None = None  # wall time from server init to ready
        self.ready_cpu_s: float | None = None  # CPU time of the process until ready (robust to a busy machine)
        self._tok_window = (0.0, 0)
        self._loaded: Future[Loaded] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._last_emit = -1.0
        self._by_rid: dict[str, Handle] = {}  # requests in flight by their request id (for /abort_request)

    # -- startup ----------------------------------------------------------------------------------------------
    def attach(self, loaded: Future[Loaded]) -> None:
        """The perf model and tokenizer being loaded in a thread (started before the heavy imports)."""
        self._loaded = loaded

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loaded is None:
            self._loaded = start_loading(self.cfg)
        try:
            perf, note, tokenizer = await asyncio.wrap_future(self._loaded)
            self.perf, self.perf_note, self.tokenizer = perf, note, tokenizer
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            log.error("startup failed: %s", self.failed)
            raise
        assert self.perf is not None
        cfg = self.cfg
        self.engine = build_engine(cfg, self.perf)
        self.driver = WallClockDriver(self.engine, self._on_step, force_lag_ms=cfg.settings.force_lag_ms)
        self.driver.start(loop)
        self.ready = True
        self.ready_after_s = time.time() - self.started_at
        self.ready_cpu_s = time.process_time()
        log.info(
            "perf model: %s (%s); KV cache: max_total_num_tokens=%d, max_running_requests=%d, "
            "chunked_prefill_size=%s, cuda graph max bs=%s",
            self.perf.name,
            getattr(self.perf, "detail", ""),
            cfg.max_total_num_tokens,
            cfg.engine.max_running_requests,
            cfg.engine.chunked_prefill_size,
            cfg.graph_batch_sizes[-1] if cfg.graph_batch_sizes else "disabled",
        )
        if cfg.not_modelled:
            log.warning("flags accepted but not modelled by the sim: %s", ", ".join(cfg.not_modelled))
        log.info("The server is fired up and ready to roll!")

    # -- requests ---------------------------------------------------------------------------------------------
    async def encode(self, text: str) -> list[int]:
        """Tokenize; long texts in a worker thread (``tokenizers`` releases the GIL), so steps stay on time."""
        tok = self.tokenizer
        assert tok is not None
        if len(text) < INLINE_TOKENIZE_CHARS:
            return tok.encode(text)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-tokenizer")
        return await asyncio.get_running_loop().run_in_executor(self._pool, tok.encode, text)

    def submit(
        self,
        input_ids: list[int],
        plan: OutputPlan,
        *,
        stream: bool,
        max_new_tokens: int,
        probe: bool = False,
        received: float | None = None,
        tokenized: bool = True,
        rid: str | None = None,
    ) -> Handle:
        """Enter a request; ``received`` is when its HTTP request arrived (driver time), ``tokenized`` whether
        the front end tokenized text for it (False for token-id inputs)."""
        assert self.driver is not None
        req = SimRequest(input_ids, plan.output_ids, max_new_tokens=max_new_tokens, finish_reason=plan.finish_reason)
        handle = Handle(req, stream=stream, interval=self.cfg.stream_interval, probe=probe)
        req.handle = handle
        now = self.driver.now()
        handle.arrival = now if received is None else min(received, now)
        if rid:
            handle.rid = rid
            self._by_rid[rid] = handle
        self.driver.submit(req, received=handle.arrival, tokenized=None if tokenized else 0)
        return handle

    def abort_rid(self, rid: str) -> bool:
        """Abort the request with this id (``/abort_request``); False when none is in flight."""
        handle = self._by_rid.get(rid)
        if handle is None:
            return False
        self.abort(handle)
        handle.wake()
        return True

    def abort_all(self) -> int:
        """Abort every request in flight; how many."""
        rids = list(self._by_rid)
        return sum(self.abort_rid(rid) for rid in rids)

    def now(self) -> float:
        """Driver time (seconds since the engine started), for stamping when a request was received."""
        return self.driver.now() if self.driver is not None else 0.0

    def abort(self, handle: Handle) -> None:
        req = handle.req
        if handle.rid:
            self._by_rid.pop(handle.rid, None)
        if self.driver is None or req.finished:
            return
        self.driver.abort(req)
        if not handle.probe:
            self.metrics.request_done(
                streaming=handle.stream,
                prompt=len(req.input_ids),
                completion=req.out_len,
                cached=max(0, req.cached_tokens),
                e2e=0.0,
                ttft=-1.0,
                queue=0.0,
                aborted=True,
            )

    def _on_step(self, record: StepRecord, now: float) -> None:
        itl = self.metrics.itl
        for r in record.emitted:
            h = r.handle
            if h is None:
                continue
            if h.first < 0:
                h.first = now
            elif not h.probe:
                itl.observe(now - h.last)
            h.last = now
            if h.stream and h.waiter is not None and h.ready():
                h.wake()
        for r in record.finished:
            h = r.handle
            if h is None:
                continue
            if h.rid:
                self._by_rid.pop(h.rid, None)
            h.wake()
            if not h.probe:
                self.metrics.request_done(
                    streaming=h.stream,
                    prompt=len(r.input_ids),
                    completion=r.out_len,
                    cached=max(0, r.cached_tokens),
                    e2e=now - h.arrival,
                    ttft=h.first - h.arrival,
                    queue=max(0.0, r.first_scheduled - r.arrival),
                )
        self._last_emit = now
        start, count = self._tok_window
        count += len(record.emitted)
        if now - start >= 1.0:
            self.metrics.gen_throughput = count / (now - start) if start else 0.0
            start, count = now, 0
        self._tok_window = (start, count)

    # -- info -------------------------------------------------------------------------------------------------
    def step_time_samples(self) -> dict[str, float]:
        """Sanity numbers of the perf model (ms per forward pass)."""
        if self.perf is None:
            return {}
        f = self.perf.forward_ms
        return {
            "decode_bs1_ctx1k": round(f(StepShape(decode_reqs=1, decode_context=1000)), 3),
            "decode_bs64_ctx1k": round(f(StepShape(decode_reqs=64, decode_context=64_000)), 3),
            "prefill_1k": round(f(StepShape(prefill_reqs=1, prefill_tokens=1000)), 3),
            "prefill_8k": round(f(StepShape(prefill_reqs=1, prefill_tokens=8192)), 3),
        }

    def lag_info(self) -> dict[str, Any]:
        if self.driver is None:
            return {
                "steps": 0,
                "late_steps": 0,
                "last_s": 0.0,
                "max_s": 0.0,
                "mean_s": 0.0,
                "p99_s": 0.0,
                "warning": None,
            }
        return self.driver.lag.as_dict()

    def sim_info(self) -> dict[str, Any]:
        cfg = self.cfg
        engine = self.engine
        return {
            "physics_version": PHYSICS_VERSION,
            "perf_model": perf_model_info(self.perf, cfg.gpu.name, self.perf_note),
            "perf_model_name": f"{self.perf.name} {self.perf.data_version}" if self.perf else None,
            "perf_model_detail": getattr(self.perf, "detail", None),
            "perf_model_note": self.perf_note,
            "sglang_version": cfg.sglang_version,
            "front_end": engine.frontend.as_dict() if engine is not None else None,
            "weights": {
                "quantization": cfg.model.quant,
                "source": cfg.model.quant_source,
                "bits": cfg.model.weight_bits,
                "gb_per_gpu": round(cfg.model.weight_bytes() / self._model_shards() / 1e9, 2),
            },
            "gpu": cfg.gpu.name,
            "num_gpus": cfg.settings.num_gpus,
            "gpus_used": cfg.gpus_used,
            "model": cfg.model.name,
            "model_facts": cfg.model.source,
            "tokenizer": self.tokenizer.path if self.tokenizer else None,
            "seed": cfg.seed,
            "flag_table": cfg.sglang_version,
            "prefill_mode": cfg.prefill_mode,
            "prefill_mode_source": "SGLANG_SIM_PREFILL" if cfg.settings.prefill else "--enable-mixed-chunk",
            "cuda_graph_batch_sizes": list(cfg.graph_batch_sizes),
            "step_time_ms": self.step_time_samples(),
            "not_modelled": [*cfg.not_modelled, *ALWAYS_NOT_MODELLED],
            "startup_s_predicted": predicted_startup_s(cfg),  # what a real server would take (sim/startup.py)
            "not_modelled_flags": list(cfg.not_modelled),
            "lag": self.lag_info(),
            "ready_after_s": round(self.ready_after_s, 3) if self.ready_after_s is not None else None,
            "ready_cpu_s": round(self.ready_cpu_s, 3) if self.ready_cpu_s is not None else None,
        }

    def server_info(self) -> dict[str, Any]:
        cfg = self.cfg
        stats = self.engine.stats() if self.engine else None
        kv_gb = cfg.max_total_num_tokens * cfg.model.kv_bytes_per_token(int(cfg.args["tp_size"])) / 1e9
        internal = {
            "last_gen_throughput": round(self.metrics.gen_throughput, 3),
            "memory_usage": {
                "weight": round(cfg.model.weight_bytes() / self._model_shards() / 1e9, 2),
                "kvcache": round(kv_gb, 2),
                "token_capacity": cfg.max_total_num_tokens,
            },
            "effective_max_running_requests_per_dp": cfg.engine.max_running_requests,
            "num_running_reqs": stats.running if stats else 0,
            "num_waiting_reqs": stats.queued if stats else 0,
        }
        launch = [sys.executable, "-m", "pytest_sglang_tune.sim", *self.argv]
        args = {k: ("<redacted>" if k in SECRET_ARGS and v else v) for k, v in cfg.args.items()}
        return {
            **args,
            "launch_command": shlex.join(_redact_argv(launch)),
            "status": "ready" if self.ready else "starting",
            "max_total_num_tokens": cfg.max_total_num_tokens,
            "max_req_input_len": cfg.context_len - 1,
            "startup_time": self.started_at,
            "internal_states": [dict(internal) for _ in range(cfg.engine.dp_size)],
            "version": cfg.sglang_version,
            "sim": self.sim_info(),
        }

    def _model_shards(self) -> int:
        return int(self.cfg.args["tp_size"]) * int(self.cfg.args.get("pp_size") or 1)

    def model_info(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "model_path": cfg.args["model_path"],
            "served_model_name": cfg.served_model_name,
            "tokenizer_path": cfg.args.get("tokenizer_path"),
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "load_format": cfg.args.get("load_format", "auto"),
            "reasoning_parser": cfg.args.get("reasoning_parser"),
            "tool_call_parser": cfg.args.get("tool_call_parser"),
            "disaggregation_mode": "null",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": cfg.model.architecture.replace("ForCausalLM", "").lower(),
            "architectures": [cfg.model.architecture],
        }

    async def health_probe(self) -> bool:
        """SGLang's 1-token generation probe; skipped while the server is busy emitting tokens."""
        if not self.ready or self.engine is None or self.driver is None or self.tokenizer is None:
            return False
        if not self.engine.idle and self.driver.now() - self._last_emit < 1.0:
            return True
        plan = OutputPlan([self.tokenizer.word_ids[0]], "length", None)
        handle = self.submit([0], plan, stream=False, max_new_tokens=1, probe=True)
        try:
            await asyncio.wait_for(handle.wait(), HEALTH_TIMEOUT_S)
        except TimeoutError:
            self.abort(handle)
            return False
        return True


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")


def _redact_argv(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        flag, eq, _ = arg.partition("=")
        if flag in ("--api-key", "--admin-api-key"):
            if eq:
                out[i] = f"{flag}=<redacted>"
            elif i + 1 < len(out):
                out[i + 1] = "<redacted>"
    return out


def model_card(srv: SimServer) -> dict[str, Any]:
    return {
        "id": srv.cfg.served_model_name,
        "object": "model",
        "created": int(srv.started_at),
        "owned_by": "sglang",
        "root": srv.cfg.served_model_name,
        "max_model_len": srv.cfg.context_len,
    }


def new_id() -> str:
    return uuid.uuid4().hex
