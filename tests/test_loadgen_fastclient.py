"""The lean HTTP/1.1 transport against a scripted raw TCP server: chunked framing split at every byte, chunk
extensions, error bodies, responses cut mid-body, and a keep-alive connection the server closed meanwhile."""

from __future__ import annotations

import asyncio
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
