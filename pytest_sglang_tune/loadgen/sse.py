"""Server-sent events: an incremental byte-level decoder and the interpreter that turns SGLang's streamed
chunks into one ``RequestSample``.

``SSEDecoder`` follows the WHATWG event-stream rules that matter here: lines end in ``\\n``, ``\\r\\n`` or
``\\r`` (also when the pair is split across network reads), a blank line ends an event, ``data:`` with or
without one space, several ``data`` lines join with ``\\n``, ``:`` lines are comments (keep-alives), other
fields are ignored. Unlike the spec, an event still pending at end of stream is delivered (``flush``), so a
final ``data: [DONE]`` without its blank line still counts; a cut-off JSON payload then shows up as
``truncated``.

``StreamHandler`` reads the payloads of one response:

* OpenAI chunks (``/v1/chat/completions``, ``/v1/completions``): a *content chunk* is a chunk whose choice
  carries non-empty ``delta.content`` / ``delta.reasoning_content`` / ``delta.tool_calls`` (chat) or ``text``
  (completions). Its token count is the growth of the running ``usage.completion_tokens`` when the chunk
  carries usage (``stream_options.continuous_usage_stats``), else 1. The final ``choices: []`` usage chunk
  sets the served input/output token counts.
* Native ``/generate`` events: ``meta_info.completion_tokens`` is cumulative in both streaming modes
  (cumulative text by default, deltas with incremental streaming), so its growth is the token count of the
  event.

The first content chunk sets ``first_token``; every later one appends its arrival time and token count to
``chunk_times``/``chunk_tokens``. Errors: ``{"error": ...}`` or undecodable JSON mid-stream →
``stream_error``; ``finish_reason`` ``abort`` → ``aborted``; end of stream with neither ``[DONE]`` nor a
finish reason (or with a cut-off payload) → ``truncated``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pytest_sglang_tune.loadgen.samples import RequestSample

try:  # orjson is faster on the hot path; json is the fallback
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
    _DECODE_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    loads = json.loads
    _DECODE_ERRORS = (ValueError, UnicodeDecodeError)

DONE = b"[DONE]"


class SSEDecoder:
    """Incremental SSE decoder: ``feed`` network reads, get the ``data`` payload of each complete event."""

    __slots__ = ("_buf", "_data", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""  # the unterminated tail of the last read (never contains a line break)
        self._data: list[bytes] = []  # data lines of the event being assembled
        self._skip_lf = False  # the last read ended in "\r": a leading "\n" of the next one pairs with it

    def feed(self, chunk: bytes) -> list[bytes]:
        """Decode one network read; returns the payloads of the events it completed (possibly none)."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                self._skip_lf = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[bytes] = []
        line_fn = self._line
        if b"\n\n" in buf:  # fast path: whole events, most of them a single "data: " line
            parts = buf.split(b"\n\n")
            buf = parts.pop()
            for part in parts:
                if not self._data and part[:6] == b"data: " and b"\n" not in part:
                    out.append(part[6:])
                else:
                    for line in part.split(b"\n"):
                        line_fn(line, out)
                    line_fn(b"", out)
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        for line in lines:
            line_fn(line, out)
        return out

    def flush(self) -> list[bytes]:
        """End of stream: deliver what is pending (a last line without break, an event without blank line)."""
        out: list[bytes] = []
        if self._buf:
            self._line(self._buf, out)
            self._buf = b""
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if not line:
            if self._data:
                out.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                self._data = []
            return
        if line[:5] == b"data:":
            value = line[5:]
            self._data.append(value[1:] if value[:1] == b" " else value)
        elif line == b"data":
            self._data.append(b"")
        # ":" comments (keep-alives), event:, id:, retry: and unknown fields are ignored


class StreamHandler:
    """Fills one ``RequestSample`` from its stream's payloads; ``native`` selects the ``/generate`` format."""

    __slots__ = ("_counted", "_usage_out", "done", "finished", "native", "sample")

    def __init__(self, sample: RequestSample, *, native: bool = False) -> None:
        self.sample = sample
        self.native = native
        self.done = False  # [DONE] seen
        self.finished = False  # a finish reason seen
        self._counted = 0  # output tokens attributed to content chunks so far
        self._usage_out: int | None = None  # last running/final completion_tokens reported by the server

    def on_event(self, payload: bytes, t: float) -> bool:
        """Handle one event arriving at ``t``; True when the stream is over (``[DONE]`` or an error)."""
        if len(payload) < 16 and payload.strip() == DONE:
            self.done = True
            self._end(t)
            return True
        try:
            obj = loads(payload)
        except _DECODE_ERRORS:
            return self._fail("stream_error", f"undecodable event: {payload[:200]!r}")
        if not isinstance(obj, dict):
            return self._fail("stream_error", f"event is not a JSON object: {payload[:200]!r}")
        err = obj.get("error")
        if err is not None:
            msg = err.get("message", err) if isinstance(err, dict) else err
            return self._fail("stream_error", str(msg)[:300])
        if self.native:
            self._native(obj, t)
        else:
            self._openai(obj, t)
        return self.sample.error is not None

    def on_eof(self, pending: list[bytes], t: float) -> None:
        """The response body ended; ``pending`` is what the decoder flushed."""
        for payload in pending:
            if self.done or self.sample.error is not None:
                return
            if self._is_cut_off(payload):
                self._fail("truncated", f"stream ended inside an event: {payload[:200]!r}")
                return
            self.on_event(payload, t)
        if self.done or self.sample.error is not None:
            return
        if self.finished:
            self._end(t)
        else:
            self._fail("truncated", "stream ended without [DONE] or a finish reason")

    # -- formats --------------------------------------------------------------------------------------------

    def _openai(self, obj: dict[str, Any], t: float) -> None:
        usage = obj.get("usage")
        chunk_usage: int | None = None
        if usage:  # _read_usage inlined for the common case (no details): this runs once per streamed chunk
            if "prompt_tokens_details" in usage:
                chunk_usage = self._read_usage(usage)
            else:
                pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
                if type(pt) is int:
                    self.sample.input_tokens = pt
                if type(ct) is int:
                    self._usage_out = chunk_usage = ct
        content = False
        for choice in obj.get("choices") or ():
            delta = choice.get("delta")
            if delta is not None:
                text = delta.get("content")
                if text or delta.get("reasoning_content") or delta.get("tool_calls"):
                    content = True
                    if text and self.sample.reply is not None:
                        self.sample.reply.append(text)
            elif choice.get("text"):
                content = True
            reason = choice.get("finish_reason")
            if reason:
                self._finish(str(reason), choice.get("matched_stop"))
        if content:
            k = 1 if chunk_usage is None else chunk_usage - self._counted
            self._tokens(k, t)

    def _native(self, obj: dict[str, Any], t: float) -> None:
        meta = obj.get("meta_info") or {}
        ct = meta.get("completion_tokens")
        pt = meta.get("prompt_tokens")
        if isinstance(pt, int):
            self.sample.input_tokens = pt
        cached = meta.get("cached_tokens")
        if isinstance(cached, int):
            self.sample.cached_tokens = cached
        if isinstance(ct, int):
            self._usage_out = ct
            self._tokens(ct - self._counted, t)
        elif obj.get("text") or obj.get("output_ids"):
            self._tokens(1, t)
        reason = meta.get("finish_reason")
        if reason:
            if isinstance(reason, dict):
                kind = str(reason.get("type", "stop"))
                self._finish(kind, reason.get("message") or reason.get("matched"))
            else:
                self._finish(str(reason), None)

    # -- helpers --------------------------------------------------------------------------------------------

    def _read_usage(self, usage: dict[str, Any]) -> int | None:
        pt = usage.get("prompt_tokens")
        if isinstance(pt, int):
            self.sample.input_tokens = pt
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            self.sample.cached_tokens = details["cached_tokens"]
        ct = usage.get("completion_tokens")
        if isinstance(ct, int):
            self._usage_out = ct
            return ct
        return None

    def _tokens(self, k: int, t: float) -> None:
        """A content chunk carrying ``k`` new tokens arrived at ``t``."""
        s = self.sample
        if s.first_token is None:
            s.first_token = t
            self._counted += max(k, 0)
            return
        if k <= 0:
            return
        s.chunk_times.append(t)
        s.chunk_tokens.append(k)
        self._counted += k

    def _finish(self, reason: str, detail: object) -> None:
        self.finished = True
        if reason == "abort":
            self._fail("aborted", f"server aborted the request: {detail}" if detail else "server aborted the request")

    def _end(self, t: float) -> None:
        s = self.sample
        if s.error is None:
            s.done = t
        s.output_tokens = self._usage_out if self._usage_out is not None else self._counted

    def _fail(self, error: str, detail: str) -> bool:
        s = self.sample
        if s.error is None:
            s.error = error
            s.error_detail = detail
        s.output_tokens = self._usage_out if self._usage_out is not None else self._counted
        return True

    @staticmethod
    def _is_cut_off(payload: bytes) -> bool:
        if payload.strip() == DONE:
            return False
        try:
            loads(payload)
        except _DECODE_ERRORS:
            return True
        return False


class StreamParser:
    """Decoder and handler as the client drives them: ``feed`` each timed network read, then ``eof``."""

    __slots__ = ("decoder", "handler")

    def __init__(self, sample: RequestSample, *, native: bool = False) -> None:
        self.decoder = SSEDecoder()
        self.handler = StreamHandler(sample, native=native)

    def feed(self, chunk: bytes, t: float) -> bool:
        """One network read arriving at ``t``; True when the stream is over (later bytes are not needed)."""
        handler = self.handler
        for payload in self.decoder.feed(chunk):
            if handler.on_event(payload, t):
                return True
        return False

    def eof(self, t: float) -> None:
        """The body ended at ``t`` before ``feed`` said the stream was over."""
        self.handler.on_eof(self.decoder.flush(), t)
