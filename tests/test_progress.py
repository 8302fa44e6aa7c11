"""Progress sinks: a line rewritten in place on a terminal, throttled plain lines without one, nothing under -qq,
and xdist workers' JSON lines rendered one line per worker by the controller."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_sglang_tune.engine import point_progress
from pytest_sglang_tune.loadgen.samples import RequestCounter
from pytest_sglang_tune.loadgen.workload import Load, Workload, parse_scenario
from pytest_sglang_tune.progress import (
    JsonlProgress,
    LineProgress,
    NullProgress,
    TtyProgress,
    WorkerView,
    duration,
    make_progress,
    ticking,
)


class FakeWriter:
    """pytest's TerminalWriter as the sink uses it: ``write(text, flush=...)`` and ``fullwidth``."""

    def __init__(self, width: int = 40) -> None:
        self.fullwidth = width
        self.out: list[str] = []

    def write(self, text: str, *, flush: bool = False) -> None:
        self.out.append(text)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def update(self, text: str) -> None:
        with self.lock:
            self.events.append(("update", text))

    def clear(self) -> None:
        with self.lock:
            self.events.append(("clear", ""))

    def paused(self) -> Any:
        return NullProgress().paused()


def test_tty_rewrites_one_line_in_place() -> None:
    tw, newlines = FakeWriter(width=30), []
    sink = TtyProgress(tw, before=lambda: newlines.append(1))
    sink.update("waiting for readiness 1s/30m")
    sink.update("waiting for readiness 2s/30m, log: loading weights 45%")
    sink.clear()
    sink.update("chat c1: 3/8 requests")
    assert tw.out == [
        "\rwaiting for readiness 1s/30m\x1b[K",
        "\r\x1b[J" + "waiting for readiness 2s/30m,"[:29] + "\x1b[K",  # cut to the width: never wraps
        "\r\x1b[J",
        "\rchat c1: 3/8 requests\x1b[K",
    ]
    assert len(newlines) == 2  # the reporter's ensure_newline before each step's first line, not per update
    assert not any("\n" in chunk for chunk in tw.out)


def test_tty_one_line_per_worker_redrawn_from_the_first() -> None:
    tw = FakeWriter(width=80)
    sink = TtyProgress(tw)
    sink.update("[gw0] a\n[gw1] b")
    sink.update("[gw0] a2\n[gw1] b2")
    with sink.paused():  # the controller reports a test: lines off, then redrawn by the next update
        assert sink.drawn == 0
    assert tw.out == ["\r[gw0] a\x1b[K\n[gw1] b\x1b[K", "\r\x1b[1A\x1b[J[gw0] a2\x1b[K\n[gw1] b2\x1b[K",
                      "\r\x1b[1A\x1b[J"]


def test_no_tty_prints_a_step_only_after_the_interval_then_at_most_every_interval() -> None:
    now = [0.0]
    lines: list[str] = []
    sink = LineProgress(lines.append, interval=30, clock=lambda: now[0])
    for t, text in [(0, "a"), (10, "b"), (29.9, "c"), (30, "d"), (45, "e"), (59.9, "f"), (60, "g")]:
        now[0] = t
        sink.update(text)
    assert lines == ["d", "g"]
    sink.clear()  # a new step starts its own 30 s
    now[0] = 100.0
    sink.update("h")
    now[0] = 129.0
    sink.update("i")
    assert lines == ["d", "g"]
    now[0] = 130.0
    sink.update("j\nk")
    assert lines == ["d", "g", "j", "k"]


def fake_config(verbosity: int, *, tty: bool) -> Any:
    tr = SimpleNamespace(isatty=tty, _tw=FakeWriter(), ensure_newline=lambda: None, write_line=lambda s: None)
    plugins = {"terminalreporter": tr, "capturemanager": None}
    return SimpleNamespace(pluginmanager=SimpleNamespace(getplugin=plugins.get), get_verbosity=lambda: verbosity)


@pytest.mark.parametrize(("verbosity", "tty", "kind"), [
    (0, True, TtyProgress), (-1, True, TtyProgress), (0, False, LineProgress), (2, False, LineProgress),
    (-2, True, NullProgress), (-3, False, NullProgress),
])
def test_the_sink_follows_the_terminal_and_verbosity(verbosity: int, tty: bool, kind: type,
                                                     tmp_path: Path) -> None:
    assert type(make_progress(fake_config(verbosity, tty=tty), run_dir=tmp_path, worker_id=None,
                              interval=30)) is kind
    worker = make_progress(fake_config(verbosity, tty=tty), run_dir=tmp_path, worker_id="gw1", interval=30)
    assert isinstance(worker, JsonlProgress) and worker.path == tmp_path / "progress" / "gw1.jsonl"


def test_controller_renders_one_line_per_worker_from_their_files(tmp_path: Path) -> None:
    d = tmp_path / "progress"
    gw0, gw1 = JsonlProgress(d / "gw0.jsonl", "gw0"), JsonlProgress(d / "gw1.jsonl", "gw1")
    shown = Recorder()
    view = WorkerView(d, shown)
    gw0.update("s c1: waiting for readiness 3s/2m")
    gw1.update("s c2: 2/8 requests, 100 tok/s, 1s")
    gw1.update("s c2: 2/8 requests, 100 tok/s, 1s")  # unchanged: not written again
    view.poll()
    with (d / "gw0.jsonl").open("a") as f:
        f.write('{"t": 1, "worker": "gw0", "text": "half a li')  # still being written: read next time
    view.poll()
    gw1.clear()
    view.poll()
    with (d / "gw0.jsonl").open("a") as f:
        f.write('ne"}\n')
    gw0.clear()
    view.poll()
    view.poll()
    assert shown.events == [
        ("update", "[gw0] s c1: waiting for readiness 3s/2m\n[gw1] s c2: 2/8 requests, 100 tok/s, 1s"),
        ("update", "[gw0] s c1: waiting for readiness 3s/2m\n[gw1] s c2: 2/8 requests, 100 tok/s, 1s"),
        ("update", "[gw0] s c1: waiting for readiness 3s/2m"),
        ("clear", ""),  # the half line became whole, then gw0 finished: nothing left to show
    ]
    events = [json.loads(line) for line in (d / "gw1.jsonl").read_text().splitlines()]
    assert [e["text"] for e in events] == ["s c2: 2/8 requests, 100 tok/s, 1s", ""]
    assert all(e["worker"] == "gw1" and e["t"] > 0 for e in events)


def test_point_progress_reads_the_counter_and_the_rate_since_the_last_tick() -> None:
    wl = Workload("chat", *parse_scenario("D(64,16)"), num_requests=8)
    counter = RequestCounter()
    text = point_progress(wl, Load(concurrency=4), counter, 1)
    assert text().startswith("chat c4: 0/8 requests, 0 tok/s, 0s")
    counter.done, counter.output_tokens, counter.failed = 3, 48, 1
    time.sleep(0.05)
    line = text()
    assert line.startswith("chat c4: 3/8 requests (1 failed), ") and " tok/s, 0s" in line
    rate = float(line.split(", ")[1].split()[0].replace(",", ""))
    assert 48 / 1.0 < rate < 48 / 0.04  # tokens over the seconds since the previous tick
    assert point_progress(wl, Load(concurrency=4), counter, 2)() == "chat c4: measuring in 2 processes, 0s"


def test_ticking_updates_from_a_thread_then_clears() -> None:
    shown = Recorder()
    n = [0]

    def text() -> str:
        n[0] += 1
        return f"tick {n[0]}"
    with ticking(shown, text, every_s=0.01):
        time.sleep(0.1)
    assert shown.events[-1] == ("clear", "")
    updates = [t for kind, t in shown.events if kind == "update"]
    assert len(updates) >= 3 and updates[:2] == ["tick 1", "tick 2"]
    with ticking(NullProgress(), text, every_s=0.001):  # nothing to show: no thread at all
        before = n[0]
        time.sleep(0.02)
    assert n[0] == before


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.9, "59s"), (60, "1m"), (130, "2m10s"),
                                               (1800, "30m"), (3900, "1h05m")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text
