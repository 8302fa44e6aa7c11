"""The lean streaming transport of the hot path: HTTP/1.1 keep-alive and chunked SSE on raw non-blocking
sockets driven by the event loop (one connection: ``http1.Connection``).

Why not aiohttp here: every network read of an aiohttp response goes through a ``StreamReader`` and wakes a
coroutine (a future, a task step, a context switch) before the client even sees the bytes, and the read is
timestamped only after that wake-up, so under load the timestamps trail the truth by the loop's backlog and the
per-token CPU is several times ours (``benchmarks/loadgen_accuracy.py`` has the numbers). Here each read is
parsed right where it happens: de-chunked, SSE-decoded and folded into the ``RequestSample`` with no task
switch, and stamped with the kernel's receive time; the awaiting coroutine wakes once per request.

Scope: plain ``http://`` (the runner uses aiohttp for ``https://``). A request on a reused keep-alive
connection that the server had closed meanwhile is retried once on a new connection (only when not a byte of
the response had arrived).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

from pytest_sglang_tune.loadgen.http1 import Connection, StaleConnection, clock
from pytest_sglang_tune.loadgen.samples import RequestSample


class LeanStreamer:
    """Streams requests to one ``http://host:port`` over a pool of keep-alive connections."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        u = urlsplit(base_url)
        if u.scheme != "http":
            raise ValueError(f"the lean transport speaks plain http, not {u.scheme!r} ({base_url})")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head_tail = (
            f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\n{extra}"
        ).encode("latin-1")
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()
        self._addrs: list[tuple[int, Any]] = []  # (family, sockaddr) of the host

    def request_bytes(self, path: str, body: bytes) -> bytes:
        """The whole request (headers and body), built once per request before the point starts."""
        return (
            b"POST " + (self.prefix + path).encode() + b" HTTP/1.1\r\n" + self._head_tail
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        if not self._addrs:  # resolved once per streamer, not per connection
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._addrs = [(family, addr) for family, _, _, _, addr in infos]
            if not self._addrs:
                raise OSError(f"cannot resolve {self.host}")
        error: OSError | None = None
        for family, addr in self._addrs:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            conn = Connection(sock, loop)
            self._all.add(conn)
            return conn
        assert error is not None
        raise error

    async def preconnect(self, n: int) -> int:
        """Open ``n`` idle connections up front (so the first measured requests do not pay for, nor make the
        server pay for, connection setup); returns how many opened (failures are left to the requests)."""
        results = await asyncio.gather(*(self._connect() for _ in range(n)), return_exceptions=True)
        conns = [c for c in results if isinstance(c, Connection)]
        self._idle.extend(conns)
        return len(conns)

    async def stream(self, data: bytes, sample: RequestSample, *, native: bool = False) -> None:
        """Send ``data`` (from ``request_bytes``) and fill ``sample``; never raises except on cancellation."""
        sample.sent = clock()  # re-stamped right before the write; kept if connecting fails
        for attempt in (0, 1):
            conn: Connection | None = None
            while self._idle:
                c = self._idle.pop()
                if not c.closed:
                    conn = c
                    break
                self._all.discard(c)  # closed by the server while idle
            reused = conn is not None
            try:
                if conn is None:
                    conn = await self._connect()
                await conn.start(data, sample, native)
            except StaleConnection:
                self._all.discard(conn)
                if reused and attempt == 0:
                    sample.first_token, sample.done, sample.error = None, None, None
                    continue
                sample.error, sample.error_detail = "connection_reset", "the server closed the connection"
                return
            except asyncio.CancelledError:
                if conn is not None:
                    conn.close()
                if sample.error is None and sample.done is None:
                    sample.error = "timeout"
                    sample.error_detail = "cancelled before the response ended (point deadline or abort)"
                raise
            except OSError as exc:
                sample.error = "connection_error"
                sample.error_detail = f"{type(exc).__name__}: {exc}"[:500]
                return
            if conn.reusable:
                self._idle.append(conn)
            else:
                conn.close()
                self._all.discard(conn)
            return

    async def close(self) -> None:
        for c in self._all:
            c.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)
