"""One wait-until-ready for every backend, and the check that the server runs with the config's flags.

Readiness polls ``/health_generate`` (then ``/v1/models``) and fails fast: if the deployment dies while starting,
``NotReady`` is raised at once with how it died and its log tail, instead of waiting out the timeout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import requests

from pytest_sglang_tune.backends.base import Deployment
from pytest_sglang_tune.errors import FlagsNotApplied, InfeasibleConfig, NotReady
from pytest_sglang_tune.redact import redact_text

POLL_S = 0.25


# Failures caused by the configuration itself (it would fail on any healthy machine): ranked "infeasible".
INFEASIBLE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"CUDA out of memory|OutOfMemoryError|out of memory", "out of GPU memory"),
    (r"Not enough memory\. Please try to increase --mem-fraction-static", "not enough memory for the KV cache"),
    (r"must be divisible by tensor parallel size|is not divisible by", "invalid parallelism for this model"),
    (r"not supported (?:with|for|when)|cannot be used together|are mutually exclusive|incompatible with",
     "invalid flag combination"),
)


def classify_failure(log_tail: str) -> str | None:
    """Why a server died, when the reason is the configuration itself; None for anything else."""
    import re

    for pattern, cause in INFEASIBLE_PATTERNS:
        m = re.search(pattern, log_tail, flags=re.IGNORECASE)
        if m:
            line = next((ln.strip() for ln in log_tail.splitlines() if m.group(0) in ln), m.group(0))
            return f"{cause}: {line[:300]}"
    return None


def wait_ready(deployment: Deployment, *, timeout: float, config_id: str | None = None, progress: Any = None,
               label: str = "") -> float:
    """Block until the server answers; return the seconds it took. ``progress`` (a ``progress.Progress``) shows
    ``waiting for readiness 2m10s/30m, log: <the server's last log line>`` about once a second."""
    if progress is None:
        return _wait_ready(deployment, timeout, config_id, lambda: None)
    from pytest_sglang_tune.progress import duration

    start, shown = time.monotonic(), [0.0]

    def tick() -> None:
        now = time.monotonic()
        if now - shown[0] < 1.0:
            return
        shown[0] = now
        last_line = next((ln.strip() for ln in reversed(deployment.logs(5).splitlines()) if ln.strip()), "")
        progress.update(f"{label + ': ' if label else ''}waiting for readiness {duration(now - start)}/"
                        f"{duration(timeout)}" + (f", log: {redact_text(last_line)}" if last_line else ""))
    try:
        return _wait_ready(deployment, timeout, config_id, tick)
    finally:
        progress.clear()


def _wait_ready(deployment: Deployment, timeout: float, config_id: str | None, tick: Any) -> float:
    ep = deployment.endpoint
    start = time.monotonic()
    deadline = start + timeout
    stage = "/health_generate"
    last = "no answer yet"
    with requests.Session() as http:
        http.headers.update(ep.headers())
        while True:
            died = deployment.poll()
            if died is not None:
                tail = deployment.logs(40)
                cause = classify_failure(tail)
                if cause is not None:
                    raise InfeasibleConfig(f"the config cannot run: {cause} ({died})", config_id=config_id,
                                           log_tail=tail)
                raise NotReady(f"server died while starting: {died}", config_id=config_id, log_tail=tail)
            try:
                r = http.get(ep.url(stage), timeout=5)
                if r.status_code == 200:
                    if stage == "/health_generate":
                        stage = "/v1/models"
                        continue
                    return time.monotonic() - start
                last = f"{stage} answered HTTP {r.status_code}"
            except requests.RequestException as exc:
                last = f"{stage}: {type(exc).__name__}"
            tick()
            if time.monotonic() > deadline:
                raise NotReady(f"server not ready after {timeout:.0f}s (last: {last}); raise the timeout with "
                               "--sglang-ready-timeout if the model needs longer to load", config_id=config_id,
                               log_tail=deployment.logs(40))
            time.sleep(POLL_S)


def get_server_info(deployment: Deployment) -> dict[str, Any]:
    ep = deployment.endpoint
    for path in ("/server_info", "/get_server_info"):
        try:
            r = requests.get(ep.url(path), headers=ep.headers(), timeout=10)
        except requests.RequestException:
            continue
        if r.status_code == 200:
            data = r.json()
            if isinstance(data, dict):
                return data
    return {}


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return bool(expected) == bool(actual) if actual is not None else expected is False
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return math.isclose(float(expected), float(actual), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        return len(expected) == len(actual) and all(_same(a, b) for a, b in zip(expected, actual, strict=True))
    return str(expected) == str(actual)


SKIP_CHECK = {"--api-key", "--admin-api-key", "--host", "--port", "--model-path"}


def check_flags_applied(info: Mapping[str, Any], server_args: Mapping[str, Any], dests: Mapping[str, str], *,
                        config_id: str | None = None, log_tail: str = "") -> None:
    """Raise ``FlagsNotApplied`` unless ``/server_info`` reports every flag of the config with its value."""
    if not info:
        raise FlagsNotApplied("flags not applied: cannot verify — the server answers neither /server_info nor "
                              "/get_server_info", config_id=config_id, log_tail=log_tail)
    problems = []
    for flag, expected in server_args.items():
        if flag in SKIP_CHECK:
            continue
        dest = dests.get(flag, flag.lstrip("-").replace("-", "_"))
        if dest not in info:
            problems.append(f"{flag}={expected!r} (the server reports no {dest!r})")
        elif not _same(expected, info[dest]):
            problems.append(f"{flag}={expected!r} (the server runs with {info[dest]!r})")
    if problems:
        raise FlagsNotApplied("flags not applied: " + "; ".join(problems), config_id=config_id, log_tail=log_tail)


FLUSH_TIMEOUT_S = 30.0


def flush_and_drain(deployment: Deployment, *, timeout: float | None = None) -> str | None:
    """Between points: flush the prefix cache; SGLang refuses while requests run, so retrying also drains.

    Returns None when flushed (or when the server died: the point's watchdog reports that), else why not — a
    warning for the next point, whose cache hits may then include the previous point's prefixes."""
    timeout = FLUSH_TIMEOUT_S if timeout is None else timeout
    ep = deployment.endpoint
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            r = requests.post(ep.url("/flush_cache"), headers=ep.headers(), timeout=10)
            if r.status_code == 200:
                return None
            last = f"HTTP {r.status_code}: {r.text.strip()[:200]}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        if deployment.poll() is not None:
            return None
        if time.monotonic() >= deadline:
            return (f"the prefix cache was not flushed before the point (gave up after {timeout:g} s; last answer "
                    f"from /flush_cache: {last}); cache hits may include earlier points' prefixes")
        time.sleep(0.2)
