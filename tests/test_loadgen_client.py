"""Pure helpers of the client: Prometheus parsing, counter deltas, exception classification."""

from __future__ import annotations

import errno

import aiohttp
import pytest

from pytest_sglang_tune.loadgen.client import classify_exception, metrics_delta, parse_prometheus

PROM = """\
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="m",engine_type="unified"} 1200.0
sglang:prompt_tokens_total{model_name="m",engine_type="unified"} 5000.0
sglang:cached_tokens_total{model_name="m",engine_type="unified",cache_source="device"} 1000.0
sglang:cached_tokens_total{model_name="m",engine_type="unified",cache_source="host"} 250.0
sglang:num_running_reqs{model_name="m",tp_rank="0",dp_rank="0"} 3.0
sglang:num_running_reqs{model_name="m",tp_rank="0",dp_rank="1"} 5.0
sglang:token_usage{model_name="m",tp_rank="0",dp_rank="0"} 0.2
sglang:token_usage{model_name="m",tp_rank="0",dp_rank="1"} 0.4
sglang:cache_hit_rate{model_name="m"} NaN
sglang:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 7.0
process_start_time_seconds 1.7e9
garbage line without value
"""


def test_parse_prometheus_sums_series_and_averages_ratios() -> None:
    m = parse_prometheus(PROM)
    assert m["sglang:generation_tokens_total"] == 1200.0
    assert m["sglang:cached_tokens_total"] == 1250.0  # summed over label sets
    assert m["sglang:num_running_reqs"] == 8.0  # DP ranks add up
    assert m["sglang:token_usage"] == pytest.approx(0.3)  # a ratio: averaged
    assert "sglang:cache_hit_rate" not in m  # NaN skipped
    assert m["sglang:e2e_request_latency_seconds_bucket"] == 7.0
    assert m["process_start_time_seconds"] == 1.7e9
    assert "garbage" not in m


def test_metrics_delta_counters_and_gauges() -> None:
    before = {
        "sglang:generation_tokens_total": 100.0,
        "sglang:prompt_tokens_total": 1000.0,
        "sglang:cached_tokens_total": 0.0,
    }
    after = {
        "sglang:generation_tokens_total": 600.0,
        "sglang:prompt_tokens_total": 3000.0,
        "sglang:cached_tokens_total": 500.0,
        "sglang:num_requests_total": 10.0,
    }
    d = metrics_delta(before, after, {"sglang:num_running_reqs": [2.0, 4.0, 6.0], "sglang:num_queue_reqs": []})
    assert d == {
        "generation_tokens_total": 500.0,
        "prompt_tokens_total": 2000.0,
        "cached_tokens_total": 500.0,
        "num_requests_total": 10.0,
        "cache_hit_rate_point": 0.25,
        "num_running_reqs_mean": 4.0,
        "num_running_reqs_max": 6.0,
    }


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (aiohttp.ClientPayloadError("Response payload is not completed"), "truncated"),
        (TimeoutError(), "timeout"),
        (aiohttp.ServerTimeoutError("read timeout"), "timeout"),
        (aiohttp.ServerDisconnectedError(), "connection_reset"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "connection_reset"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "reset by peer"), "connection_reset"),
        (aiohttp.ClientOSError(errno.EHOSTUNREACH, "no route"), "connection_error"),
        (aiohttp.ClientConnectorError(None, OSError(errno.ECONNREFUSED, "refused")), "connection_error"),  # type: ignore[arg-type]
        (aiohttp.ClientResponseError(None, (), status=500), "connection_error"),  # type: ignore[arg-type]
        (ValueError("bug"), "client_error"),
    ],
)
def test_classify_exception(exc: BaseException, error: str) -> None:
    assert classify_exception(exc) == error
