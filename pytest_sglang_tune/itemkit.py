"""What every kind of tuning item shares: how our errors are shown, how a backend's explanation of a failure is
kept for the session owner, and which SLO misses end a config's load ladder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.errors import InfeasibleConfig, TuneError
from pytest_sglang_tune.grammar import SLO
from pytest_sglang_tune.results import Result
from pytest_sglang_tune.stash import ERROR

WORSENING_METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "error_rate")


def short_failure(excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    """``ErrorClass: message`` for the errors of this tool (they explain themselves), else None."""
    if isinstance(excinfo.value, TuneError):
        return f"{type(excinfo.value).__name__}: {excinfo.value}"
    return None


def note_error(node: pytest.Item, exc: BaseException) -> None:
    """Keep what our own error says (status, reason, log tail) for the session owner's record of the point."""
    from pytest_sglang_tune.engine import log_tail_of

    if isinstance(exc, TuneError):
        kind = "infeasible" if isinstance(exc, InfeasibleConfig) else "error"
        msg = getattr(exc, "bare_message", str(exc))
        node.stash[ERROR] = {"status": kind, "reason": f"{type(exc).__name__}: {msg}", "log_tail": log_tail_of(exc)}


def worsens_with_load(slo: SLO) -> bool:
    """An upper bound on a latency or the error rate: once missed at a load, higher loads miss it too."""
    return slo.metric.name in WORSENING_METRICS and slo.op in ("<", "<=")


def missed_worsening(result: Result, slos: tuple[SLO, ...]) -> list[str]:
    """The SLOs ``result`` missed that only get worse with load (they end the config's ladder)."""
    return [str(s) for s in slos if worsens_with_load(s) and result.slo_results.get(str(s)) is False]


class TuneItem(pytest.Item):
    """Base of our items: our own errors are shown as one line, and a location names the suite."""

    suite: Any

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        return short_failure(excinfo) or super().repr_failure(excinfo)

    def _repr_failure_py(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        # setup/teardown failures are rendered here (not by repr_failure): our errors already say it all
        if style != "long" and (text := short_failure(excinfo)):
            return text
        return super()._repr_failure_py(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.suite.name}::{self.name}"
