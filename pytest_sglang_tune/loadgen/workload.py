"""Workload and load-level value types, and genai-bench's scenario grammar.

A *workload* says what requests look like (endpoint, input/output token lengths, shared prefixes, how many);
a *load* says how hard they are sent (closed-loop concurrency and/or open-loop request rate).

Scenario strings (genai-bench's grammar):
    D(in,out)                 deterministic lengths
    N(mean_in,std_in)/(mean_out,std_out)   normal, truncated at 1
    U(min_in,max_in)/(min_out,max_out)     uniform integers, inclusive
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field, replace
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
    """One load level: closed-loop ``concurrency``, open-loop ``request_rate`` (req/s), or both (rate capped)."""

    concurrency: int | None = None
    request_rate: float | None = None

    def label(self) -> str:
        """Short id fragment: ``c64``, ``r2.5``, ``r4-c16``."""
        parts = []
        if self.request_rate is not None:
            parts.append(f"r{_num(self.request_rate)}")
        if self.concurrency is not None:
            parts.append(f"c{self.concurrency}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "request_rate": self.request_rate}


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

    def at_load(self, index: int) -> Workload:
        """This workload narrowed to its ``index``-th load level (with that level's request count)."""
        n = self.num_requests_per_load[index] if self.num_requests_per_load else self.num_requests
        return replace(self, loads=(self.loads[index],), num_requests=n, num_requests_per_load=())

    def content_dict(self) -> dict[str, Any]:
        """Everything that defines the request stream (not the load levels, not the name)."""
        d = asdict(self)
        for k in ("name", "loads", "num_requests_per_load"):
            d.pop(k)
        d["input_len"] = str(self.input_len)
        d["output_len"] = str(self.output_len)
        return d

    @property
    def content_hash(self) -> str:
        """Stable hash of the request stream's definition; diffs match results on it."""
        blob = json.dumps(self.content_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
