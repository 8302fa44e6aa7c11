"""The lean HTTP/1.1 transport against a scripted raw TCP server: chunked framing split at every byte, chunk
extensions, error bodies, responses cut mid-body, and a keep-alive connection the server closed meanwhile."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest

from pytest_sglang_tune.loadgen.fastclient import LeanStreamer
from pytest_sglang_tune.loadgen.samples import RequestSample

CHUNK = (b'data: {"choices":[{"index":0,"text":"%s","finish_reason":%s}],'
         b'"usage":{"prompt_tokens":4,"completion_tokens":%d}}\n\n')
EVENTS = [CHUNK % (b"a", b"null", 1), CHUNK % (b"bc", b"null", 3), CHUNK % (b"d", b'"length"', 4), b"data: [DONE]\n\n"]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(parts: list[bytes], ext: bytes = b"") -> bytes:
    return b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in parts) + b"0\r\n\r\n"


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], "asyncio.Future[None] | object"]


async def serve_and_stream(responder: Script, n: int = 1) -> tuple[list[RequestSample], int]:
    """Start a server answering with ``responder(reader, writer, request_index)``; stream ``n`` requests."""
    count = 0
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count, connections
        connections += 1
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            i = count
            count += 1
            keep = await responder(reader, writer, i)  # type: ignore[misc]
            if not keep:
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    streamer = LeanStreamer(f"http://127.0.0.1:{port}", {"Authorization": "Bearer k"})
    samples = [RequestSample(4, 4) for _ in range(n)]
    try:
        for s in samples:
            await streamer.stream(streamer.request_bytes("/v1/completions", b"{}"), s)
    finally:
        await streamer.close()
        server.close()
    return samples, connections


def run(responder: Script, n: int = 1) -> tuple[list[RequestSample], int]:
    return asyncio.run(serve_and_stream(responder, n))


def byte_by_byte(ext: bytes = b"") -> Script:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> bool:
        data = HEAD + chunked(EVENTS, ext)
        for k in range(len(data)):
            writer.write(data[k : k + 1])
            await writer.drain()
            if k % 40 == 0:
                await asyncio.sleep(0)
        return True

    return respond


@pytest.mark.parametrize("ext", [b"", b";name=value"])
def test_framing_split_at_every_byte_and_chunk_extensions(ext: bytes) -> None:
    (s,), _ = run(byte_by_byte(ext))
    assert s.ok, s.error_detail
    assert (s.input_tokens, s.output_tokens) == (4, 4)
    assert s.chunk_tokens == [2, 1]  # the second chunk carried two tokens (usage grew by 2)
    assert len(s.itl_s()) == 3


def test_keep_alive_reuses_one_connection() -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> bool:
        writer.write(HEAD + chunked(EVENTS))
        await writer.drain()
        return True

    samples, connections = run(respond, n=3)
    assert all(s.ok for s in samples) and connections == 1


def test_a_stale_keep_alive_connection_is_retried_on_a_new_one() -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> bool:
        writer.write(HEAD + chunked(EVENTS))
        await writer.drain()
        await asyncio.sleep(0.05)
        return False  # close after the response: the client's pooled connection goes stale

    samples, connections = run(respond, n=2)
    assert all(s.ok for s in samples), [s.error_detail for s in samples]
    assert connections == 2


@pytest.mark.parametrize(
    ("payload", "error", "detail"),
    [
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\noverloaded", "http_503", "overloaded"),
        (HEAD + chunked(EVENTS[:2])[:-5], "truncated", "mid-body"),  # cut before the last chunk
        (HEAD + chunked(EVENTS[:2]), "truncated", "without [DONE]"),  # framing complete, stream not
        (HEAD + b"zz\r\n", "stream_error", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + b"".join(EVENTS), None, ""),  # until close
    ],
)
def test_responses_are_classified(payload: bytes, error: str | None, detail: str) -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> bool:
        writer.write(payload)
        await writer.drain()
        return False

    (s,), _ = run(respond)
    assert s.error == error
    assert detail in s.error_detail
    if error is None:
        assert s.ok and s.output_tokens == 4


def test_only_plain_http() -> None:
    with pytest.raises(ValueError, match="plain http"):
        LeanStreamer("https://example.invalid", {})


# -- the one-pass fast path of the common read gives what the general de-chunker and SSE decoder give ---------

CHAT = (b'data: {"choices":[{"index":0,"delta":{%s},"finish_reason":%s}],'
        b'"usage":{"prompt_tokens":9,"completion_tokens":%d}}\n\n')
STREAMS = {
    "completions": EVENTS,
    "chat, role chunk and usage chunk": [
        CHAT % (b'"role":"assistant","content":""', b"null", 0), CHAT % (b'"content":"a"', b"null", 1),
        CHAT % (b'"content":"b c"', b'"length"', 3),
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,'
        b'"prompt_tokens_details":{"cached_tokens":5}}}\n\n', b"data: [DONE]\n\n"],
    "two events in one chunk, a keep-alive": [EVENTS[0] + EVENTS[1], b": ping\n\n", EVENTS[2], EVENTS[3]],
    "error mid-stream": [EVENTS[0], b'data: {"error":{"message":"boom"}}\n\n', EVENTS[2]],
    "abort": [EVENTS[0], CHUNK % (b"", b'"abort"', 1), EVENTS[3]],
    "no usage": [b'data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n',
                 b'data: {"choices":[{"index":0,"text":"b","finish_reason":"stop"}]}\n\n', b"data: [DONE]\n\n"],
    "crlf events": [e.replace(b"\n", b"\r\n") for e in EVENTS],
}


def _reads(events: list[bytes], split: str) -> list[bytes]:
    body = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    body[-1] += b"0\r\n\r\n"
    if split == "one chunk per read":
        return [HEAD, *body]
    if split == "all in one read":
        return [HEAD + b"".join(body)]
    if split == "pairs of chunks":
        return [HEAD] + [b"".join(body[i : i + 2]) for i in range(0, len(body), 2)]
    whole = HEAD + b"".join(body)
    return [whole[i : i + 1] for i in range(len(whole))]


def _feed(reads: list[bytes]) -> tuple[object, ...]:
    from pytest_sglang_tune.loadgen.http1 import Connection

    async def go() -> tuple[object, ...]:
        mine, theirs = socket.socketpair()
        mine.setblocking(False)
        conn = Connection(mine, asyncio.get_running_loop())
        try:
            s = RequestSample(4, 4)
            waiter = conn.start(b"", s, False)
            for k, r in enumerate(reads):
                conn.feed(r, float(k))
            assert waiter.done()
            return (s.error, s.error_detail, s.input_tokens, s.output_tokens, s.cached_tokens, s.chunk_tokens,
                    s.first_token is not None, s.done is not None, conn.reusable)
        finally:
            conn.close()
            theirs.close()

    return asyncio.run(go())


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("split", ["one chunk per read", "all in one read", "pairs of chunks"])
def test_fast_path_reads_like_the_byte_by_byte_decoder(name: str, split: str) -> None:
    fast, slow = _feed(_reads(STREAMS[name], split)), _feed(_reads(STREAMS[name], "byte by byte"))
    assert fast == slow
    if name == "chat, role chunk and usage chunk":
        assert fast[2:6] == (9, 3, 5, [2])  # the role chunk carried no token; the last chunk two


# -- timestamps are the kernel's receive times: a client loop that reads late still records the arrival -------


def _threaded_server(reply: bytes, delay: float) -> tuple[int, threading.Thread, threading.Event]:
    """A one-shot server thread: on a request it sets the event, waits ``delay`` and sends ``reply`` whole."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    got = threading.Event()

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn, lsock:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            got.set()
            time.sleep(delay)
            conn.sendall(reply)
            conn.recv(1)  # until the client closes

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return port, t, got


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_busy_client_loop_still_records_the_arrival_time(loop: str) -> None:
    from pytest_sglang_tune.loadgen import http1

    if http1.SO_TIMESTAMPNS is None:
        pytest.skip("no SO_TIMESTAMPNS receive timestamps on this platform (the read time is used)")
    port, thread, got = _threaded_server(HEAD + chunked(EVENTS), delay=0.05)

    async def go() -> RequestSample:
        streamer = LeanStreamer(f"http://127.0.0.1:{port}", {})
        s = RequestSample(4, 4)
        task = asyncio.create_task(streamer.stream(streamer.request_bytes("/v1/completions", b"{}"), s))
        while not got.is_set():  # the server has the request ...
            await asyncio.sleep(0.001)
        time.sleep(0.3)  # ... and answers 50 ms into 300 ms during which this loop is busy (blocked)
        await task
        await streamer.close()
        return s

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        s = uvloop.run(go())
    else:
        s = asyncio.run(go())
    thread.join(timeout=5)
    assert s.ok, s.error_detail
    assert s.ttft_s is not None and 0.045 < s.ttft_s < 0.2  # the arrival at ~50 ms, not the late read (>= 300 ms)
    assert s.e2e_s is not None and s.e2e_s < 0.2
