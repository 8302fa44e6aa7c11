"""A small Prometheus on loopback for tests: ``GET /api/v1/query`` over stored series (it never imports our code).

It speaks Prometheus's HTTP API (prometheus.io/docs/prometheus/latest/querying/api/): ``query`` and ``time``
parameters; an instant vector selector ``name{l="v",...}`` answers ``resultType: vector`` with the latest sample
at or before ``time`` within 5 minutes (the lookback); a range selector ``name{...}[Ns]`` answers ``resultType:
matrix`` with every sample in ``(time - N, time]``; values are strings, timestamps float seconds; a query it
cannot parse answers HTTP 400 ``{"status": "error", "errorType": "bad_data", "error": ...}``. Only equality
matchers are supported (all our client sends).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

_SELECTOR = re.compile(r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?(?:\[(?P<range>\d+)s\])?$')
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*')


class FakePrometheus:
    """``add(name, labels, [(t, value), ...])`` stores a series; ``url`` is where it answers; ``queries`` logs."""

    def __init__(self) -> None:
        self.series: list[tuple[str, dict[str, str], list[tuple[float, float]]]] = []
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path != "/api/v1/query":
                    return self._send(404, {"status": "error", "errorType": "not_found", "error": url.path})
                params = parse_qs(url.query)
                query = params.get("query", [""])[0]
                outer.queries.append(query)
                at = float(params.get("time", ["0"])[0])
                try:
                    body = outer.answer(query, at)
                except ValueError as exc:
                    return self._send(400, {"status": "error", "errorType": "bad_data", "error": str(exc)})
                return self._send(200, {"status": "success", "data": body})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name: str, labels: dict[str, str], points: list[tuple[float, float]]) -> None:
        self.series.append((name, {"__name__": name, **labels}, sorted(points)))

    def answer(self, query: str, at: float) -> dict[str, Any]:
        m = _SELECTOR.match(query.strip())
        if not m:
            raise ValueError(f'1:1: parse error: unexpected character in "{query}"')
        want: dict[str, str] = {}
        for part in filter(None, (m["labels"] or "").split(",")):
            mm = _MATCHER.fullmatch(part)
            if not mm:
                raise ValueError(f"1:1: parse error: unexpected label matcher {part!r}")
            want[mm[1]] = mm[2].replace('\\"', '"').replace("\\\\", "\\")
        out = []
        for name, labels, points in self.series:
            if name != m["name"] or any(labels.get(k) != v for k, v in want.items()):
                continue
            if m["range"]:
                values = [[t, repr(v)] for t, v in points if at - int(m["range"]) < t <= at]
                if values:
                    out.append({"metric": labels, "values": values})
            else:
                recent = [(t, v) for t, v in points if at - 300 < t <= at]
                if recent:
                    out.append({"metric": labels, "value": [recent[-1][0], repr(recent[-1][1])]})
        return {"resultType": "matrix" if m["range"] else "vector", "result": out}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
