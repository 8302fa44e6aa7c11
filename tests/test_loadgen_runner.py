"""The load generator end to end against a tiny OpenAI/SGLang-format streaming server on 127.0.0.1.

The server (below) runs in its own thread and event loop; it streams chunks with known delays, so measured
TTFT/ITL can be checked against them, and it records what it saw (headers, arrival times, concurrency).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.errors import ServerCrashed
from pytest_sglang_tune.loadgen.arrivals import arrival_offsets
from pytest_sglang_tune.loadgen.point import run_point
from pytest_sglang_tune.loadgen.prompts import VOCAB_CANDIDATES
from pytest_sglang_tune.loadgen.runner import run_point_async
from pytest_sglang_tune.loadgen.samples import PointResult, RequestSample
from pytest_sglang_tune.loadgen.workload import Load, SharedPrefix, Workload, parse_scenario
from pytest_sglang_tune.metrics import summarize

TEMPLATE_OVERHEAD = 9  # the fake chat template adds 9 tokens; each word is one token


@dataclass
class Behavior:
    ttft: float = 0.02  # seconds before the first content chunk
    itl: float = 0.005  # seconds per output token between chunks
    tokens_per_chunk: int = 1
    api_key: str | None = None  # require "Authorization: Bearer <key>"
    status: int = 200  # answer every generation request with this status
    cut_after: int | None = None  # end the stream cleanly after this many content chunks, without [DONE]
    drop_after: int | None = None  # drop the TCP connection after this many content chunks


@dataclass
class Seen:
    path: str
    auth: str | None
    body: dict[str, Any]
    arrived: float
    peer_port: int


@dataclass
class FakeServer:
    behavior: Behavior = field(default_factory=Behavior)
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    generated: int = 0
    port: int = 0

    def reset(self, **kw: Any) -> None:
        self.behavior = Behavior(**kw)
        self.seen = []
        self.max_in_flight = 0

    def endpoint(self, api_key: str | None = None) -> Endpoint:
        return Endpoint(f"http://127.0.0.1:{self.port}", "fake-model", api_key)

    def drained(self, within: float = 2.0) -> bool:
        """Whether every stream has ended (polled: the server thread notices disconnects asynchronously)."""
        deadline = time.monotonic() + within
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.in_flight == 0

    def streams(self) -> list[Seen]:
        return [s for s in self.seen if s.body.get("stream")]

    # -- handlers -------------------------------------------------------------------------------------------

    def _admit(self, request: web.Request, body: dict[str, Any]) -> web.Response | None:
        auth = request.headers.get("Authorization")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(Seen(request.path, auth, body, time.perf_counter(), peer[1] if peer else 0))
        key = self.behavior.api_key
        if key is not None and auth != f"Bearer {key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        if self.behavior.status != 200:
            return web.json_response({"object": "error", "message": "overloaded"}, status=self.behavior.status)
        return None

    async def openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if (refused := self._admit(request, body)) is not None:
            return refused
        chat = request.path.endswith("chat/completions")
        if chat:
            prompt = len(body["messages"][0]["content"].split()) + TEMPLATE_OVERHEAD
        else:
            prompt = len(body["prompt"])
        n_out = int(body["max_tokens"])
        if not body.get("stream"):
            usage = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
            return web.json_response({"choices": [{"message": {"content": "x"}}], "usage": usage})
        continuous = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))

        def chunk(text: str | None, done: int, finish: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["delta"] = {"content": text} if text is not None else {}
            else:
                choice["text"] = text or ""
            out: dict[str, Any] = {"id": "x", "choices": [choice]}
            if continuous:
                out["usage"] = {
                    "prompt_tokens": prompt,
                    "completion_tokens": done,
                    "total_tokens": prompt + done,
                }
            return out

        async def stream(resp: web.StreamResponse) -> None:
            if chat:
                await resp.write(
                    sse({"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                )
            await resp.write(b": keep-alive\n\n")
            await asyncio.sleep(self.behavior.ttft)
            done = 0
            chunks = 0
            while done < n_out:
                k = min(self.behavior.tokens_per_chunk, n_out - done)
                done += k
                chunks += 1
                self.generated += k
                await resp.write(sse(chunk("tok" * k, done)))
                if self.behavior.cut_after is not None and chunks >= self.behavior.cut_after:
                    return
                if self.behavior.drop_after is not None and chunks >= self.behavior.drop_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return
                if done < n_out:
                    await asyncio.sleep(self.behavior.itl * min(self.behavior.tokens_per_chunk, n_out - done))
            await resp.write(sse(chunk(None, done, "length")))
            usage = {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}
            await resp.write(sse({"id": "x", "choices": [], "usage": usage}))
            await resp.write(b"data: [DONE]\n\n")

        return await self._serve(request, stream)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if (refused := self._admit(request, body)) is not None:
            return refused
        n_out = int(body["sampling_params"]["max_new_tokens"])
        prompt = len(body["input_ids"])

        async def stream(resp: web.StreamResponse) -> None:
            await asyncio.sleep(self.behavior.ttft)
            for i in range(1, n_out + 1):  # cumulative text, as SGLang streams by default
                finish = {"type": "length", "length": n_out} if i == n_out else None
                meta = {
                    "id": "g",
                    "prompt_tokens": prompt,
                    "completion_tokens": i,
                    "cached_tokens": 0,
                    "finish_reason": finish,
                }
                self.generated += 1
                await resp.write(sse({"text": "t" * i, "output_ids": list(range(i)), "meta_info": meta}))
                if i < n_out:
                    await asyncio.sleep(self.behavior.itl)
            await resp.write(b"data: [DONE]\n\n")

        return await self._serve(request, stream)

    async def _serve(self, request: web.Request, stream: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await stream(resp)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away
        finally:
            self.in_flight -= 1
        return resp

    async def metrics(self, request: web.Request) -> web.Response:
        text = (
            "# HELP sglang:generation_tokens_total Generated tokens\n"
            "# TYPE sglang:generation_tokens_total counter\n"
            f'sglang:generation_tokens_total{{model_name="fake-model"}} {float(self.generated)}\n'
            f'sglang:num_running_reqs{{model_name="fake-model",tp_rank="0"}} {float(self.in_flight)}\n'
        )
        return web.Response(text=text, content_type="text/plain")


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.openai)
    app.router.add_post("/v1/completions", fake.openai)
    app.router.add_post("/generate", fake.generate)
    app.router.add_get("/metrics", fake.metrics)
    runner = web.AppRunner(app, handler_cancellation=True)  # a client going away cancels its handler

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.port = runner.addresses[0][1]

    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield fake
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def wl(scenario: str = "D(32,8)", **kw: Any) -> Workload:
    inp, out = parse_scenario(scenario)
    return Workload(
        name="w",
        input_len=inp,
        output_len=out,
        **{"endpoint": "completions", "num_requests": 6, "warmup_requests": 0, **kw},
    )


def measured(result: PointResult) -> list[RequestSample]:
    return [s for s in result.samples if not s.warmup]


# -- timing ------------------------------------------------------------------------------------------------


def test_chat_ttft_itl_and_lengths_match_the_server(server: FakeServer) -> None:
    server.reset(ttft=0.08, itl=0.02)
    result = run_point(
        server.endpoint(), wl("U(40,300)/(12,12)", endpoint="chat", warmup_requests=2), Load(concurrency=3)
    )
    m = summarize(result, gpus=1)
    assert [s.warmup for s in result.samples] == [True, True] + [False] * 6
    assert m["completed"] == 6 and m["failed"] == 0, m["errors"]
    assert 80 <= m["ttft_ms"]["p50"] <= 80 + 60
    assert m["itl_ms"]["mean"] == pytest.approx(20, abs=6)
    assert m["tpot_ms"]["mean"] == pytest.approx(20, abs=6)
    assert m["e2e_ms"]["p50"] == pytest.approx(80 + 11 * 20, abs=80)
    # calibration probes (non-streamed, max_tokens 1) came first; served lengths equal the requested ones
    probes = [s for s in server.seen if not s.body.get("stream")]
    # "the" x1 and x33 (the template overhead), then each candidate word x32 (is it one token?)
    assert len(probes) == 2 + len(VOCAB_CANDIDATES) and all(p.body["max_tokens"] == 1 for p in probes)
    sc = m["self_check"]
    assert sc["input_mismatches"] == 0 and sc["output_mismatches"] == 0 and sc["input_unreported"] == 0
    assert sc["served_output_mean"] == 12


def test_multi_token_chunks_split_the_gap(server: FakeServer) -> None:
    server.reset(ttft=0.01, itl=0.01, tokens_per_chunk=4)
    result = run_point(server.endpoint(), wl("D(16,16)", num_requests=2), Load(concurrency=2))
    for s in measured(result):
        assert s.ok and s.output_tokens == 16 and s.chunk_tokens == [4, 4, 4]
    m = summarize(result, gpus=1)
    assert m["itl_ms"]["mean"] == pytest.approx(10, abs=4)


def test_generate_endpoint_counts_tokens_from_meta_info(server: FakeServer) -> None:
    server.reset(ttft=0.01, itl=0.005)
    result = run_point(server.endpoint(), wl("D(50,7)", endpoint="generate", num_requests=3), Load(concurrency=3))
    for s in measured(result):
        assert s.ok and (s.input_tokens, s.output_tokens) == (50, 7) and sum(s.chunk_tokens) == 6
    assert all(len(s.body["input_ids"]) == 50 for s in server.streams())


# -- load shapes -------------------------------------------------------------------------------------------


def test_closed_loop_concurrency_is_never_exceeded_and_connections_are_reused(server: FakeServer) -> None:
    server.reset(ttft=0.02, itl=0.002)
    result = run_point(server.endpoint(), wl("D(8,4)", num_requests=15, warmup_requests=3), Load(concurrency=3))
    assert all(s.ok for s in result.samples)
    assert server.max_in_flight == 3
    assert len({s.peer_port for s in server.seen}) <= 3  # keep-alive: one connection per worker


def test_open_loop_follows_the_poisson_schedule(server: FakeServer) -> None:
    server.reset(ttft=0.003, itl=0.001)
    w = wl("D(8,2)", num_requests=25, seed=5)
    result = run_point(server.endpoint(), w, Load(request_rate=50.0))
    samples = measured(result)
    assert all(s.ok for s in samples)
    expected = arrival_offsets(50.0, 25, random.Random("5:arrivals"), exact=True)
    t0 = samples[0].intended_send
    assert [s.intended_send - t0 for s in samples] == pytest.approx(expected, abs=1e-6)
    lags = sorted(s.sent - s.intended_send for s in samples)
    assert lags[0] >= 0 and lags[len(lags) // 2] < 0.01 and lags[-1] < 0.1
    arrivals = sorted(s.arrived for s in server.streams())
    assert arrivals[-1] - arrivals[0] == pytest.approx(expected[-1], abs=0.1)


def test_open_loop_with_concurrency_cap_queues_at_the_client(server: FakeServer) -> None:
    server.reset(ttft=0.05, itl=0.001)
    result = run_point(server.endpoint(), wl("D(8,2)", num_requests=8), Load(concurrency=2, request_rate=1000.0))
    samples = measured(result)
    assert all(s.ok for s in samples) and server.max_in_flight == 2
    assert max(s.sent - s.intended_send for s in samples) > 0.1  # the last ones waited for a slot


def test_max_duration_stops_sending(server: FakeServer) -> None:
    server.reset(ttft=0.04, itl=0.001)
    result = run_point(server.endpoint(), wl("D(8,2)", num_requests=100, max_duration_s=0.2), Load(concurrency=1))
    n = len(measured(result))
    assert 2 <= n <= 7 and all(s.ok for s in measured(result))
    assert any(f"{100 - n} of 100 requests were not sent: max_duration_s=0.2" in w for w in result.warnings)


# -- failures ----------------------------------------------------------------------------------------------


def test_watchdog_aborts_the_point_within_a_second(server: FakeServer) -> None:
    server.reset(ttft=0.01, itl=0.5)
    raised_at: list[float] = []
    start = time.perf_counter()

    def watchdog() -> None:
        if time.perf_counter() - start > 0.4:
            raised_at.append(time.perf_counter())
            raise ServerCrashed("server process exited with code -9", config_id="cfg")

    with pytest.raises(ServerCrashed, match="exited with code -9"):
        run_point(server.endpoint(), wl("D(8,50)", num_requests=8), Load(concurrency=4), watchdog=watchdog)
    assert time.perf_counter() - raised_at[0] < 1.0
    assert server.max_in_flight == 4
    assert server.drained(), "the server still has streams open: the client did not close its connections"


def test_point_deadline_marks_in_flight_requests_as_timeouts(server: FakeServer) -> None:
    server.reset(ttft=30.0)
    t = time.perf_counter()
    result = run_point(server.endpoint(), wl("D(8,2)", num_requests=5), Load(concurrency=2), timeout_s=0.5)
    assert time.perf_counter() - t < 1.5
    samples = measured(result)
    assert [s.error for s in samples] == ["timeout", "timeout"]
    assert any("3 of 5 requests were not sent" in w for w in result.warnings)
    assert any("2 in-flight requests cancelled" in w for w in result.warnings)
    assert summarize(result, gpus=1)["error_rate"] == 1.0
    assert server.drained()


def test_api_key_is_sent_as_bearer(server: FakeServer) -> None:
    server.reset(api_key="sekret")
    result = run_point(server.endpoint("sekret"), wl(endpoint="chat", num_requests=3), Load(concurrency=3))
    assert all(s.ok for s in result.samples)
    assert {s.auth for s in server.seen} == {"Bearer sekret"}
    assert len(server.seen) == 2 + len(VOCAB_CANDIDATES) + 3  # calibration probes + 3 requests


def test_missing_api_key_is_http_401(server: FakeServer) -> None:
    server.reset(api_key="sekret")
    result = run_point(server.endpoint(), wl(num_requests=2), Load(concurrency=2))
    assert [s.error for s in result.samples] == ["http_401", "http_401"]
    assert "Unauthorized" in result.samples[0].error_detail
    assert {s.auth for s in server.seen} == {None}


@pytest.mark.parametrize(
    ("behavior", "error", "detail"),
    [
        ({"status": 503}, "http_503", "overloaded"),
        ({"cut_after": 2}, "truncated", "without [DONE]"),
        ({"drop_after": 2}, "truncated", "connection closed mid-body"),  # chunked body cut mid-way
    ],
)
def test_server_failures_are_classified(server: FakeServer, behavior: dict[str, Any], error: str, detail: str) -> None:
    server.reset(**behavior)
    result = run_point(server.endpoint(), wl(num_requests=2), Load(concurrency=1))
    assert [s.error for s in result.samples] == [error, error]
    assert detail in result.samples[0].error_detail


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_a_connection_error() -> None:
    endpoint = Endpoint(f"http://127.0.0.1:{free_port()}", "m")
    result = run_point(endpoint, wl(num_requests=2), Load(concurrency=1))
    assert [s.error for s in result.samples] == ["connection_error", "connection_error"]
    assert summarize(result, gpus=1)["errors"] == {"connection_error": 2}


# -- extras ------------------------------------------------------------------------------------------------


def test_scrape_metrics_records_counter_deltas_over_the_measured_phase(server: FakeServer) -> None:
    server.reset(ttft=0.005, itl=0.002)
    w = wl("D(8,5)", num_requests=4, warmup_requests=2, shared_prefix=SharedPrefix(2, 4))
    result = run_point(server.endpoint(), w, Load(concurrency=2), scrape_metrics=True)
    assert result.server_metrics["generation_tokens_total"] == 20.0  # warmup (10 tokens) not counted
    assert result.warnings == []


def test_scrape_failure_is_a_warning_not_an_error(server: FakeServer) -> None:
    server.reset()
    endpoint = replace(server.endpoint(), base_url=server.endpoint().base_url + "/nothing-here")
    result = run_point(endpoint, wl(num_requests=1), Load(concurrency=1), scrape_metrics=True)
    assert any("/metrics scrape failed" in w for w in result.warnings)


def test_run_point_async_inside_a_running_loop(server: FakeServer) -> None:
    server.reset()
    result = asyncio.run(run_point_async(server.endpoint(), wl(num_requests=2), Load()))
    assert len(result.samples) == 2 and all(s.ok for s in result.samples)
    assert server.max_in_flight == 2  # no load limits: everything at once
