"""Cheap control endpoints clients of SGLang 0.5.x call: load reports, aborts, tokenize and detokenize.

Shapes follow the SGLang wheels (read, not copied):

* ``GET /v1/loads`` (0.5.23, ``sglang/srt/entrypoints/v1_loads.py``): ``{"timestamp", "version", "accelerator",
  "num_accelerators", "loads": [LoadSnapshot per DP rank]}`` with the core keys of ``LoadSnapshot``
  (``sglang/srt/managers/load_snapshot.py``) and its ``memory`` section; ``?dp_rank=`` filters,
  ``?include=core`` drops sections, an unknown section is a 400.
* ``GET /get_load`` (0.5.5.post3, ``http_server.py``): a list of ``GetLoadReqOutput`` per DP rank:
  ``{"rid": null, "http_worker_ipc": null, "dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"}``.
* ``POST /abort_request`` ``{"rid": "...", "abort_all": false}`` -> 200 with an empty body (both versions).
* ``POST /v1/tokenize`` and ``/tokenize`` ``{"prompt": str | [str]}`` -> ``{"tokens", "count",
  "max_model_len"}``; ``POST /v1/detokenize`` and ``/detokenize`` ``{"tokens": [int] | [[int]]}`` ->
  ``{"text"}`` (``protocol.py`` ``TokenizeResponse``/``DetokenizeResponse``, both versions).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from pytest_sglang_tune.sim.server import SimServer, json_response
from pytest_sglang_tune.sim.tokenizer import SimTokenizer, TokenizerError

__all__ = ["add_control_routes"]

LOAD_SECTIONS = frozenset({"core", "memory", "spec", "lora", "disagg", "queues", "all"})


def _error(message: str, status: int = 400) -> web.Response:
    kind = "BadRequestError" if status == 400 else "NotFoundError"
    return json_response({"object": "error", "message": message, "type": kind, "param": None, "code": status}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"Invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="The request body must be a JSON object")
    return body


def _loads(srv: SimServer) -> list[dict[str, Any]]:
    cfg = srv.cfg
    stats = srv.engine.replica_stats() if srv.engine else []
    kv_gb = cfg.max_total_num_tokens * cfg.model.kv_bytes_per_token(int(cfg.args["tp_size"])) / 1e9
    weight_gb = cfg.model.weight_bytes() / (int(cfg.args["tp_size"]) * int(cfg.args.get("pp_size") or 1)) / 1e9
    out = []
    for rank, s in enumerate(stats):
        waiting_tokens = sum(len(r.input_ids) for r in srv.engine.replicas[rank].waiting) if srv.engine else 0
        out.append(
            {
                "timestamp": time.time(),
                "dp_rank": rank,
                "num_running_reqs": s.running,
                "num_waiting_reqs": s.queued,
                "num_waiting_uncached_tokens": waiting_tokens,
                "num_used_tokens": s.used_tokens,
                "num_total_tokens": s.used_tokens + waiting_tokens,
                "num_active_tokens": s.used_tokens + waiting_tokens,
                "num_prealloc_ready_tokens": 0,
                "max_total_num_tokens": s.capacity,
                "max_running_requests": cfg.engine.max_running_requests,
                "token_usage": round(s.token_usage, 6),
                "gen_throughput": round(srv.metrics.gen_throughput / max(1, len(stats)), 3),
                "cache_hit_rate": round(s.cache_hit_rate, 6),
                "utilization": round(min(1.0, s.running / max(1, cfg.engine.max_running_requests)), 6),
                "total_prefill_uncached_tokens": s.prompt_tokens - s.cached_tokens,
                "total_prefill_busy_us": 0,
                "decode_moments": None,
                "memory": {
                    "weight_gb": round(weight_gb, 3),
                    "kv_cache_gb": round(kv_gb, 3),
                    "graph_gb": 0.0,
                    "token_capacity": s.capacity,
                },
            }
        )
    return out


def add_control_routes(app: web.Application, srv: SimServer) -> None:
    """Mount the endpoints of the module docstring for the server's SGLang version."""
    old = srv.cfg.sglang_version.startswith("0.5.5")

    async def v1_loads(request: web.Request) -> web.Response:
        include_raw = request.query.get("include")
        include = {s.strip() for s in include_raw.split(",")} if include_raw else None
        if include and not include <= LOAD_SECTIONS:
            return _error(
                f"Invalid include sections: {include - LOAD_SECTIONS}. Valid options: {sorted(LOAD_SECTIONS)}"
            )
        loads = _loads(srv)
        if "dp_rank" in request.query:
            try:
                rank = int(request.query["dp_rank"])
            except ValueError:
                return _error(f"dp_rank must be an integer, got {request.query['dp_rank']!r}")
            loads = [x for x in loads if x["dp_rank"] == rank]
        if include is not None and "all" not in include and "memory" not in include:
            for x in loads:
                x.pop("memory", None)
        return json_response(
            {
                "timestamp": datetime.now(UTC).isoformat(),
                "version": srv.cfg.sglang_version,
                "accelerator": srv.cfg.gpu.label or srv.cfg.gpu.name,
                "num_accelerators": int(srv.cfg.args["tp_size"]) * int(srv.cfg.args.get("pp_size") or 1),
                "loads": loads,
            }
        )

    async def get_load(request: web.Request) -> web.Response:
        return json_response(
            [
                {
                    "rid": None,
                    "http_worker_ipc": None,
                    "dp_rank": x["dp_rank"],
                    "num_reqs": x["num_running_reqs"] + x["num_waiting_reqs"],
                    "num_waiting_reqs": x["num_waiting_reqs"],
                    "num_tokens": x["num_total_tokens"],
                }
                for x in _loads(srv)
            ]
        )

    async def abort_request(request: web.Request) -> web.Response:
        body = await _body(request)
        rid = body.get("rid")
        if body.get("abort_all"):
            srv.abort_all()
        elif isinstance(rid, str) and rid:
            srv.abort_rid(rid)
        return web.Response(status=200)

    def with_tokenizer(
        fn: Callable[[dict[str, Any], SimTokenizer], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            if srv.tokenizer is None:
                return _error("The server is starting", 503)
            return await fn(await _body(request), srv.tokenizer)

        return handler

    @with_tokenizer
    async def tokenize(body: dict[str, Any], tok: SimTokenizer) -> web.Response:
        prompt = body.get("prompt")
        max_len = srv.cfg.context_len
        if isinstance(prompt, str):
            ids = await srv.encode(prompt)
            return json_response({"tokens": ids, "count": len(ids), "max_model_len": max_len})
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            lists = [await srv.encode(p) for p in prompt]
            return json_response({"tokens": lists, "count": [len(x) for x in lists], "max_model_len": max_len})
        if isinstance(body.get("messages"), list):
            try:
                ids = await srv.encode(tok.apply_chat_template(body["messages"]))
            except TokenizerError as exc:
                return _error(str(exc))
            return json_response({"tokens": ids, "count": len(ids), "max_model_len": max_len})
        return _error(f"Invalid prompt type: {type(prompt).__name__}. Expected str or List[str].")

    @with_tokenizer
    async def detokenize(body: dict[str, Any], tok: SimTokenizer) -> web.Response:
        tokens = body.get("tokens")
        try:
            if isinstance(tokens, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
                tok.check_ids(tokens)
                return json_response({"text": tok.decode(tokens)})
            if isinstance(tokens, list) and all(isinstance(t, list) for t in tokens):
                for t in tokens:
                    tok.check_ids(t)
                return json_response({"text": [tok.decode(t) for t in tokens]})
        except TokenizerError as exc:
            return _error(str(exc))
        return _error("tokens must be a list of token ids or a list of such lists")

    if old:
        app.router.add_get("/get_load", get_load)
    else:
        app.router.add_get("/v1/loads", v1_loads)
    app.router.add_post("/abort_request", abort_request)
    for path in ("/v1/tokenize", "/tokenize"):
        app.router.add_post(path, tokenize)
    for path in ("/v1/detokenize", "/detokenize"):
        app.router.add_post(path, detokenize)
