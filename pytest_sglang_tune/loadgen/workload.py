"""Workload and load-level value types, and genai-bench's scenario grammar.

A *workload* says what requests look like (endpoint, input/output token lengths, shared prefixes, how many);
a *load* says how hard they are sent (closed-loop concurrency and/or open-loop request rate).

Scenario strings (genai-bench's grammar):
    D(in,out)                 deterministic lengths
    N(mean_in,std_in)/(mean_out,std_out)   normal, truncated at 1
    U(min_in,max_in)/(min_out,max_out)     uniform integers, inclusive
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pytest_sglang_tune.errors import SuiteError

Endpoint = Literal["chat", "completions", "generate"]
ENDPOINTS: tuple[str, ...] = ("chat", "completions", "generate")


@dataclass(frozen=True)
class LengthDist:
    """A distribution of token lengths: ``D`` fixed, ``N`` normal, ``U`` uniform."""

    kind: Literal["D", "N", "U"]
    a: float
    b: float = 0.0

    def sample(self, rng: random.Random) -> int:
        if self.kind == "D":
            return int(self.a)
        if self.kind == "U":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    @property
    def mean(self) -> float:
        if self.kind == "U":
            return (self.a + self.b) / 2
        return self.a

    def __str__(self) -> str:
        if self.kind == "D":
            return str(int(self.a))
        return f"{self.kind}({_num(self.a)},{_num(self.b)})"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_NUM = r"\s*(\d+(?:\.\d+)?)\s*"
_SCENARIO_RE = {
    "D": re.compile(rf"^D\({_NUM},{_NUM}\)$"),
    "N": re.compile(rf"^N\({_NUM},{_NUM}\)\s*/\s*\({_NUM},{_NUM}\)$"),
    "U": re.compile(rf"^U\({_NUM},{_NUM}\)\s*/\s*\({_NUM},{_NUM}\)$"),
}
SCENARIO_HELP = "D(in,out), N(mean_in,std_in)/(mean_out,std_out) or U(min_in,max_in)/(min_out,max_out)"


def parse_scenario(text: str) -> tuple[LengthDist, LengthDist]:
    """Parse a genai-bench scenario string into (input, output) length distributions.

    >>> parse_scenario("D(1000,250)")
    (LengthDist(kind='D', a=1000.0, b=0.0), LengthDist(kind='D', a=250.0, b=0.0))
    """
    s = text.strip()
    kind = s[:1]
    rx = _SCENARIO_RE.get(kind)
    m = rx.match(s) if rx else None
    if not m:
        raise SuiteError(f"{text!r} is not a valid scenario; expected {SCENARIO_HELP}", field="scenario")
    nums = [float(g) for g in m.groups()]
    if kind == "D":
        if nums[0] < 1 or nums[1] < 1:
            raise SuiteError(f"{text!r}: lengths must be at least 1", field="scenario")
        return LengthDist("D", nums[0]), LengthDist("D", nums[1])
    if kind == "U":
        for lo, hi in ((nums[0], nums[1]), (nums[2], nums[3])):
            if lo < 1 or hi < lo:
                raise SuiteError(f"{text!r}: uniform bounds need 1 <= min <= max", field="scenario")
    if kind == "N" and (nums[0] < 1 or nums[2] < 1):
        raise SuiteError(f"{text!r}: normal means must be at least 1", field="scenario")
    return LengthDist(kind, nums[0], nums[1]), LengthDist(kind, nums[2], nums[3])  # type: ignore[arg-type]


@dataclass(frozen=True)
class SharedPrefix:
    """Requests fall into ``groups``; each group shares a common prefix of ``prefix_len`` tokens."""

    groups: int
    prefix_len: int


@dataclass(frozen=True)
class Load:
    """One load level: closed-loop ``concurrency``, open-loop ``request_rate`` (req/s), or both (rate capped).

    A trace replay's level is its ``time_scale`` (the trace's gaps times it); its ``request_rate`` is then the
    replay's mean rate, for the record and for ordering levels, not a Poisson rate.
    """

    concurrency: int | None = None
    request_rate: float | None = None
    time_scale: float | None = None

    def label(self) -> str:
        """Short id fragment: ``c64``, ``r2.5``, ``r4-c16``; a trace replay ``ts0.5`` or ``ts1-c32``."""
        parts = []
        if self.time_scale is not None:
            parts.append(f"ts{_num(self.time_scale)}")
        elif self.request_rate is not None:
            parts.append(f"r{_num(self.request_rate)}")
        if self.concurrency is not None:
            parts.append(f"c{self.concurrency}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"concurrency": self.concurrency, "request_rate": self.request_rate}
        if self.time_scale is not None:
            d["time_scale"] = self.time_scale
        return d


@dataclass(frozen=True)
class MaxLoadSearch:
    """A workload whose load is searched: the highest ``kind`` (``concurrency`` or ``request_rate``) in
    [``low``, ``high``] at which a config meets every SLO, found by bisection to within ``tolerance`` (a share:
    0.1 stops when high/low ≤ 1.1; concurrency also stops at neighbours)."""

    kind: str
    low: float
    high: float
    tolerance: float = 0.1

    def load(self, value: float) -> Load:
        return Load(concurrency=int(value)) if self.kind == "concurrency" else Load(request_rate=round(value, 6))

    def middle(self, low: float, high: float) -> float | None:
        """The next probe between a passing ``low`` and a failing ``high``; None when they are close enough."""
        if high <= low * (1.0 + self.tolerance) or (self.kind == "concurrency" and high - low <= 1):
            return None
        mid = math.sqrt(low * high)
        return float(round(mid)) if self.kind == "concurrency" else mid


_NEW_FIELD_DEFAULTS: dict[str, Any] = {
    "dataset": None, "turns": 1, "burstiness": 1.0, "warmup_s": 0.0, "cooldown_s": 0.0,
}
_TRACE_FIELDS: tuple[str, ...] = ("trace", "time_scale", "trace_window", "max_requests")
FROM_DATASET = LengthDist("D", 0.0)  # a length taken from the dataset's records


def loads_from(concurrency: list[int], request_rate: list[float]) -> list[Load]:
    """The load levels of ``concurrency`` × ``request_rate`` (the one rule, for suites and ``sglang-tune bench``):
    either list alone gives one level per value; with both, one must be a single value, which caps (a
    concurrency) or paces (a rate) every level of the other. Raises ``SuiteError`` otherwise."""
    if concurrency and request_rate:
        if len(request_rate) == 1:
            return [Load(concurrency=c, request_rate=request_rate[0]) for c in concurrency]
        if len(concurrency) == 1:
            return [Load(concurrency=concurrency[0], request_rate=r) for r in request_rate]
        raise SuiteError(f"with both concurrency {concurrency} and request_rate {request_rate}, one of them must be "
                         "a single value (it caps or paces every level of the other)")
    if concurrency:
        return [Load(concurrency=c) for c in concurrency]
    if request_rate:
        return [Load(request_rate=r) for r in request_rate]
    raise SuiteError("a workload needs concurrency (a list of levels) or request_rate (req/s), or both")


def dataset_digest(path: str) -> str:
    """``<file name>@<sha256 prefix of its bytes>``; the name alone when the file cannot be read."""
    p = Path(path)
    sha = file_sha256(path)
    return f"{p.name}@{sha[:12]}" if sha else p.name


def file_sha256(path: str) -> str:
    """SHA-256 (hex) of a file's bytes, cached by path, modification time and size; empty when unreadable."""
    p = Path(path)
    try:
        st = p.stat()
        return _sha256(str(p.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return ""


@functools.lru_cache(maxsize=32)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Workload:
    """What the requests of one workload look like, and at which load levels it is run."""

    name: str
    input_len: LengthDist
    output_len: LengthDist
    num_requests: int = 100
    warmup_requests: int = 2
    endpoint: Endpoint = "chat"
    loads: tuple[Load, ...] = field(default_factory=tuple)
    shared_prefix: SharedPrefix | None = None
    seed: int = 0
    max_duration_s: float | None = None
    num_requests_per_load: tuple[int, ...] = ()
    dataset: str | None = None       # ShareGPT-format JSON (path): prompts and reference output lengths
    turns: int = 1                   # >1: chat sessions of this many requests, each carrying the history
    burstiness: float = 1.0          # open-loop arrivals: gamma shape (1 = Poisson, <1 burstier)
    warmup_s: float = 0.0            # leave out requests sent in the point's first seconds
    cooldown_s: float = 0.0          # leave out requests that end in the point's last seconds
    trace: str | None = None         # a timestamped trace (path, ``loadgen.trace``): lengths, content and arrivals
    time_scale: float = 1.0          # trace replay: the trace's gaps times this (0.5 = twice as fast)
    trace_window: tuple[float, float | None] | None = None  # trace replay: [start_s, end_s) of the trace
    max_requests: int | None = None  # trace replay: at most this many requests of the window
    max_load: MaxLoadSearch | None = None  # ``load: {search: max_within_slo, ...}``: bisect for the highest load

    def __post_init__(self) -> None:
        if self.turns < 1:
            raise SuiteError(f"turns {self.turns!r} must be at least 1", field="turns")
        if self.turns > 1 and self.endpoint != "chat":
            raise SuiteError(f"turns {self.turns} needs endpoint 'chat' (sessions carry the chat history), "
                             f"not {self.endpoint!r}", field="turns")
        if not self.burstiness > 0:
            raise SuiteError(f"burstiness {self.burstiness!r} must be positive (1 is Poisson)", field="burstiness")
        for name in ("warmup_s", "cooldown_s"):
            v = getattr(self, name)
            if not v >= 0:
                raise SuiteError(f"{name} {v!r} must be a number of seconds >= 0", field=name)
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise SuiteError(f"max_duration_s {self.max_duration_s!r} must be positive", field="max_duration_s")
        if self.trace is not None:
            self._check_trace()

    def _check_trace(self) -> None:
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise SuiteError(f"time_scale {self.time_scale!r} must be a positive number (the trace's gaps are "
                             "multiplied by it: 0.5 replays twice as fast)", field="time_scale")
        if self.max_requests is not None and self.max_requests < 1:
            raise SuiteError(f"max_requests {self.max_requests!r} must be at least 1", field="max_requests")
        if self.trace_window is not None:
            start, end = self.trace_window
            if not start >= 0 or (end is not None and not end > start):
                raise SuiteError(f"window {list(self.trace_window)!r} must be [start_s, end_s] with 0 <= start_s "
                                 "< end_s (seconds from the trace's first request; end_s null: to the end)",
                                 field="window")
        for name in ("dataset", "shared_prefix"):
            if getattr(self, name) is not None:
                raise SuiteError(f"{name} cannot be combined with trace (the trace gives lengths and content)",
                                 field=name)
        if self.turns != 1:
            raise SuiteError(f"turns {self.turns} cannot be combined with trace (each trace line is one request)",
                             field="turns")

    @property
    def sessions(self) -> int:
        """Chat sessions of ``turns`` requests making up ``num_requests`` (the last one may be shorter)."""
        return -(-self.num_requests // self.turns)

    def at_load(self, index: int) -> Workload:
        """This workload narrowed to its ``index``-th load level (with that level's request count)."""
        n = self.num_requests_per_load[index] if self.num_requests_per_load else self.num_requests
        load = self.loads[index]
        scale = load.time_scale if load.time_scale is not None else self.time_scale
        return replace(self, loads=(load,), num_requests=n, num_requests_per_load=(), time_scale=scale)

    def content_dict(self) -> dict[str, Any]:
        """Everything that defines the request stream (not the load levels, not the name)."""
        d = asdict(self)
        for k in ("name", "loads", "num_requests_per_load", "max_load"):
            d.pop(k)
        for k, default in _NEW_FIELD_DEFAULTS.items():  # absent when unused: older hashes stay valid
            if d[k] == default:
                d.pop(k)
        if self.dataset is not None:  # the file's content, not where it lies on this machine
            d["dataset"] = dataset_digest(self.dataset)
        if self.trace is None:
            for k in _TRACE_FIELDS:
                d.pop(k)
        else:  # the trace's bytes, never its path; with the window, time_scale and max_requests
            d["trace"] = file_sha256(self.trace) or Path(self.trace).name
            d["trace_window"] = list(self.trace_window) if self.trace_window is not None else None
        d["input_len"] = str(self.input_len)
        d["output_len"] = str(self.output_len)
        return d

    @property
    def content_hash(self) -> str:
        """Stable hash of the request stream's definition; diffs match results on it."""
        blob = json.dumps(self.content_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
