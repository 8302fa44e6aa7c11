"""Generation endpoints: ``/v1/chat/completions``, ``/v1/completions`` and ``/generate``, in SGLang's formats.

Streams are server-sent events (``data: <json>`` + blank line, ending with ``data: [DONE]``) chunked as SGLang
does (see ``sglang-http-api.md`` §3/§4): chat starts with a role chunk, sends text deltas, then a finish chunk
without content, then — with ``stream_options.include_usage`` — a usage chunk with ``"choices": []``;
``stream_options.continuous_usage_stats`` adds running usage to every chunk. ``/generate`` streams the
cumulative text unless ``--incremental-streaming-output`` (``--stream-output`` in 0.5.5.post3). A chunk goes out
every ``--stream-interval`` tokens (and for the first token and at the end). Chunk envelopes are formatted once
per request; only the text is serialized per chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pytest_sglang_tune.sim.server import Handle, SimServer, json_response, new_id
from pytest_sglang_tune.sim.tokenizer import OutputPlan, TokenizerError

__all__ = ["chat_completions", "completions", "generate"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DONE = "data: [DONE]\n\n"
_dumps = json.dumps


class BadRequest(Exception):
    """A request SGLang would answer with HTTP 400."""


def _openai_error(message: str, status: int = 400) -> web.Response:
    kind = "BadRequestError" if status == 400 else "ServiceUnavailableError"
    return json_response(
        {"object": "error", "message": message, "type": kind, "param": None, "code": status}, status=status
    )


async def _read_json(request: web.Request) -> dict[str, Any]:
    ctype = request.headers.get("Content-Type", "")
    if ctype and "json" not in ctype:
        raise BadRequest(f"Unsupported Content-Type {ctype!r}; send application/json")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"Invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return body


def _int(body: dict[str, Any], name: str, default: int | None, minimum: int = 0) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}, got {value}")
    return value


def _plan(
    srv: SimServer, ids: list[int], max_new: int | None, body: dict[str, Any], *, min_key: str
) -> tuple[OutputPlan, int]:
    """Check lengths like SGLang's tokenizer manager and plan the output."""
    tok = srv.tokenizer
    assert tok is not None
    ctx = srv.cfg.context_len
    if not ids:
        raise BadRequest("The input is empty")
    if len(ids) >= ctx:
        raise BadRequest(f"The input ({len(ids)} tokens) is longer than the model's context length ({ctx} tokens).")
    if max_new is None:
        max_new = ctx - len(ids)
    if len(ids) + max_new > ctx:
        raise BadRequest(
            f"Requested token count exceeds the model's maximum context length of {ctx} tokens. You requested a "
            f"total of {len(ids) + max_new} tokens: {len(ids)} tokens from the input messages and {max_new} tokens "
            "for the completion. Please reduce the number of tokens in the input messages or the completion to fit "
            "within the limit."
        )
    n = body.get("n", 1)
    if n not in (1, None):
        raise BadRequest(f"n={n!r} is not supported by the simulated server (only n=1)")
    seed = body.get("seed")
    plan = tok.plan_output(
        ids,
        max_new,
        ignore_eos=bool(body.get("ignore_eos")),
        min_new_tokens=_int(body, min_key, 0) or 0,
        request_seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    )
    cap = srv.cfg.max_total_num_tokens
    if len(ids) + len(plan.output_ids) > cap:
        raise BadRequest(
            f"The request needs {len(ids) + len(plan.output_ids)} KV-cache tokens, more than the server's "
            f"max_total_num_tokens={cap}"
        )
    return plan, max_new


def _usage(srv: SimServer, h: Handle, *, final: bool) -> str:
    r = h.req
    p, c = len(r.input_ids), r.out_len
    if not final:
        return f'{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{p + c}}}'
    details = f'{{"cached_tokens":{max(0, r.cached_tokens)}}}' if srv.cfg.args.get("enable_cache_report") else "null"
    extra = "" if srv.cfg.sglang_version.startswith("0.5.5") else ',"completion_tokens_details":null'
    return (
        f'{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{p + c},'
        f'"prompt_tokens_details":{details},"reasoning_tokens":0{extra}}}'
    )


def _finish(h: Handle) -> tuple[str, Any]:
    r = h.req
    if r.state == "aborted":
        return "abort", None
    if r.finish_reason == "stop":
        return "stop", r.output_ids[-1]
    return "length", None


async def _wait_or_abort(srv: SimServer, h: Handle) -> None:
    """Wait for a non-streaming request to finish; abort it in the scheduler when the client goes away."""
    try:
        await h.wait()
    except asyncio.CancelledError:
        srv.abort(h)
        raise


def _usage_options(srv: Any, body: dict[str, Any]) -> tuple[bool, bool]:
    """(send a usage chunk at the end, attach running usage to every chunk) for a streaming request."""
    opts = _stream_options(body)
    include = bool(opts.get("include_usage")) or bool(srv.cfg.args.get("stream_response_default_include_usage"))
    return include, bool(opts.get("continuous_usage_stats"))


def _stream_options(body: dict[str, Any]) -> dict[str, Any]:
    opts = body.get("stream_options")
    return opts if isinstance(opts, dict) else {}


def _ready_or_error(srv: SimServer) -> web.Response | None:
    if srv.failed:
        return _openai_error(f"server failed to start: {srv.failed}", 503)
    if not srv.ready:
        return _openai_error("The server is starting; retry when /health answers 200", 503)
    return None


async def _stream(
    request: web.Request, srv: SimServer, h: Handle, render: Callable[[Handle, list[int], bool], str]
) -> web.StreamResponse:
    """Write SSE chunks as tokens arrive; abort the request if the client goes away."""
    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    try:
        await resp.prepare(request)
        while True:
            await h.wait()
            r = h.req
            n = r.out_len
            first = h.sent == 0
            new = r.output_ids[h.sent : n]
            h.sent = n
            await resp.write(render(h, new, first).encode())
            if r.finished:
                break
        await resp.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        srv.abort(h)
        raise
    return resp


def chat_completions(srv: SimServer) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if (err := _ready_or_error(srv)) is not None:
            return err
        received = srv.now()
        tok = srv.tokenizer
        assert tok is not None
        try:
            body = await _read_json(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages must be a non-empty list")
            ids = await srv.encode(tok.apply_chat_template(messages))
            max_new = _int(body, "max_completion_tokens", None, 1)
            max_new = _int(body, "max_tokens", None, 1) if max_new is None else max_new
            plan, max_new = _plan(srv, ids, max_new, body, min_key="min_tokens")
        except (BadRequest, TokenizerError) as exc:
            return _openai_error(str(exc))
        model = body.get("model") if isinstance(body.get("model"), str) else srv.cfg.served_model_name
        rid, created = "chatcmpl-" + new_id(), int(time.time())
        stream = bool(body.get("stream"))
        h = srv.submit(ids, plan, stream=stream, max_new_tokens=max_new, received=received, rid=rid)
        if not stream:
            await _wait_or_abort(srv, h)
            reason, matched = _finish(h)
            return json_response(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": tok.decode(h.req.output_ids[: h.req.out_len]),
                                "reasoning_content": None,
                                "tool_calls": None,
                            },
                            "logprobs": None,
                            "finish_reason": reason,
                            "matched_stop": matched,
                        }
                    ],
                    "usage": json.loads(_usage(srv, h, final=True)),
                    "metadata": {"weight_version": "default"},
                }
            )
        include_usage, continuous = _usage_options(srv, body)
        head = (
            f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
            f'"model":{_dumps(model)},"choices":['
        )
        tail_open = '{"index":0,"delta":'

        def render(h: Handle, new: list[int], first: bool) -> str:
            usage = f',"usage":{_usage(srv, h, final=False)}' if continuous else ""
            out = []
            if first:
                out.append(
                    f'{head}{tail_open}{{"role":"assistant","content":"","reasoning_content":null}},'
                    f'"logprobs":null,"finish_reason":null,"matched_stop":null}}]{usage}}}\n\n'
                )
            text = tok.decode(new)
            if text:
                out.append(
                    f'{head}{tail_open}{{"content":{_dumps(text)},"reasoning_content":null}},'
                    f'"logprobs":null,"finish_reason":null,"matched_stop":null}}]{usage}}}\n\n'
                )
            if h.req.finished:
                reason, matched = _finish(h)
                out.append(
                    f'{head}{tail_open}{{"reasoning_content":null}},"logprobs":null,'
                    f'"finish_reason":"{reason}","matched_stop":{_dumps(matched)}}}]{usage}}}\n\n'
                )
                if include_usage:
                    out.append(f'{head}],"usage":{_usage(srv, h, final=True)}}}\n\n')
                out.append(DONE)
            return "".join(out)

        return await _stream(request, srv, h, render)

    return handler


async def _prompt_ids(srv: SimServer, prompt: Any) -> tuple[list[int], bool]:
    """(token ids, whether they came from text the front end had to tokenize)."""
    tok = srv.tokenizer
    assert tok is not None
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return await srv.encode(prompt), True
    if isinstance(prompt, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        tok.check_ids(prompt)
        return list(prompt), False
    raise BadRequest(
        "prompt must be a string, a list of token ids, or a one-element list of either "
        "(batched prompts are not supported by the simulated server)"
    )


def completions(srv: SimServer) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if (err := _ready_or_error(srv)) is not None:
            return err
        received = srv.now()
        tok = srv.tokenizer
        assert tok is not None
        try:
            body = await _read_json(request)
            if "prompt" not in body:
                raise BadRequest("prompt is required")
            ids, from_text = await _prompt_ids(srv, body["prompt"])
            plan, max_new = _plan(srv, ids, _int(body, "max_tokens", 16, 1), body, min_key="min_tokens")
        except (BadRequest, TokenizerError) as exc:
            return _openai_error(str(exc))
        model = body.get("model") if isinstance(body.get("model"), str) else srv.cfg.served_model_name
        rid, created = "cmpl-" + new_id(), int(time.time())
        echo = tok.decode(ids) if body.get("echo") else ""
        stream = bool(body.get("stream"))
        h = srv.submit(
            ids, plan, stream=stream, max_new_tokens=max_new, received=received, tokenized=from_text, rid=rid
        )
        if not stream:
            await _wait_or_abort(srv, h)
            reason, matched = _finish(h)
            return json_response(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "text": echo + tok.decode(h.req.output_ids[: h.req.out_len]),
                            "logprobs": None,
                            "finish_reason": reason,
                            "matched_stop": matched,
                        }
                    ],
                    "usage": json.loads(_usage(srv, h, final=True)),
                    "metadata": {"weight_version": "default"},
                }
            )
        include_usage, continuous = _usage_options(srv, body)
        head = (
            f'data: {{"id":"{rid}","object":"text_completion","created":{created},"model":{_dumps(model)},"choices":['
        )

        def render(h: Handle, new: list[int], first: bool) -> str:
            usage = f',"usage":{_usage(srv, h, final=False)}' if continuous else ""
            text = (echo if first else "") + tok.decode(new)
            reason, matched = _finish(h) if h.req.finished else (None, None)
            out = [
                f'{head}{{"index":0,"text":{_dumps(text)},"logprobs":null,"finish_reason":{_dumps(reason)},'
                f'"matched_stop":{_dumps(matched)}}}]{usage}}}\n\n'
            ]
            if h.req.finished:
                if include_usage:
                    out.append(f'{head}],"usage":{_usage(srv, h, final=True)}}}\n\n')
                out.append(DONE)
            return "".join(out)

        return await _stream(request, srv, h, render)

    return handler


def _generate_error(message: str, status: int = 400) -> web.Response:
    return json_response({"error": {"message": message}}, status=status)


def generate(srv: SimServer) -> Handler:
    incremental = srv.cfg.incremental_output
    reasoning = not srv.cfg.sglang_version.startswith("0.5.5")  # meta_info.reasoning_tokens is newer than 0.5.5

    def meta(h: Handle, rid: str) -> dict[str, Any]:
        r = h.req
        reason: Any = None
        if r.finished:
            kind, matched = _finish(h)
            reason = (
                {"type": kind, "matched": matched}
                if kind == "stop"
                else (
                    {"type": "length", "length": r.out_len}
                    if kind == "length"
                    else {"type": "abort", "message": "request aborted"}
                )
            )
        out = {
            "id": rid,
            "finish_reason": reason,
            "prompt_tokens": len(r.input_ids),
            "completion_tokens": r.out_len,
            "cached_tokens": max(0, r.cached_tokens),
            "weight_version": "default",
            "num_retractions": r.retractions,
        }
        if reasoning:
            out["reasoning_tokens"] = 0  # no reasoning parser runs in the sim
        if r.finished and srv.driver is not None:
            out["e2e_latency"] = round(srv.driver.now() - h.arrival, 6)
        return out

    async def handler(request: web.Request) -> web.StreamResponse:
        if srv.failed or not srv.ready:
            return _generate_error("The server is starting", 503)
        received = srv.now()
        tok = srv.tokenizer
        assert tok is not None
        try:
            body = await _read_json(request)
            from_text = body.get("input_ids") is None
            if body.get("input_ids") is not None:
                ids = body["input_ids"]
                if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
                    raise BadRequest("input_ids must be a non-empty list of token ids (batches are not supported)")
                tok.check_ids(ids)
            elif isinstance(body.get("text"), str):
                ids = await srv.encode(body["text"])
            else:
                raise BadRequest("Either text or input_ids should be provided (one string or one list of ids).")
            sp = body.get("sampling_params") or {}
            if not isinstance(sp, dict):
                raise BadRequest("sampling_params must be an object")
            plan, max_new = _plan(srv, ids, _int(sp, "max_new_tokens", 128, 0) or 1, sp, min_key="min_new_tokens")
        except (BadRequest, TokenizerError) as exc:
            return _generate_error(str(exc))
        rid = str(body.get("rid") or new_id())
        stream = bool(body.get("stream"))
        h = srv.submit(
            ids, plan, stream=stream, max_new_tokens=max_new, received=received, tokenized=from_text, rid=rid
        )
        if not stream:
            await _wait_or_abort(srv, h)
            out_ids = h.req.output_ids[: h.req.out_len]
            return json_response({"text": tok.decode(out_ids), "output_ids": out_ids, "meta_info": meta(h, rid)})
        text_so_far: list[str] = []

        def render(h: Handle, new: list[int], first: bool) -> str:
            piece = tok.decode(new)
            if incremental:
                event = {"text": piece, "output_ids": new, "meta_info": meta(h, rid)}
            else:
                text_so_far.append(piece)
                event = {
                    "text": "".join(text_so_far),
                    "output_ids": h.req.output_ids[: h.sent],
                    "meta_info": meta(h, rid),
                }
            out = f"data: {_dumps(event)}\n\n"
            return out + DONE if h.req.finished else out

        return await _stream(request, srv, h, render)

    return handler
