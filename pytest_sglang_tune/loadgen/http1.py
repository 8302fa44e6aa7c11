"""One HTTP/1.1 client connection of the lean transport (``fastclient``): a connected non-blocking socket on
the event loop (``loop.add_reader``), carrying one request at a time, and the response parser that runs in
its read callback.

Timestamps: each read is ``recvmsg`` with ``SO_TIMESTAMPNS`` (Linux), so a read carries the time the kernel
received its newest bytes. A loop that is busy (hundreds of streams, or a client run flat out) reads late, but
the time it records is the arrival, not the read: the client's own backlog stays out of TTFT and ITL. Where the
kernel gives no timestamp, the time of the read (``time.perf_counter()`` first thing) is used.

Responses: ``Transfer-Encoding: chunked``, ``Content-Length`` or read-until-close bodies, no compression (none
is asked for). The common read, whole chunks of whole single-line ``data:`` events, is taken in one pass
(``_fast``); anything else goes through the general de-chunker and ``sse.StreamParser``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time

from pytest_sglang_tune.loadgen.samples import RequestSample
from pytest_sglang_tune.loadgen.sse import StreamParser

MAX_HEAD = 65536
READ_SIZE = 65536
clock = time.perf_counter

_HEAD, _BODY, _DONE = 0, 1, 2
_CHUNKED, _LENGTH, _UNTIL_CLOSE = 0, 1, 2

# Linux's SO_TIMESTAMPNS (asm-generic value 35; Python's socket module does not name it); elsewhere: none
SO_TIMESTAMPNS: int | None = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None)
_CMSG = socket.CMSG_SPACE(16)
_TIMESPEC = struct.Struct("qq")


def enable_timestamps(sock: socket.socket) -> int:
    """Ask the kernel for receive timestamps; the ancillary buffer size to read them with (0: none)."""
    if SO_TIMESTAMPNS is None:
        return 0
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return 0
    return _CMSG


def arrival(anc: list[tuple[int, int, bytes]], t: float) -> float:
    """The kernel's receive time of a read (on the ``perf_counter`` clock), from its ancillary data; ``t`` (the
    read's own time) when there is none or it is implausible (the realtime clock was stepped meanwhile)."""
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(raw)
            k = sec + nsec * 1e-9 - (time.time() - t)  # realtime → perf_counter (CLOCK_MONOTONIC)
            return k if t - 60.0 < k <= t else t
    return t


class StaleConnection(Exception):
    """The reused connection was closed by the server before it answered: send again on a fresh one."""


class Connection:
    """One HTTP/1.1 connection on a connected non-blocking socket; carries one request at a time."""

    __slots__ = (
        "_buf", "_chunk_left", "_chunk_state", "_cmsg", "_err_body", "_keep", "_mode", "_out", "_remaining",
        "_state", "closed", "fd", "got_bytes", "loop", "parser", "sample", "sock", "waiter",
    )

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.loop = sock, loop
        self.fd = sock.fileno()
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None
        self.sample: RequestSample | None = None
        self.parser: StreamParser | None = None
        self._out = bytearray()  # what a write could not send at once (flushed when writable)
        self._cmsg = enable_timestamps(sock)
        self._reset()
        loop.add_reader(self.fd, self._readable)

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
        self._reset()
        self.sample = sample
        self.parser = StreamParser(sample, native=native)
        self.waiter = self.loop.create_future()
        sample.sent = clock()
        self._write(data)
        return self.waiter

    # -- socket I/O -----------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write now, straight to the socket (the send time was stamped just before); what does not fit is
        queued and flushed when the socket is writable."""
        if self.closed:
            return
        if not self._out:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._lost(exc)
                return
            if n == len(data):
                return
            data = data[n:]
            self.loop.add_writer(self.fd, self._writable)
        self._out += data

    def _writable(self) -> None:
        try:
            n = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._out[:n]
        if not self._out:
            self.loop.remove_writer(self.fd)

    def _readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(READ_SIZE, self._cmsg)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        t = clock()
        if not data:
            self._lost(None)
            return
        self.feed(data, arrival(anc, t) if anc else t)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self._out:
            self.loop.remove_writer(self.fd)
            self._out.clear()
        self.sock.close()

    def _lost(self, exc: Exception | None) -> None:
        """The connection ended (EOF, reset, a failed write): close it and settle the request in flight."""
        self.close()
        t = clock()
        if self.waiter is None or self.waiter.done():
            return
        if self._state == _BODY and self._mode == _UNTIL_CLOSE:
            self._end_body(t)
            return
        if not self.got_bytes:
            self.waiter.set_exception(StaleConnection())
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

    def feed(self, data: bytes, t: float) -> None:
        """One read of the response, received at ``t``."""
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
        self.close()
        self._finish()

    def _finish(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    @property
    def reusable(self) -> bool:
        return self._keep and not self.closed and self._state == _DONE
