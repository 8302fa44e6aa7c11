"""A ground-truth streaming server for measuring load-generator accuracy.

It speaks enough of SGLang's HTTP API for any OpenAI-style client (``/v1/completions``,
``/v1/chat/completions``, ``/generate``, ``/health``, ``/v1/models``, ``/metrics``) and streams with a
deterministic schedule: the first token ``--ttft-ms`` after the request arrived, then one token every
``--itl-ms``, exactly ``max_tokens`` / ``max_new_tokens`` of them (capped by ``--cap-output`` to play a server
that stops early). Every content chunk carries running usage.

It logs the true times (``time.perf_counter()``, CLOCK_MONOTONIC: comparable across processes of one
machine): when each request was complete on the server and when each content chunk was handed to the kernel.
``GET /gt/log`` returns and clears the log (keyed by the CRC-32 of the request body); ``GET /gt/stats`` gives
the server's own CPU time, to check it is not the bottleneck.

With ``--itl-ms 0`` every token is due at the first-token time. ``--zero-itl burst`` (default) then writes
them all in one send, each still its own HTTP chunk and SSE event: the server costs well under a microsecond
per token, so a client reading the stream is the bottleneck (the benchmark's client-bound run).
``--zero-itl step`` writes one token per stream per loop turn (like one decode step for every running
request), one send each: on loopback each send costs the server about as much kernel time as the client's
read of it (Linux charges the receiving socket's TCP processing to the sender), so a one-core server cannot
outrun the client and the run is bound by both.

Lean on purpose: raw non-blocking sockets on the event loop (uvloop when installed), a hand-written HTTP/1.1
parser (keep-alive, Content-Length bodies), chunk bytes rendered once per request shape, one timer callback
per chunk (``step``: one callback per loop turn for all streams).

    python benchmarks/groundtruth_server.py --port 8123 --ttft-ms 50 --itl-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import struct
import time
import zlib
from typing import Any

CHAT_OVERHEAD = 7  # prompt tokens a chat "template" adds to the words of the messages


class Server:
    def __init__(self, ttft: float, itl: float, cap_output: int | None, prompt_delta: int) -> None:
        self.ttft = ttft
        self.itl = itl
        self.cap_output = cap_output
        self.prompt_delta = prompt_delta  # added to the reported prompt_tokens (a miscounting server)
        self.log: list[tuple[int, float, list[float]]] = []
        self.tokens_total = 0
        self.requests_total = 0
        self.running = 0
        self.zero_itl = "burst"


SERVER: Server
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
CMSG = socket.CMSG_SPACE(16)


class Conn:
    """One client connection on a raw non-blocking socket driven by ``loop.add_reader``.

    Reads use ``recvmsg`` with ``SO_TIMESTAMPNS``: a request's arrival is the kernel's receive time, so a busy
    server loop (a synchronised burst of requests) does not make the truth late. Writes go straight to the
    socket (what does not fit is queued and flushed when writable), so the logged send time is the syscall's.
    """

    __slots__ = ("buf", "closed", "fd", "loop", "out", "sock")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.loop = sock, loop
        self.fd = sock.fileno()
        self.buf = b""
        self.out = bytearray()
        self.closed = False
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        loop.add_reader(self.fd, self.on_readable)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            if self.out:
                self.loop.remove_writer(self.fd)
            self.sock.close()

    def on_readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(262144, CMSG)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        t = time.perf_counter()
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = struct.unpack("qq", raw[:16])
                t = sec + nsec * 1e-9 - (time.time() - time.perf_counter())  # kernel time, realtime -> monotonic
        self.parse(data, t)

    def write_now(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.out:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self.close()
                return
            if n == len(data):
                return
            self.loop.add_writer(self.fd, self.on_writable)
            data = data[n:]
        self.out += data

    def on_writable(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.out[:n]
        if not self.out:
            self.loop.remove_writer(self.fd)

    def parse(self, data: bytes, t: float) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(buf) < end + 4 + length:
                break
            body = buf[end + 4 : end + 4 + length]
            buf = buf[end + 4 + length :]
            self.handle(method, path, body, t)
        self.buf = buf

    def reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        self.write_now(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def handle(self, method: str, path: str, body: bytes, t: float) -> None:
        s = SERVER
        if method == "GET":
            if path == "/health" or path == "/health_generate":
                self.reply(200, b"OK", "text/plain")
            elif path == "/v1/models":
                self.reply(200, b'{"object":"list","data":[{"id":"gt","object":"model"}]}')
            elif path == "/gt/log":
                log = [{"key": k, "recv": r, "chunks": c} for k, r, c in s.log]
                s.log = []
                self.reply(200, json.dumps({"requests": log}).encode())
            elif path == "/gt/stats":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                self.reply(200, json.dumps({"cpu_s": ru.ru_utime + ru.ru_stime, "sys_s": ru.ru_stime,
                                                  "tokens": s.tokens_total}).encode())
            elif path == "/metrics":
                text = (
                    f"sglang:num_running_reqs{{model_name=\"gt\"}} {s.running}\n"
                    f"sglang:num_queue_reqs{{model_name=\"gt\"}} 0\n"
                    f"sglang:generation_tokens_total{{model_name=\"gt\"}} {s.tokens_total}\n"
                    f"sglang:num_requests_total{{model_name=\"gt\"}} {s.requests_total}\n"
                )
                self.reply(200, text.encode(), "text/plain; version=0.0.4")
            else:
                self.reply(404, b'{"error":"not found"}')
            return
        try:
            req: dict[str, Any] = json.loads(body)
        except ValueError:
            self.reply(400, b'{"error":{"message":"bad json"}}')
            return
        native = path == "/generate"
        if native:
            params = req.get("sampling_params") or {}
            n_out = int(params.get("max_new_tokens", 16))
            ids = req.get("input_ids")
            n_in = len(ids) if isinstance(ids, list) else len(str(req.get("text", "")).split())
        else:
            mt = req.get("max_tokens", req.get("max_completion_tokens"))
            n_out = 16 if mt is None else int(mt)
            if path.endswith("/chat/completions"):
                n_in = CHAT_OVERHEAD + sum(len(str(m.get("content", "")).split()) for m in req.get("messages", []))
            else:
                p = req.get("prompt")
                n_in = len(p) if isinstance(p, list) else len(str(p).split())
        if s.cap_output is not None:
            n_out = min(n_out, s.cap_output)
        n_in += s.prompt_delta
        s.requests_total += 1
        if not req.get("stream"):
            if native:
                out: dict[str, Any] = {"text": "x " * n_out, "meta_info": {
                    "prompt_tokens": n_in, "completion_tokens": n_out, "finish_reason": {"type": "length"}}}
            else:
                out = {"id": "gt", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "x " * n_out}, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}
            self.reply(200, json.dumps(out).encode())
            return
        self.write_now(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        Stream(self, zlib.crc32(body), t, n_in, n_out, native, path.endswith("/chat/completions")).start()


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


_RENDERED: dict[tuple[int, int, bool, bool], list[bytes]] = {}


def _rendered(n_in: int, n_out: int, native: bool, chat: bool) -> list[bytes]:
    """The wire bytes of a stream, rendered once per request shape so that the hot path only sends: one item
    per content chunk, the last carrying the end of the stream (usage chunk, ``[DONE]``, the zero-size chunk);
    with no content chunk at all, a single item that is only the end."""
    key = (n_in, n_out, native, chat)
    out = _RENDERED.get(key)
    if out is None:
        tail = b""
        if not native:
            tail += (b'data: {"id":"gt","object":"chunk","choices":[],"usage":{"prompt_tokens":%d,'
                     b'"completion_tokens":%d,"total_tokens":%d}}\n\n' % (n_in, n_out, n_in + n_out))
        end = _chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n"
        out = [_chunk(_payload(j + 1, n_in, n_out, native, chat)) for j in range(n_out)] or [b""]
        out[-1] += end
        if len(_RENDERED) < 4096:
            _RENDERED[key] = out
    return out


def _payload(n: int, n_in: int, n_out: int, native: bool, chat: bool) -> bytes:
    """The SSE event of content chunk ``n`` (1-based) of ``n_out``."""
    last = n == n_out
    if native:
        reason = f'{{"type":"length","length":{n}}}' if last else "null"
        return (b'data: {"text":"%s","meta_info":{"prompt_tokens":%d,"completion_tokens":%d,"finish_reason":%s}}'
                b"\n\n" % (b"x" * min(n, 64), n_in, n, reason.encode()))
    reason_b = b'"length"' if last else b"null"
    usage = b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (n_in, n, n_in + n)
    if chat:
        choice = b'{"index":0,"delta":{"content":"x "},"finish_reason":%s}' % reason_b
    else:
        choice = b'{"index":0,"text":"x ","finish_reason":%s}' % reason_b
    return b'data: {"id":"gt","object":"chunk","choices":[%s],%s}\n\n' % (choice, usage)


class Stream:
    __slots__ = ("chunks", "conn", "content", "key", "recv", "sent", "times")

    def __init__(self, conn: Conn, key: int, recv: float, n_in: int, n_out: int, native: bool, chat: bool) -> None:
        self.conn, self.key, self.recv = conn, key, recv
        self.chunks = _rendered(n_in, n_out, native, chat)
        self.content = n_out > 0  # each item of ``chunks`` is a token (else the one item is only the end)
        self.sent = 0
        self.times: list[float] = []

    def start(self) -> None:
        SERVER.running += 1
        self.conn.loop.call_later(self.recv + SERVER.ttft - time.perf_counter(), self.emit)

    def finish(self) -> None:
        SERVER.running -= 1
        SERVER.log.append((self.key, self.recv, self.times))

    def emit(self) -> None:
        s = SERVER
        if s.itl <= 0 and s.zero_itl == "burst":
            self.send(len(self.chunks))
        elif self.send(1):
            if s.itl > 0:
                self.conn.loop.call_later(self.recv + s.ttft + self.sent * s.itl - time.perf_counter(), self.emit)
            else:
                TICKER.add(self)

    def send(self, k: int) -> bool:
        """Send the next ``k`` chunks now, in one write; False when the stream is over (all sent, or its
        connection closed)."""
        conn = self.conn
        if conn.closed:
            self.finish()
            return False
        j = self.sent
        self.sent = n = min(j + k, len(self.chunks))
        t = time.perf_counter()
        if self.content:
            SERVER.tokens_total += n - j
            self.times.extend([t] * (n - j))
        conn.write_now(self.chunks[j] if n - j == 1 else b"".join(self.chunks[j:n]))
        if n >= len(self.chunks):
            self.finish()
            return False
        return True


class Ticker:
    """ITL 0, ``step``: every stream gets its next chunk once per loop turn (one token per running stream per "decode
    step"), from one callback per turn rather than one per chunk."""

    def __init__(self) -> None:
        self.ready: list[Stream] = []
        self.scheduled = False

    def add(self, stream: Stream) -> None:
        self.ready.append(stream)
        if not self.scheduled:
            self.scheduled = True
            stream.conn.loop.call_soon(self.tick)

    def tick(self) -> None:
        ready, self.ready = self.ready, []
        self.scheduled = False
        keep = [st for st in ready if st.send(1)]
        if keep:
            self.ready = keep + self.ready
            if not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self.tick)


TICKER = Ticker()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--cap-output", type=int, default=None, help="stop every stream after this many tokens")
    ap.add_argument("--prompt-delta", type=int, default=0, help="misreport prompt_tokens by this many")
    ap.add_argument("--zero-itl", choices=("burst", "step"), default="burst",
                    help="with --itl-ms 0: send all of a stream's tokens at once (burst: they are all due at TTFT), "
                         "or one token per stream per loop turn (step)")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    global SERVER
    SERVER = Server(args.ttft_ms / 1000.0, args.itl_ms / 1000.0, args.cap_output, args.prompt_delta)
    SERVER.zero_itl = args.zero_itl

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((args.host, args.port))
        lsock.listen(4096)
        lsock.setblocking(False)

        def on_accept() -> None:
            while True:
                try:
                    sock, _ = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                Conn(sock, loop)

        loop.add_reader(lsock.fileno(), on_accept)
        print(f"groundtruth server on http://{args.host}:{args.port}", flush=True)
        await asyncio.Event().wait()

    factory = None
    if not args.no_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover
            pass
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
