"""The lean streaming transport of the hot path: HTTP/1.1 keep-alive and chunked SSE on ``asyncio.Protocol``.

Why not aiohttp here: every network read of an aiohttp response goes through a ``StreamReader`` and wakes a
coroutine (a future, a task step, a context switch) before the client even sees the bytes, and the read is
timestamped only after that wake-up, so under load the timestamps trail the truth by the loop's backlog and the
per-token CPU is several times ours (``benchmarks/loadgen_accuracy.py`` has the numbers). Here each read is
timestamped with ``time.perf_counter()`` first thing in ``data_received`` and parsed right there: de-chunked,
SSE-decoded and folded into the ``RequestSample`` with no task switch; the awaiting coroutine wakes once per
request.

Scope: plain ``http://`` (the runner uses aiohttp for ``https://``), responses with ``Transfer-Encoding:
chunked``, ``Content-Length`` or read-until-close bodies, no compression (none is asked for). A request on a
reused keep-alive connection that the server had closed meanwhile is retried once on a new connection (only
when not a byte of the response had arrived).
"""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import urlsplit

from pytest_sglang_tune.loadgen.samples import RequestSample
from pytest_sglang_tune.loadgen.sse import StreamParser

MAX_HEAD = 65536
_clock = time.perf_counter

_HEAD, _BODY, _DONE = 0, 1, 2
_CHUNKED, _LENGTH, _UNTIL_CLOSE = 0, 1, 2


def _write_now(transport: asyncio.Transport, fd: int, data: bytes) -> None:
    """Write ``data`` now. uvloop queues ``transport.write`` until the end of the loop iteration, after the
    iteration's I/O callbacks (hundreds of stream reads under load), so a request would leave milliseconds
    after its send time was stamped. With nothing queued on the transport, a direct non-blocking ``os.write``
    on its socket keeps the order; what does not fit goes through the transport."""
    if fd >= 0 and not transport.get_write_buffer_size():
        try:
            n = os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:  # let the transport see (and report) the broken connection
            n = 0
        if n == len(data):
            return
        data = data[n:]
    transport.write(data)


class _Retry(Exception):
    """The reused connection was closed by the server before it answered: send again on a fresh one."""


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection; carries one request at a time."""

    __slots__ = (
        "_buf", "_chunk_left", "_chunk_state", "_err_body", "_keep", "_mode", "_remaining", "_state",
        "closed", "fd", "got_bytes", "parser", "sample", "transport", "waiter",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None
        self.sample: RequestSample | None = None
        self.parser: StreamParser | None = None
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._state = _HEAD
        self._mode = _UNTIL_CLOSE
        self._remaining = 0
        self._chunk_state = 0  # 0: size line, 1: data, 2: CRLF after data, 3: trailers
        self._chunk_left = 0
        self._keep = True
        self._err_body: list[bytes] | None = None
        self.got_bytes = False

    # -- request --------------------------------------------------------------------------------------------

    def start(self, data: bytes, sample: RequestSample, native: bool) -> asyncio.Future[None]:
        assert self.transport is not None
        self._reset()
        self.sample = sample
        self.parser = StreamParser(sample, native=native)
        self.waiter = asyncio.get_running_loop().create_future()
        sample.sent = _clock()
        _write_now(self.transport, self.fd, data)
        return self.waiter

    # -- asyncio.Protocol -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        t = _clock()
        if self.waiter is None or self.waiter.done():
            return
        if self._state == _BODY and self._mode == _UNTIL_CLOSE:
            self._end_body(t)
            return
        if not self.got_bytes:
            self.waiter.set_exception(_Retry())
            return
        s = self.sample
        assert s is not None and self.parser is not None
        if s.error is None and s.done is None:
            if self._state == _BODY and self.parser.handler.done:  # [DONE] seen, framing cut: still complete
                self._end_body(t)
                return
            s.error = "connection_reset" if self._state == _HEAD else "truncated"
            s.error_detail = f"connection closed mid-{'headers' if self._state == _HEAD else 'body'}: {exc or 'EOF'}"
            h = self.parser.handler
            s.output_tokens = h._usage_out if h._usage_out is not None else h._counted
        self._finish()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost does the rest

    def data_received(self, data: bytes) -> None:
        t = _clock()
        self.got_bytes = True
        if self.waiter is None or self.waiter.done():
            return  # unsolicited bytes on an idle connection: ignore (it will be closed if it misbehaves)
        if self._state == _HEAD:
            buf = self._buf + data if self._buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail("stream_error", "response headers exceed 64 KiB")
                else:
                    self._buf = buf
                return
            self._buf = b""
            if not self._head(buf[:end]):
                return
            data = buf[end + 4 :]
            if not data and self._state == _BODY and self._mode == _LENGTH and self._remaining == 0:
                self._end_body(t)
                return
        if self._state == _BODY and data:
            if (self._mode == _CHUNKED and not self._buf and not self._chunk_state and self._err_body is None
                    and self._fast(data, t)):
                return
            self._body(data, t)

    # -- parsing --------------------------------------------------------------------------------------------

    def _head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            self._fail("stream_error", f"bad status line {lines[0][:100]!r}")
            return False
        chunked = False
        length: int | None = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                length = int(value.strip())
            elif name == b"connection" and b"close" in value.lower():
                self._keep = False
        if lines[0].startswith(b"HTTP/1.0"):
            self._keep = False
        self._state = _BODY
        if chunked:
            self._mode = _CHUNKED
        elif length is not None:
            self._mode, self._remaining = _LENGTH, length
        else:
            self._mode, self._keep = _UNTIL_CLOSE, False
        if status != 200:
            s = self.sample
            assert s is not None
            s.error = f"http_{status}"
            self._err_body = []
        return True

    def _body(self, data: bytes, t: float) -> None:
        if self._mode == _LENGTH:
            take = data[: self._remaining]
            self._remaining -= len(take)
            self._payload(take, t)
            if self._remaining <= 0:
                self._end_body(t)
        elif self._mode == _UNTIL_CLOSE:
            self._payload(data, t)
        else:
            self._dechunk(data, t)

    def _fast(self, data: bytes, t: float) -> bool:
        """The common read, taken in one pass: whole chunks (possibly the last, without trailers) whose data
        are whole single-line ``data: `` events. False (nothing consumed, no state changed) for anything
        else, which then takes the general de-chunker and SSE decoder. The cheapest case, one chunk holding
        one event (a server streaming token by token to a client that keeps up), is checked first."""
        parser = self.parser
        assert parser is not None
        dec = parser.decoder
        if dec._buf or dec._data or dec._skip_lf:
            return False
        h = parser.handler
        j = data.find(b"\r\n")
        if j > 0 and data[j + 2 : j + 8] == b"data: " and data[-4:] == b"\n\n\r\n":
            try:
                size = int(data[:j], 16)
            except ValueError:
                return False
            if j + size + 4 == len(data):
                ev = data[j + 8 : -4]
                if b"\n" not in ev and b"\r" not in ev:
                    if not h.done and h.sample.error is None:
                        h.on_event(ev, t)
                    return True
        parts: list[bytes] = []
        i, n = 0, len(data)
        end = False
        while i < n:
            j = data.find(b"\r\n", i)
            if j < 0:
                return False
            try:
                size = int(data[i:j], 16)
            except ValueError:
                return False
            if size == 0:
                if data[j + 2 :] != b"\r\n":
                    return False
                end = True
                break
            k = j + 2 + size
            if data[k : k + 2] != b"\r\n":
                return False
            parts.append(data[j + 2 : k])
            i = k + 2
        if parts:
            payload = parts[0] if len(parts) == 1 else b"".join(parts)
            if payload[-2:] != b"\n\n" or b"\r" in payload:
                return False
            events = payload.split(b"\n\n")
            events.pop()
            for ev in events:
                if ev[:6] != b"data: " or b"\n" in ev:
                    return False
            s = h.sample
            for ev in events:
                if h.done or s.error is not None or h.on_event(ev[6:], t):
                    break
        if end:
            self._end_body(t)
        return True

    def _dechunk(self, data: bytes, t: float) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        out: list[bytes] = []
        i, n = 0, len(data)
        st = self._chunk_state
        while i < n:
            if st == 0:  # size line; the common case takes a whole chunk and its CRLF in one step
                j = data.find(b"\r\n", i)
                if j < 0:
                    self._buf = data[i:]
                    break
                try:
                    size = int(data[i:j], 16)
                except ValueError:
                    try:
                        size = int(data[i:j].split(b";", 1)[0], 16)
                    except ValueError:
                        self._fail("stream_error", f"bad chunk size line {data[i:j][:50]!r}")
                        return
                i = j + 2
                if size == 0:
                    st = 3
                elif i + size + 2 <= n:
                    out.append(data[i : i + size])
                    i += size + 2
                else:
                    st, self._chunk_left = 1, size
            elif st == 1:  # inside a chunk's data
                take = min(self._chunk_left, n - i)
                out.append(data[i : i + take])
                i += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    st = 2
            elif st == 2:  # the CRLF closing a chunk's data
                if n - i < 2:
                    self._buf = data[i:]
                    break
                i += 2
                st = 0
            else:  # trailers after the last chunk, up to an empty line
                j = data.find(b"\r\n", i)
                if j < 0:
                    self._buf = data[i:]
                    break
                line = data[i:j]
                i = j + 2
                if not line:
                    self._chunk_state = st
                    if out:
                        self._payload(b"".join(out), t)
                    self._end_body(t)
                    return
        self._chunk_state = st
        if out:
            self._payload(out[0] if len(out) == 1 else b"".join(out), t)

    def _payload(self, data: bytes, t: float) -> None:
        if not data:
            return
        if self._err_body is not None:
            if sum(map(len, self._err_body)) < 2048:
                self._err_body.append(data)
            return
        parser = self.parser
        assert parser is not None
        if not parser.handler.done and parser.handler.sample.error is None:
            parser.feed(data, t)

    def _end_body(self, t: float) -> None:
        s, parser = self.sample, self.parser
        assert s is not None and parser is not None
        if self._err_body is not None:
            s.error_detail = b"".join(self._err_body).decode("utf-8", "replace").strip()[:500]
        elif not parser.handler.done and s.error is None:
            parser.eof(t)
        self._state = _DONE
        self._finish()

    def _fail(self, error: str, detail: str) -> None:
        s = self.sample
        if s is not None and s.error is None:
            s.error, s.error_detail = error, detail
        self._keep = False
        if self.transport is not None:
            self.transport.close()
        self._finish()

    def _finish(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    @property
    def reusable(self) -> bool:
        return self._keep and not self.closed and self._state == _DONE


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
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()

    def request_bytes(self, path: str, body: bytes) -> bytes:
        """The whole request (headers and body), built once per request before the point starts."""
        return (
            b"POST " + (self.prefix + path).encode() + b" HTTP/1.1\r\n" + self._head_tail
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        self._all.add(conn)
        return conn

    async def preconnect(self, n: int) -> int:
        """Open ``n`` idle connections up front (so the first measured requests do not pay for, nor make the
        server pay for, connection setup); returns how many opened (failures are left to the requests)."""
        results = await asyncio.gather(*(self._connect() for _ in range(n)), return_exceptions=True)
        conns = [c for c in results if isinstance(c, _Conn)]
        self._idle.extend(conns)
        return len(conns)

    async def stream(self, data: bytes, sample: RequestSample, *, native: bool = False) -> None:
        """Send ``data`` (from ``request_bytes``) and fill ``sample``; never raises except on cancellation."""
        sample.sent = _clock()  # re-stamped right before the write; kept if connecting fails
        for attempt in (0, 1):
            conn: _Conn | None = None
            while self._idle:
                c = self._idle.pop()
                if not c.closed:
                    conn = c
                    break
            reused = conn is not None
            try:
                if conn is None:
                    conn = await self._connect()
                await conn.start(data, sample, native)
            except _Retry:
                if reused and attempt == 0:
                    sample.first_token, sample.done, sample.error = None, None, None
                    continue
                sample.error, sample.error_detail = "connection_reset", "the server closed the connection"
                return
            except asyncio.CancelledError:
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
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
                if conn.transport is not None:
                    conn.transport.close()
                self._all.discard(conn)
            return

    async def close(self) -> None:
        for c in self._all:
            if c.transport is not None:
                c.transport.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)
