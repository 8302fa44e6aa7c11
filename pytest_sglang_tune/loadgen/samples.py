"""Per-request samples: what the load generator measured, plain values only."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestSample:
    """One request as measured by the client. Times are ``time.perf_counter()`` seconds.

    ``chunk_times``/``chunk_tokens`` hold, for every content chunk after the first, its arrival time and the number
    of tokens it carried; ITL samples are derived from them (gap/k, k times).
    """

    requested_input_tokens: int
    requested_output_tokens: int
    intended_send: float = 0.0          # when the arrival process wanted it sent
    sent: float = 0.0                   # when it was actually sent
    first_token: float | None = None    # arrival of the first content chunk
    done: float | None = None           # arrival of the end of the stream
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    input_tokens: int | None = None     # as served (usage.prompt_tokens)
    output_tokens: int | None = None    # as served (usage.completion_tokens)
    cached_tokens: int | None = None
    error: str | None = None            # error class: "http_503", "timeout", "connection_reset", "truncated", ...
    error_detail: str = ""
    warmup: bool = False
    reply: list[str] | None = None      # when a list, the streamed content is collected (multi-turn history)

    @property
    def ok(self) -> bool:
        return self.error is None and self.done is not None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent

    @property
    def e2e_s(self) -> float | None:
        return None if self.done is None else self.done - self.sent

    def itl_s(self) -> list[float]:
        """Inter-token latencies: each chunk's gap to the previous, split evenly over the tokens it carried."""
        out: list[float] = []
        prev = self.first_token
        if prev is None:
            return out
        for t, k in zip(self.chunk_times, self.chunk_tokens, strict=True):
            if k <= 0:
                continue
            gap = (t - prev) / k
            out.extend([gap] * k)
            prev = t
        return out

    @property
    def tpot_s(self) -> float | None:
        """(E2E − TTFT) / (output tokens − 1); None for outputs under 2 tokens."""
        n = self.output_tokens
        if not self.ok or n is None or n < 2 or self.first_token is None or self.done is None:
            return None
        return (self.done - self.first_token) / (n - 1)


@dataclass(slots=True)
class RequestCounter:
    """Measured requests finished so far, for progress: the load generator's loop adds to it (a few integer
    additions per request, nothing else), a progress ticker thread reads it about once a second."""

    done: int = 0
    failed: int = 0
    output_tokens: int = 0


@dataclass
class PointResult:
    """Everything measured at one load level of one workload."""

    samples: list[RequestSample]
    started: float            # perf_counter at the first measured send
    finished: float           # perf_counter when the last measured request ended
    wall_started: float = 0.0  # time.time() at start, for the report
    server_metrics: dict[str, float] = field(default_factory=dict)  # /metrics summary, when scraped
    warnings: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0  # the load generator's CPU time (all its processes) while the point was sent
    client_procs: int = 1      # how many load-generator processes shared the point
    client_cpu_util: float | None = None  # client_cpu_s per process per second of the whole point (near 1: busy)

    @property
    def duration_s(self) -> float:
        return max(self.finished - self.started, 1e-9)
