"""Timestamped production traces: read, select a window, schedule, and turn into exact token-id prompts.

Two public formats, chosen by the file's extension:

* ``.jsonl`` — the **Mooncake** trace (kvcache-ai/Mooncake, ``FAST25-release/traces/*.jsonl``): one JSON object
  per line with ``timestamp`` (ms), ``input_length``, ``output_length`` and ``hash_ids``. Each hash id stands for
  one block of ``BLOCK_TOKENS`` (512) prompt tokens, so a line has ``ceil(input_length / 512)`` ids (the last
  block may be partial); equal ids mean equal content. ``hash_ids`` may be left out (no shared content); other
  fields are ignored.
* ``.csv`` — the **Azure LLM inference** trace (Azure/AzurePublicDataset, ``AzureLLMInferenceTrace_*.csv``):
  columns ``TIMESTAMP`` (a date-time such as ``2023-11-16 18:15:46.6805900``), ``ContextTokens`` and
  ``GeneratedTokens``; other columns are ignored. Prompts carry no shared content.

Timestamps must not decrease. A request's *offset* is its time since the trace's first request. A replay takes
the requests whose offset lies in the window ``[start_s, end_s)``, then the first ``max_requests`` of them, and
sends request ``i`` at ``(offset_i - offset_0) * time_scale`` seconds (``time_scale`` 0.5 replays twice as fast).

Prompts are token ids, exactly as long as the trace says. Block ``h`` is 512 ids drawn from
``prompts.TOKEN_ID_RANGE`` by ``random.Random(f"{seed}:block:{h}")``; a prompt is its blocks in order, cut to
``input_length`` (a partial last block is a prefix of the full one). So two requests share exactly the leading
blocks whose ids they share, and a radix cache sees the trace's sharing. On ``chat`` the blocks are words of the
calibrated one-token vocabulary instead. Lines without ``hash_ids`` and Azure rows get content of their own.
``output_length`` 0 is sent as 1 (a request must generate at least one token).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import io
import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pytest_sglang_tune.errors import SuiteError
from pytest_sglang_tune.loadgen.prompts import (
    PATHS,
    WORDS,
    ChatCalibration,
    PreparedRequest,
    chat_body,
    completions_body,
    generate_body,
    token_ids,
    words,
)
from pytest_sglang_tune.loadgen.samples import PointResult
from pytest_sglang_tune.loadgen.workload import Load, Workload
from pytest_sglang_tune.metrics import distribution

BLOCK_TOKENS = 512
FORMATS: dict[str, str] = {".jsonl": "mooncake", ".csv": "azure"}
AZURE_COLUMNS: tuple[str, ...] = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_FIELDS: tuple[str, ...] = ("timestamp", "input_length", "output_length")
WARMUP_MAX_INPUT = 2048  # warmup requests take the trace's first lengths, capped here, with content of their own


class TraceError(SuiteError):
    """A trace file cannot be read or is malformed; names the file, the line, the field and the value."""


@dataclass(frozen=True)
class TraceRequest:
    """One line of a trace: when (seconds after the trace's first request) and how long, and its block ids."""

    offset_s: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] | None = None  # None: content of its own (Azure, or no hash_ids)
    line: int = 0


@dataclass(frozen=True)
class Trace:
    """A parsed trace file: its requests in time order and the SHA-256 of its bytes."""

    path: str
    format: Literal["mooncake", "azure"]
    requests: tuple[TraceRequest, ...]
    sha256: str

    @property
    def span_s(self) -> float:
        return self.requests[-1].offset_s if self.requests else 0.0


def trace_format(path: str | Path) -> Literal["mooncake", "azure"]:
    """The format a file's extension names (``.jsonl`` Mooncake, ``.csv`` Azure)."""
    suffix = Path(path).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise TraceError(f"{str(path)!r} is not a trace this tool reads: the extension must be .jsonl (Mooncake "
                         f"trace) or .csv (Azure LLM inference trace), got {suffix or 'none'!r}", field="trace")
    return fmt  # type: ignore[return-value]


def load_trace(path: str | Path) -> Trace:
    """Read and check a trace file (cached by path, modification time and size)."""
    p = Path(path)
    fmt = trace_format(p)
    try:
        st = p.stat()
    except OSError as exc:
        raise TraceError(f"cannot read the trace {str(p)!r}: {exc.strerror or exc}", field="trace") from None
    return _load(str(p), fmt, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _load(path: str, fmt: str, mtime_ns: int, size: int) -> Trace:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read the trace {path!r}: {exc.strerror or exc}", field="trace") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TraceError(f"not UTF-8 text ({exc})", path=path, field="trace") from None
    reqs = _mooncake(text, path) if fmt == "mooncake" else _azure(text, path)
    if not reqs:
        raise TraceError("the trace holds no request", path=path, field="trace")
    return Trace(path, fmt, tuple(reqs), hashlib.sha256(data).hexdigest())  # type: ignore[arg-type]


def _int(value: Any, path: str, line: int, name: str, minimum: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TraceError(f"{name} must be an integer >= {minimum}, got {value!r}", path=path, line=line, field=name)
    return value


def _ordered(reqs: list[TraceRequest], t: float, path: str, line: int, name: str, shown: Any) -> None:
    if reqs and t < reqs[-1].offset_s:
        raise TraceError(f"{name} {shown!r} is earlier than the line before (line {reqs[-1].line}); a trace must "
                         "be sorted by time", path=path, line=line, field=name)


def _mooncake(text: str, path: str) -> list[TraceRequest]:
    reqs: list[TraceRequest] = []
    t0: float | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError as exc:
            raise TraceError(f"not valid JSON ({exc})", path=path, line=n) from None
        if not isinstance(rec, dict):
            raise TraceError(f"expected a JSON object with {', '.join(MOONCAKE_FIELDS)}, got "
                             f"{type(rec).__name__}", path=path, line=n)
        missing = [k for k in MOONCAKE_FIELDS if k not in rec]
        if missing:
            raise TraceError(f"missing {', '.join(missing)}; a Mooncake trace line has {', '.join(MOONCAKE_FIELDS)} "
                             "and hash_ids", path=path, line=n, field=missing[0])
        ts = rec["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise TraceError(f"timestamp must be a number of milliseconds, got {ts!r}", path=path, line=n,
                             field="timestamp")
        t0 = ts if t0 is None else t0
        offset = (ts - t0) / 1000.0
        _ordered(reqs, offset, path, n, "timestamp", ts)
        n_in = _int(rec["input_length"], path, n, "input_length", 1)
        n_out = _int(rec["output_length"], path, n, "output_length", 0)
        ids = rec.get("hash_ids")
        hash_ids: tuple[int, ...] | None = None
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in ids):
                raise TraceError(f"hash_ids must be a list of integers, got {ids!r:.80}", path=path, line=n,
                                 field="hash_ids")
            need = -(-n_in // BLOCK_TOKENS)
            if len(ids) != need:
                raise TraceError(f"hash_ids has {len(ids)} ids but input_length {n_in} needs {need} (one per "
                                 f"{BLOCK_TOKENS}-token block)", path=path, line=n, field="hash_ids")
            hash_ids = tuple(ids)
        reqs.append(TraceRequest(offset, n_in, n_out, hash_ids, n))
    return reqs


def parse_timestamp(text: str) -> dt.datetime:
    """An Azure trace ``TIMESTAMP``: ISO date and time, any number of fractional digits (7 in the public files)."""
    s = text.strip().replace("T", " ", 1)
    head, dot, frac = s.partition(".")
    tz = ""
    if dot:
        digits = len(frac) - len(frac.lstrip("0123456789"))
        frac, tz = frac[:digits], frac[digits:]
        s = f"{head}.{(frac + '000000')[:6]}{tz}"
    return dt.datetime.fromisoformat(s)


def _azure(text: str, path: str) -> list[TraceRequest]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise TraceError("the file is empty; an Azure trace starts with the header "
                         f"{','.join(AZURE_COLUMNS)}", path=path, line=1)
    names = [h.strip() for h in header]
    missing = [c for c in AZURE_COLUMNS if c not in names]
    if missing:
        raise TraceError(f"missing column {', '.join(missing)}; an Azure LLM inference trace has the columns "
                         f"{', '.join(AZURE_COLUMNS)} (found: {', '.join(names) or 'none'})", path=path, line=1,
                         field=missing[0])
    col = {c: names.index(c) for c in AZURE_COLUMNS}
    reqs: list[TraceRequest] = []
    first: dt.datetime | None = None
    for row in reader:
        n = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(names):
            raise TraceError(f"{len(row)} cells, the header has {len(names)}", path=path, line=n)
        stamp = row[col["TIMESTAMP"]]
        try:
            when = parse_timestamp(stamp)
            first = when if first is None else first
            offset = (when - first).total_seconds()
        except (ValueError, TypeError):
            raise TraceError(f"TIMESTAMP {stamp!r} is not a date-time like 2023-11-16 18:15:46.6805900 (all with, "
                             "or all without, a time zone)", path=path, line=n, field="TIMESTAMP") from None
        _ordered(reqs, offset, path, n, "TIMESTAMP", stamp)
        n_in = _int(row[col["ContextTokens"]].strip(), path, n, "ContextTokens", 1)
        n_out = _int(row[col["GeneratedTokens"]].strip(), path, n, "GeneratedTokens", 0)
        reqs.append(TraceRequest(offset, n_in, n_out, None, n))
    return reqs


# -- selection and schedule ---------------------------------------------------------------------------------


def select(trace: Trace, window: tuple[float, float | None] | None = None,
           max_requests: int | None = None) -> tuple[TraceRequest, ...]:
    """The requests a replay sends: those with ``start_s <= offset < end_s``, then the first ``max_requests``."""
    start, end = window if window is not None else (0.0, None)
    out = tuple(r for r in trace.requests if r.offset_s >= start and (end is None or r.offset_s < end))
    if not out:
        raise TraceError(f"the window [{start:g}, {'end' if end is None else f'{end:g}'}) s holds no request; "
                         f"the trace's requests lie between 0 and {trace.span_s:g} s", path=trace.path,
                         field="window")
    return out[:max_requests] if max_requests is not None else out


def schedule(requests: Sequence[TraceRequest], time_scale: float = 1.0) -> list[float]:
    """Send offsets (seconds from the first request sent) of ``requests``, their gaps times ``time_scale``."""
    if not requests:
        return []
    t0 = requests[0].offset_s
    return [(r.offset_s - t0) * time_scale for r in requests]


def mean_rate(requests: Sequence[TraceRequest], time_scale: float = 1.0) -> float | None:
    """Requests per second of the replay (``(n - 1) / span``); None when all are sent at once."""
    span = (requests[-1].offset_s - requests[0].offset_s) * time_scale if requests else 0.0
    return (len(requests) - 1) / span if span > 0 else None


def trace_loads(requests: Sequence[TraceRequest], scales: Sequence[float],
                caps: Sequence[int | None] = (None,)) -> list[Load]:
    """A trace replay's load levels: one per ``time_scale`` × concurrency cap (``None``: no cap), each recording
    the level's mean rate (6 significant digits) so reports order levels by intensity."""
    out: list[Load] = []
    for ts in scales:
        rate = mean_rate(requests, ts)
        out += [Load(concurrency=cap, request_rate=None if rate is None else float(f"{rate:.6g}"), time_scale=ts)
                for cap in caps]
    return out


def implied_cached_tokens(requests: Sequence[TraceRequest], block: int = BLOCK_TOKENS) -> list[int]:
    """Per request, the prompt tokens an unbounded prefix cache holds when it arrives: the longest prefix it
    shares with an earlier request, block by block (a partial block shares as far as both have it), less the
    last token, which a server always computes (SGLang matches at most ``len(prompt) - 1`` tokens)."""
    nodes: dict[tuple[int, int], tuple[int, int]] = {}  # (parent node, block id) -> (node, longest block length)
    out: list[int] = []
    for req in requests:
        ids = req.hash_ids or ()
        lengths = [min(block, req.input_len - j * block) for j in range(len(ids))]
        shared, parent = 0, 0
        for h, own in zip(ids, lengths, strict=True):
            node = nodes.get((parent, h))
            if node is None:
                break
            shared += min(own, node[1])
            if node[1] < own:
                break
            parent = node[0]
        out.append(min(shared, req.input_len - 1))
        parent = 0
        for h, own in zip(ids, lengths, strict=True):
            node = nodes.get((parent, h))
            if node is None:
                node = (len(nodes) + 1, own)
            elif node[1] < own:
                node = (node[0], own)
            nodes[(parent, h)] = node
            parent = node[0]
    return out


def implied_hit_fraction(requests: Sequence[TraceRequest]) -> float:
    """Cached prompt tokens over all prompt tokens that the trace's ``hash_ids`` imply (unbounded cache)."""
    total = sum(r.input_len for r in requests)
    return sum(implied_cached_tokens(requests)) / total if total else 0.0


def uniquified(requests: Sequence[TraceRequest]) -> list[TraceRequest]:
    """The same requests with every block id made unique, and unlike any of theirs (no shared content): the
    control for a cache test."""
    out: list[TraceRequest] = []
    next_id = 1 + max((h for r in requests for h in (r.hash_ids or ())), default=-1)
    for r in requests:
        ids = None
        if r.hash_ids is not None:
            ids = tuple(range(next_id, next_id + len(r.hash_ids)))
            next_id += len(r.hash_ids)
        out.append(TraceRequest(r.offset_s, r.input_len, r.output_len, ids, r.line))
    return out


# -- a workload's replay --------------------------------------------------------------------------------------


def workload_trace_requests(workload: Workload) -> tuple[TraceRequest, ...]:
    """The trace requests a trace workload sends, in order."""
    if workload.trace is None:
        raise ValueError(f"workload {workload.name!r} has no trace")
    return select(load_trace(workload.trace), workload.trace_window, workload.max_requests)


def trace_offsets(workload: Workload) -> list[float]:
    """The send offsets of a trace workload's measured requests (its trace's, times ``time_scale``)."""
    return schedule(workload_trace_requests(workload), workload.time_scale)


def trace_summary(workload: Workload) -> dict[str, Any]:
    """What a report says about a trace workload: the file, its digest, the selection and what it implies."""
    assert workload.trace is not None
    trace = load_trace(workload.trace)
    reqs = workload_trace_requests(workload)
    return {
        "file": Path(workload.trace).name, "format": trace.format, "sha256": trace.sha256[:16],
        "window": list(workload.trace_window) if workload.trace_window is not None else None,
        "max_requests": workload.max_requests, "time_scale": workload.time_scale, "requests": len(reqs),
        "span_s": round(schedule(reqs, workload.time_scale)[-1], 6), "mean_rate": mean_rate(reqs, workload.time_scale),
        "implied_cache_hit_fraction": round(implied_hit_fraction(reqs), 6),
    }


class _Content:
    """Prompt content of trace requests: token ids (or one-token words on ``chat``), block by block."""

    def __init__(self, seed: int, vocab: Sequence[str] | None) -> None:
        self.seed = seed
        self.vocab = vocab  # None: token ids
        self._blocks: dict[int, list[Any]] = {}

    def _draw(self, rng: random.Random, n: int) -> list[Any]:
        return token_ids(rng, n) if self.vocab is None else words(rng, n, self.vocab)

    def block(self, h: int) -> list[Any]:
        b = self._blocks.get(h)
        if b is None:
            b = self._blocks[h] = self._draw(random.Random(f"{self.seed}:block:{h}"), BLOCK_TOKENS)
        return b

    def prompt(self, req: TraceRequest, n: int, own: str) -> list[Any]:
        """``n`` units of ``req``'s content: its blocks, or content of its own keyed by ``own``."""
        if req.hash_ids is None:
            return self._draw(random.Random(f"{self.seed}:{own}"), n)
        out: list[Any] = []
        for h in req.hash_ids:
            if len(out) >= n:
                break
            out.extend(self.block(h))
        return out[:n]


def build_trace_requests(workload: Workload, model: str, *, warmup: bool = False,
                         calibration: ChatCalibration | None = None) -> list[PreparedRequest]:
    """A trace workload's warmup or measured requests in send order (deterministic for the workload's seed).

    Measured requests carry the trace's lengths and shared blocks. Warmup requests take the first requests'
    lengths (input capped at ``WARMUP_MAX_INPUT``) with content of their own, so they prime no cache entry a
    measured request could hit."""
    reqs = workload_trace_requests(workload)
    endpoint = workload.endpoint
    cal = calibration or ChatCalibration()
    content = _Content(workload.seed, (cal.vocab or WORDS) if endpoint == "chat" else None)
    if warmup:
        picks = [(TraceRequest(0.0, min(r.input_len, WARMUP_MAX_INPUT), r.output_len), f"trace-warmup:{i}")
                 for i, r in zip(range(workload.warmup_requests), itertools.cycle(reqs), strict=False)]
    else:
        picks = [(r, f"trace-line:{r.line}") for r in reqs]
    out: list[PreparedRequest] = []
    for req, own in picks:
        n_in, n_out = req.input_len, max(1, req.output_len)
        if endpoint == "chat":
            text = " ".join(content.prompt(req, cal.words_for(n_in), own))
            body = chat_body(model, text, n_out)
        else:
            ids = content.prompt(req, n_in, own)
            body = completions_body(model, ids, n_out) if endpoint == "completions" else generate_body(ids, n_out)
        out.append(PreparedRequest(PATHS[endpoint], json.dumps(body, separators=(",", ":")).encode(), n_in, n_out,
                                   warmup))
    return out


def replay_stats(point: PointResult, workload: Workload) -> dict[str, Any]:
    """How a trace replay went, from its measured requests: the achieved send rate against the schedule's, the
    send lag (sent − scheduled), and the prompt-cache hit fraction the server reported against the one the
    trace's ``hash_ids`` imply (``None`` when the server reported no cached tokens)."""
    sent = sorted((s for s in point.samples if not s.warmup and s.sent), key=lambda s: s.intended_send)
    out: dict[str, Any] = {"sent": len(sent), "scheduled_rate": None, "achieved_rate": None, "rate_error": None}
    if len(sent) > 1:
        span_i = sent[-1].intended_send - sent[0].intended_send
        span_s = max(s.sent for s in sent) - min(s.sent for s in sent)
        if span_i > 0 and span_s > 0:
            out["scheduled_rate"] = (len(sent) - 1) / span_i
            out["achieved_rate"] = (len(sent) - 1) / span_s
            out["rate_error"] = out["achieved_rate"] / out["scheduled_rate"] - 1
    out["send_lag_ms"] = distribution([s.sent - s.intended_send for s in sent], 1000.0)
    out["send_lag_ms"]["max"] = max((s.sent - s.intended_send for s in sent), default=0.0) * 1000.0
    reported = [s for s in sent if s.ok and s.cached_tokens is not None]
    tokens = sum(s.input_tokens if s.input_tokens is not None else s.requested_input_tokens for s in reported)
    out["cache_hit_fraction"] = sum(s.cached_tokens or 0 for s in reported) / tokens if tokens else None
    out["implied_cache_hit_fraction"] = implied_hit_fraction(workload_trace_requests(workload))
    return out
