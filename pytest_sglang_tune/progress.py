"""What a long step is doing (an image pull, a server loading its weights, a point's requests), on the terminal.

A step reports through a ``Progress`` sink — ``update(text)`` (the step's state now, replacing the previous) and
``clear()`` (the step is over) — and the session picks the sink once per process (``make_progress``):

    TtyProgress     a terminal: one line (one per xdist worker) rewritten in place with ``\\r`` and clear-to-EOL,
                    through pytest's TerminalWriter, past output capturing (never in captured output or JUnit XML)
    LineProgress    no terminal (CI): a plain line once a step has run ``interval`` s, then at most every
                    ``interval`` s (``--sglang-progress-interval``, default 30); short steps print nothing
    NullProgress    ``-q -q``
    JsonlProgress   an xdist worker (no terminal of its own): appends ``{"t", "worker", "text"}`` to
                    ``<run-dir>/progress/<worker>.jsonl``; the controller's ``WorkerView`` tails those files and
                    renders one line per worker through its own sink

``ticking`` calls a text function on a thread at most once a second, so the load generator only counts
(``loadgen.samples.RequestCounter``) and never waits on the terminal.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

DEFAULT_INTERVAL_S = 30.0
TICK_S = 1.0


class Progress(Protocol):
    def update(self, text: str) -> None:
        """The state of the running step now (several lines: one per worker)."""

    def clear(self) -> None:
        """The step is over: take its line(s) off the terminal."""

    def paused(self) -> contextlib.AbstractContextManager[Any]:
        """Hold the terminal (lines taken off) while something else writes to it."""


class NullProgress:
    def update(self, text: str) -> None:
        pass

    def clear(self) -> None:
        pass

    def paused(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


class TtyProgress:
    """Rewrites its line(s) in place. ``tw`` is pytest's TerminalWriter (``write``, ``fullwidth``); ``before``
    runs before the first line of a step is drawn (the reporter's ``ensure_newline``), ``suspend`` around each
    write (capture disabled)."""

    def __init__(self, tw: Any, *, before: Callable[[], None] = lambda: None,
                 suspend: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext) -> None:
        self.tw, self.before, self.suspend = tw, before, suspend
        self.lock = threading.RLock()
        self.drawn = 0  # lines on the screen now; the cursor is on the last of them

    def _home(self) -> str:
        """Back to the start of the first drawn line, erasing everything below."""
        up = f"\x1b[{self.drawn - 1}A" if self.drawn > 1 else ""
        return "\r" + up + "\x1b[J"

    def update(self, text: str) -> None:
        lines = text.splitlines() or [""]
        width = max(int(getattr(self.tw, "fullwidth", 80)) - 1, 20)
        with self.lock, self.suspend():
            if not self.drawn:
                self.before()
            out = (self._home() if self.drawn else "\r") + "\n".join(ln[:width] + "\x1b[K" for ln in lines)
            self.tw.write(out, flush=True)
            self.drawn = len(lines)

    def clear(self) -> None:
        with self.lock:
            if not self.drawn:
                return
            with self.suspend():
                self.tw.write(self._home(), flush=True)
            self.drawn = 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self.lock:
            self.clear()
            yield


class LineProgress:
    """Plain lines for logs: a step shows up once it has run ``interval`` s, then every ``interval`` s."""

    def __init__(self, write: Callable[[str], None], *, interval: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.interval, self.clock = write, interval, clock
        self.lock = threading.Lock()
        self.step_started: float | None = None
        self.last: float | None = None

    def update(self, text: str) -> None:
        with self.lock:
            now = self.clock()
            if self.step_started is None:
                self.step_started = now
            if now - self.step_started < self.interval:
                return
            if self.last is not None and now - self.last < self.interval:
                return
            self.last = now
            for line in text.splitlines():
                self.write(line)

    def clear(self) -> None:
        with self.lock:
            self.step_started = None

    def paused(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # whole lines: nothing to take off


class JsonlProgress:
    """An xdist worker's progress events, one JSON object a line (appended; each line whole, flushed)."""

    def __init__(self, path: Path, worker: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path, self.worker, self.clock = path, worker, clock
        self.lock = threading.Lock()
        self.last: str | None = None

    def _append(self, text: str) -> None:
        with self.lock:
            if text == self.last:
                return
            self.last = text
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"t": round(self.clock(), 3), "worker": self.worker, "text": text}) + "\n"
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)

    def update(self, text: str) -> None:
        self._append(text)

    def clear(self) -> None:
        self._append("")

    def paused(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


class WorkerView:
    """The controller under xdist: tails ``<dir>/*.jsonl`` and shows one line per busy worker through ``sink``."""

    def __init__(self, directory: Path, sink: Progress, *, every_s: float = TICK_S) -> None:
        self.directory, self.sink, self.every_s = directory, sink, every_s
        self.offsets: dict[Path, int] = {}
        self.latest: dict[str, str] = {}
        self.shown = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Read what the workers appended since the last poll and render it."""
        for path in sorted(self.directory.glob("*.jsonl")):
            try:
                with path.open("rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
            except OSError:
                continue
            whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
            self.offsets[path] = self.offsets.get(path, 0) + len(whole)
            for raw in whole.splitlines():
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.latest[str(event.get("worker") or path.stem)] = str(event.get("text") or "")
        lines = [f"[{w}] {t}" for w, t in sorted(self.latest.items()) if t]
        if lines:
            self.sink.update("\n".join(lines))
            self.shown = True
        elif self.shown:
            self.sink.clear()
            self.shown = False

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(Exception):  # progress never breaks a run
                self.poll()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sglang-tune-progress-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sink.clear()


@contextlib.contextmanager
def ticking(sink: Progress, text: Callable[[], str], *, every_s: float = TICK_S) -> Iterator[None]:
    """While the block runs, ``sink.update(text())`` every ``every_s`` on a thread; ``clear`` at the end."""
    if isinstance(sink, NullProgress):
        yield
        return
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):  # progress never breaks a point
                sink.update(text())

    thread = threading.Thread(target=run, name="sglang-tune-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sink.clear()


def duration(seconds: float) -> str:
    """``42s``, ``2m10s``, ``30m``, ``1h05m``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f"{s % 60:02d}s" if s % 60 else "")
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def make_progress(config: Any, *, run_dir: Path, worker_id: str | None, interval: float) -> Progress:
    """This process's sink (see the module docstring)."""
    if worker_id is not None:
        return JsonlProgress(run_dir / "progress" / f"{worker_id}.jsonl", worker_id)
    tr = config.pluginmanager.getplugin("terminalreporter")
    if tr is None or config.get_verbosity() <= -2:
        return NullProgress()
    capman = config.pluginmanager.getplugin("capturemanager")

    def suspend() -> contextlib.AbstractContextManager[Any]:
        return capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()

    if getattr(tr, "isatty", False):
        return TtyProgress(tr._tw, before=tr.ensure_newline, suspend=suspend)

    def write(line: str) -> None:
        with suspend():
            tr.write_line(f"sglang-tune: {line}")
    return LineProgress(write, interval=interval)
