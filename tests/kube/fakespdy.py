"""``kubectl port-forward`` for the fake API server: the SPDY/3.1 ``pods/portforward`` protocol, server side.

kubectl (client-go) first asks for a WebSocket tunnel (subprotocol ``SPDY/3.1+portforward.k8s.io``, API servers
from 1.30); we answer 400 as an older API server would, and it falls back to the plain SPDY upgrade:
``POST .../pods/<pod>/portforward`` with ``Upgrade: SPDY/3.1`` and ``X-Stream-Protocol-Version:
portforward.k8s.io``, answered ``101 Switching Protocols``. Then SPDY/3.1 frames (draft 3.1: 8-byte headers,
control frames with the high bit set, 24-bit lengths). For each local connection kubectl opens two streams
(SYN_STREAM), the *error* stream and then the *data* stream of one request id, and waits for a SYN_REPLY on each.
The data stream carries the bytes both ways; the error stream carries an error message, or nothing before its
FIN once the forwarded connection ends.

Header blocks are zlib streams (one per direction) primed with SPDY/3's preset dictionary (``DICTIONARY``,
built below from the draft's list). Streams are paired by their ``requestid`` header, since kubectl opens the
streams of concurrent local connections interleaved. Flow control (WINDOW_UPDATE) is not enforced by
client-go's spdystream and is ignored here; PING is echoed.

``Front`` is the fake API server's listening socket: it hands SPDY port-forward upgrades to ``SpdyPortForward``
and pipes every other connection, bytes unchanged, to the aiohttp server behind it.
"""

from __future__ import annotations

import asyncio
import re
import struct
import zlib
from collections.abc import Callable

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
MAX_HEAD = 65536
# SPDY/3's zlib dictionary (draft 3, section 2.6.10.1): length-prefixed header names and values, then a run of
# common value fragments (status codes and phrases, dates, content types)
_WORDS = (
    "options,head,post,put,delete,trace,accept,accept-charset,accept-encoding,accept-language,accept-ranges,age,"
    "allow,authorization,cache-control,connection,content-base,content-encoding,content-language,content-length,"
    "content-location,content-md5,content-range,content-type,date,etag,expect,expires,from,host,if-match,"
    "if-modified-since,if-none-match,if-range,if-unmodified-since,last-modified,location,max-forwards,pragma,"
    "proxy-authenticate,proxy-authorization,range,referer,retry-after,server,te,trailer,transfer-encoding,upgrade,"
    "user-agent,vary,via,warning,www-authenticate,method,get,status,200 OK,version,HTTP/1.1,url,public,set-cookie,"
    "keep-alive,origin"
).split(",")
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


def header_block(raw: bytes) -> dict[str, str]:
    """An uncompressed SPDY/3 name/value block → {name: value} (several values joined by NUL stay joined)."""
    n, pos, out = struct.unpack_from(">I", raw)[0], 4, {}
    for _ in range(n):
        klen = struct.unpack_from(">I", raw, pos)[0]
        key = raw[pos + 4 : pos + 4 + klen].decode("latin-1")
        pos += 4 + klen
        vlen = struct.unpack_from(">I", raw, pos)[0]
        out[key] = raw[pos + 4 : pos + 4 + vlen].decode("latin-1")
        pos += 4 + vlen
    return out


_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/portforward(?:\?.*)?$")


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(payload)) + payload


class SpdyPortForward:
    """One upgraded connection: serves kubectl's streams, each pair forwarded to the pod's port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: int,
                 headers_seen: list[dict[str, str]]) -> None:
        self.reader, self.writer, self.target = reader, writer, target
        self.headers_seen = headers_seen  # every SYN_STREAM's decoded headers (tests read them)
        self._compress = zlib.compressobj(zdict=DICTIONARY)  # one zlib stream per direction, as SPDY wants
        self._decompress = zlib.decompressobj(zdict=DICTIONARY)
        self._pending: dict[str, dict[str, int]] = {}  # request id -> {"error": stream, "data": stream}
        self._upstreams: dict[int, asyncio.StreamWriter] = {}  # data stream id -> connection to the pod
        self._tasks: set[asyncio.Task[None]] = set()

    def _headers(self, pairs: list[tuple[bytes, bytes]]) -> bytes:
        raw = struct.pack(">I", len(pairs)) + b"".join(
            struct.pack(">I", len(k)) + k + struct.pack(">I", len(v)) + v for k, v in pairs)
        return self._compress.compress(raw) + self._compress.flush(zlib.Z_SYNC_FLUSH)

    async def serve(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(8)
                if head[0] & 0x80:
                    kind = struct.unpack(">H", head[2:4])[0]
                    flags, length = head[4], int.from_bytes(head[5:8], "big")
                    payload = await self.reader.readexactly(length)
                    if not await self._control(kind, flags, payload):
                        return
                else:
                    stream = struct.unpack(">I", head[:4])[0] & 0x7FFFFFFF
                    flags, length = head[4], int.from_bytes(head[5:8], "big")
                    payload = await self.reader.readexactly(length)
                    await self._data(stream, flags, payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for t in self._tasks:
                t.cancel()
            for up in self._upstreams.values():
                up.close()
            self.writer.close()

    async def _control(self, kind: int, flags: int, payload: bytes) -> bool:
        if kind == SYN_STREAM:
            stream = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            headers = header_block(self._decompress.decompress(payload[10:]))
            self.headers_seen.append(headers)
            self.writer.write(control_frame(SYN_REPLY, 0, struct.pack(">I", stream) + self._headers([])))
            pair = self._pending.setdefault(headers.get("requestid", ""), {})
            pair[headers.get("streamtype", "")] = stream
            if "error" in pair and "data" in pair:
                del self._pending[headers.get("requestid", "")]
                await self._open(pair["error"], pair["data"])
        elif kind == RST_STREAM:
            stream = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            up = self._upstreams.pop(stream, None)
            if up is not None:
                up.close()
        elif kind == PING:
            self.writer.write(control_frame(PING, 0, payload))
        elif kind == GOAWAY:
            return False
        await self.writer.drain()  # SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do
        return True

    async def _open(self, error: int, data: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError as exc:
            msg = f"error forwarding port {self.target} to pod: {exc}".encode()
            self.writer.write(data_frame(error, 0, msg) + data_frame(error, FLAG_FIN, b""))
            return
        self._upstreams[data] = writer
        task = asyncio.ensure_future(self._pump(reader, error, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, error: int, data: int) -> None:
        """The pod's bytes back on the data stream; at its end, FIN on both streams of the pair."""
        try:
            while chunk := await reader.read(65536):
                self.writer.write(data_frame(data, 0, chunk))
                await self.writer.drain()
            self.writer.write(data_frame(data, FLAG_FIN, b"") + data_frame(error, FLAG_FIN, b""))
            await self.writer.drain()
        except ConnectionError:
            pass
        finally:
            up = self._upstreams.pop(data, None)
            if up is not None:
                up.close()

    async def _data(self, stream: int, flags: int, payload: bytes) -> None:
        up = self._upstreams.get(stream)
        if up is None:
            return  # the error stream (kubectl writes nothing there), or a stream already gone
        if payload:
            up.write(payload)
            await up.drain()
        if flags & FLAG_FIN and up.can_write_eof():
            up.write_eof()


class Front:
    """The public socket of the fake API server (see the module docstring)."""

    def __init__(self, internal_port: int, pod_port: Callable[[str, str], int | None]) -> None:
        self.internal_port = internal_port
        self.pod_port = pod_port
        self.upgrades = 0  # SPDY port-forward connections served (tests check kubectl really used this path)
        self.websocket_refused = 0
        self.headers_seen: list[dict[str, str]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path = [*lines[0].split(" "), "", ""][:2]
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        m = _PATH.match(path)
        upgrade = headers.get("upgrade", "").lower()
        if m is not None and upgrade == "websocket" and "spdy/3.1+portforward" in \
                headers.get("sec-websocket-protocol", "").lower():
            self.websocket_refused += 1
            body = b'{"kind":"Status","status":"Failure","message":"websocket tunneling not supported","code":400}'
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
            writer.close()
            return
        if m is not None and method == "POST" and upgrade == "spdy/3.1":
            target = self.pod_port(m.group(1), m.group(2))
            if target is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            self.upgrades += 1
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                         b"X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n")
            await writer.drain()
            await SpdyPortForward(reader, writer, target, self.headers_seen).serve()
            return
        await self._pipe(head, reader, writer)

    async def _pipe(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.internal_port)
        except OSError:
            writer.close()
            return
        up_writer.write(head)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer), return_exceptions=True)
