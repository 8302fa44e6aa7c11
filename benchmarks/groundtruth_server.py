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

Lean on purpose: one ``asyncio.Protocol`` per connection (uvloop when installed), a hand-written HTTP/1.1
parser (keep-alive, Content-Length bodies), pre-rendered chunk bytes, one timer callback per chunk.

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
                self.reply(200, json.dumps({"cpu_s": ru.ru_utime + ru.ru_stime, "tokens": s.tokens_total}).encode())
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
            n_out = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
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


class Stream:
    __slots__ = ("chat", "conn", "handle", "key", "n_in", "n_out", "native", "recv", "sent", "times")

    def __init__(self, conn: Conn, key: int, recv: float, n_in: int, n_out: int, native: bool, chat: bool) -> None:
        self.conn, self.key, self.recv = conn, key, recv
        self.n_in, self.n_out, self.native, self.chat = n_in, n_out, native, chat
        self.sent = 0
        self.times: list[float] = []

    def start(self) -> None:
        SERVER.running += 1
        self.conn.loop.call_later(self.recv + SERVER.ttft - time.perf_counter(), self.emit)

    def payload(self, j: int) -> bytes:
        n = j + 1
        last = n == self.n_out
        if self.native:
            reason = f'{{"type":"length","length":{n}}}' if last else "null"
            return (b'data: {"text":"%s","meta_info":{"prompt_tokens":%d,"completion_tokens":%d,"finish_reason":%s}}'
                    b"\n\n" % (b"x" * min(n, 64), self.n_in, n, reason.encode()))
        reason = b'"length"' if last else b"null"
        usage = b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
            self.n_in, n, self.n_in + n)
        if self.chat:
            choice = b'{"index":0,"delta":{"content":"x "},"finish_reason":%s}' % reason
        else:
            choice = b'{"index":0,"text":"x ","finish_reason":%s}' % reason
        return b'data: {"id":"gt","object":"chunk","choices":[%s],%s}\n\n' % (choice, usage)

    def emit(self) -> None:
        conn = self.conn
        s = SERVER
        if conn.closed:
            s.running -= 1
            s.log.append((self.key, self.recv, self.times))
            return
        j = self.sent
        data = self.payload(j)
        self.sent = j + 1
        s.tokens_total += 1
        last = self.sent >= self.n_out
        if last:
            if not self.native:
                n_in, n_out = self.n_in, self.n_out
                data += (b'data: {"id":"gt","object":"chunk","choices":[],"usage":{"prompt_tokens":%d,'
                         b'"completion_tokens":%d,"total_tokens":%d}}\n\n' % (n_in, n_out, n_in + n_out))
            data += b"data: [DONE]\n\n"
            out = _chunk(data) + b"0\r\n\r\n"
        else:
            out = _chunk(data)
        self.times.append(time.perf_counter())
        conn.write_now(out)
        if last:
            s.running -= 1
            s.log.append((self.key, self.recv, self.times))
        elif s.itl > 0:
            conn.loop.call_later(self.recv + s.ttft + self.sent * s.itl - time.perf_counter(), self.emit)
        else:
            conn.loop.call_soon(self.emit)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--cap-output", type=int, default=None, help="stop every stream after this many tokens")
    ap.add_argument("--prompt-delta", type=int, default=0, help="misreport prompt_tokens by this many")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    global SERVER
    SERVER = Server(args.ttft_ms / 1000.0, args.itl_ms / 1000.0, args.cap_output, args.prompt_delta)

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
