"""The cache flush between points: a flush that never succeeds is a warning of the point, not silence."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune import readiness
from pytest_sglang_tune.backends.base import Backend, Endpoint, ServerFacts
from pytest_sglang_tune.engine import Engine, Live
from pytest_sglang_tune.loadgen.samples import PointResult, RequestSample
from pytest_sglang_tune.loadgen.workload import Load, Workload, parse_scenario
from pytest_sglang_tune.options import Options


class _Refuses(BaseHTTPRequestHandler):
    """SGLang's answer while requests still run: ``/flush_cache`` is refused with HTTP 400."""

    def do_POST(self) -> None:
        body = b"Cache not flushed. Please check backend logs for more details."
        self.send_response(400 if self.path == "/flush_cache" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Deployment:
    def __init__(self, url: str) -> None:
        self.endpoint = Endpoint(url, "m")
        self.launch_command: list[str] = []
        self.info: dict[str, Any] = {}

    def poll(self) -> str | None:
        return None

    def logs(self, tail: int = 50) -> str:
        return ""


def test_flush_that_never_succeeds_says_why(refusing_server: str) -> None:
    problem = readiness.flush_and_drain(_Deployment(refusing_server), timeout=0.5)
    assert problem is not None
    assert problem.startswith("the prefix cache was not flushed before the point (gave up after 0.5 s")
    assert "HTTP 400" in problem and "Cache not flushed" in problem


def _point() -> PointResult:
    s = RequestSample(8, 4, sent=1.0, first_token=1.1, done=1.4, chunk_times=[1.2, 1.3, 1.4],
                      chunk_tokens=[1, 1, 1], input_tokens=8, output_tokens=4)
    return PointResult(samples=[s], started=1.0, finished=1.4)


def test_measured_point_carries_the_flush_warning(refusing_server: str, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    import pytest_sglang_tune.loadgen.point as point_mod

    monkeypatch.setattr(readiness, "FLUSH_TIMEOUT_S", 0.5, raising=False)
    monkeypatch.setattr(point_mod, "run_point", lambda *a, **k: _point())
    engine = Engine(options=Options(), run_id="r", backend=Backend(), lease_dir=tmp_path)
    live = Live(("s", "c"), _Deployment(refusing_server), None, {}, 0.0, None, ServerFacts(), points=1)
    m = engine.measure(live, Workload("w", *parse_scenario("D(8,4)"), num_requests=1), Load(concurrency=1),
                       (), 1)
    assert m.metrics["completed"] == 1
    assert [w for w in m.warnings if w.startswith("the prefix cache was not flushed")], m.warnings
