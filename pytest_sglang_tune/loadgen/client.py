"""The async HTTP side of the load generator: one aiohttp session per point, streaming requests into samples,
the chat calibration probe, and ``/metrics`` scrapes.

Hot path (``stream_request``): the body is serialised before the point starts; the response is read with
``iter_any`` (one call per network read, timestamped once) through ``sse.StreamParser``. After
``[DONE]`` the rest of the body (the chunked terminator) is drained briefly so the keep-alive connection is
reused.

Error classes written to ``RequestSample.error``: ``http_<status>``, ``timeout``, ``connection_reset`` (the
server closed or reset the connection), ``connection_error`` (could not connect, other transport errors),
``truncated``, ``stream_error``, ``aborted`` (finish reason ``abort``), ``client_error`` (an unexpected
exception in the client).
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import re
import time
from collections.abc import Mapping

import aiohttp

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.loadgen.prompts import PATHS, chat_body
from pytest_sglang_tune.loadgen.samples import RequestSample
from pytest_sglang_tune.loadgen.sse import StreamParser

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
DRAIN_TIMEOUT_S = 1.0


def make_session(endpoint: Endpoint, concurrency: int | None) -> aiohttp.ClientSession:
    """A keep-alive session whose connection pool fits the concurrency (unbounded for pure open-loop load)."""
    connector = aiohttp.TCPConnector(limit=concurrency or 0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    headers = {**JSON_HEADERS, **endpoint.headers()}
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        auto_decompress=False,
        trust_env=False,
    )


def classify_exception(exc: BaseException) -> str:
    """Map a transport exception to an error class."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated"
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError and aiohttp.ServerTimeoutError too
        return "timeout"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError, BrokenPipeError)):
        return "connection_reset"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection_error"
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection_reset"
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return "connection_error"
    return "client_error"


async def stream_request(
    session: aiohttp.ClientSession, url: str, body: bytes, sample: RequestSample, *, native: bool = False
) -> None:
    """Send one streaming request and record it into ``sample`` (never raises, except on cancellation).

    When cancelled (point deadline or abort), an unfinished sample is marked ``timeout`` before re-raising.
    """
    parser = StreamParser(sample, native=native)
    clock = time.perf_counter
    try:
        sample.sent = clock()
        async with session.post(url, data=body) as resp:
            if resp.status != 200:
                detail = await resp.content.read(2048)
                sample.error = f"http_{resp.status}"
                sample.error_detail = detail.decode("utf-8", "replace").strip()[:500]
                return
            head = b""
            async for chunk in resp.content.iter_any():
                if parser.feed(chunk, clock()):
                    break
                if not head:
                    head = chunk[:200]
            else:
                parser.eof(clock())
                if sample.error == "truncated" and sample.first_token is None and head:
                    sample.error_detail += f"; body starts with {head!r}"
                return
            if parser.handler.done and not resp.content.at_eof():
                try:
                    async with asyncio.timeout(DRAIN_TIMEOUT_S):
                        await resp.content.read()
                except (TimeoutError, aiohttp.ClientError):
                    resp.close()
    except asyncio.CancelledError:
        if sample.error is None and sample.done is None:
            sample.error = "timeout"
            sample.error_detail = "cancelled before the response ended (point deadline or abort)"
        raise
    except Exception as exc:
        if sample.error is None and sample.done is None:
            sample.error = classify_exception(exc)
            sample.error_detail = f"{type(exc).__name__}: {exc}"[:500]


async def probe_prompt_tokens(session: aiohttp.ClientSession, endpoint: Endpoint, content: str) -> int:
    """Served ``usage.prompt_tokens`` of a one-token, non-streamed chat request with ``content``."""
    body = chat_body(endpoint.model, content, 1, stream=False)
    async with session.post(endpoint.url(PATHS["chat"]), data=json.dumps(body)) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"chat calibration probe got HTTP {resp.status}: {text[:300]}")
    data = json.loads(text)
    pt = (data.get("usage") or {}).get("prompt_tokens")
    if not isinstance(pt, int):
        raise RuntimeError(f"chat calibration probe: no usage.prompt_tokens in the response: {text[:300]}")
    return pt


# -- /metrics ----------------------------------------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")
SCRAPED_COUNTERS = (
    "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total",
    "sglang:cached_tokens_total",
    "sglang:num_requests_total",
    "sglang:num_aborted_requests_total",
)
SCRAPED_GAUGES = (
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:token_usage",
    "sglang:gen_throughput",
    "sglang:cache_hit_rate",
)


RATIO_GAUGES = frozenset({"sglang:token_usage", "sglang:cache_hit_rate"})


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text → ``{metric name: value}`` over its label sets: summed (requests, tokens, per-DP-rank
    counts add up), except ratios (``RATIO_GAUGES``), which are averaged. Comments and NaN samples are skipped."""
    series: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        if not math.isnan(v):
            series.setdefault(m.group(1), []).append(v)
    return {name: (sum(vs) / len(vs) if name in RATIO_GAUGES else sum(vs)) for name, vs in series.items()}


async def scrape(session: aiohttp.ClientSession, endpoint: Endpoint) -> dict[str, float]:
    """One ``/metrics`` scrape (raises on HTTP errors; the caller turns that into a warning)."""
    async with session.get(endpoint.url("/metrics"), timeout=aiohttp.ClientTimeout(total=10)) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"GET /metrics answered HTTP {resp.status}")
    return parse_prometheus(text)


def metrics_delta(
    before: Mapping[str, float], after: Mapping[str, float], gauges: Mapping[str, list[float]]
) -> dict[str, float]:
    """Counter deltas over the point, gauge mean/max over the samples taken during it (no ``sglang:``)."""
    out: dict[str, float] = {}
    for name in SCRAPED_COUNTERS:
        if name in after:
            out[name.removeprefix("sglang:")] = after[name] - before.get(name, 0.0)
    prompt = out.get("prompt_tokens_total")
    if prompt and "cached_tokens_total" in out:
        out["cache_hit_rate_point"] = out["cached_tokens_total"] / prompt
    for name, values in gauges.items():
        if values:
            short = name.removeprefix("sglang:")
            out[f"{short}_mean"] = sum(values) / len(values)
            out[f"{short}_max"] = max(values)
    return out
