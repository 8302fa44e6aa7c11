"""Controller side: test reports → records (results.jsonl as each test ends) and flat JUnit properties."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_sglang_tune.engine import RESULT_KEY
from pytest_sglang_tune.results import now_iso
from pytest_sglang_tune.state import ERROR_KEY, State, get_state


class ResultCollector:
    """Controller-side: turns test reports into records (results.jsonl as each test ends)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        st = get_state(self.config)
        records: list[dict[str, Any]] = [v for k, v in report.user_properties if k == RESULT_KEY]  # type: ignore[misc]
        if not records:
            return
        error: dict[str, Any] = next((v for k, v in reversed(report.user_properties) if k == ERROR_KEY), {})  # type: ignore[misc]
        # JUnit XML (and other readers of user_properties) get flat, redacted key metrics, not the whole record
        report.user_properties = [(k, v) for k, v in report.user_properties if k not in (RESULT_KEY, ERROR_KEY)]
        report.user_properties += junit_properties(records)
        pend = st.pending.setdefault(report.nodeid, {})
        pend["records"] = records
        if report.when == "setup":
            if report.skipped and error.get("status") == "infeasible":
                pend["status"], pend["reason"] = "infeasible", error.get("reason")
                pend["log_tail"] = error.get("log_tail", "")
            elif report.skipped:
                pend["status"], pend["reason"] = "skipped", _skip_reason(report)
            elif report.failed:
                pend["status"] = error.get("status", "error")
                pend["reason"] = error.get("reason") or _short(report)
                pend["log_tail"] = error.get("log_tail", "")
        elif report.when == "call":
            if report.passed:
                pend["status"] = "passed"
            elif report.skipped:
                pend["status"], pend["reason"] = "skipped", _skip_reason(report)
            else:
                pend["status"] = "failed"
                pend["reason"] = error.get("reason") or _short(report)
                pend["log_tail"] = error.get("log_tail", "")
        elif report.when == "teardown":
            done = st.pending.pop(report.nodeid)
            if report.failed and done.get("status") in (None, "passed"):
                done["status"], done["reason"] = "error", "teardown failed: " + _short(report)
            finish_pending(st, done)


JUNIT_METRICS = ("output_throughput", "output_throughput_per_gpu", "request_throughput", "goodput", "error_rate",
                 "ttft_ms.p50", "ttft_ms.p99", "itl_ms.p50", "itl_ms.p95", "tpot_ms.mean", "e2e_ms.p99")


def junit_properties(records: list[dict[str, Any]]) -> list[tuple[str, object]]:
    from pytest_sglang_tune.grammar import parse_metric
    from pytest_sglang_tune.redact import redact

    props: list[tuple[str, object]] = []
    for i, rec in enumerate(records):
        prefix = "sglang" if len(records) == 1 else f"sglang.{i}"
        load = rec.get("load") or {}
        props += [(f"{prefix}.config_id", rec.get("config_id")),
                  (f"{prefix}.workload", (rec.get("workload") or {}).get("name")),
                  (f"{prefix}.load", ",".join(f"{k}={v}" for k, v in load.items() if v is not None))]
        metrics = rec.get("metrics") or {}
        for name in JUNIT_METRICS if metrics else ():
            value = parse_metric(name).value(metrics)
            if value is not None:
                props.append((f"{prefix}.{name}", round(value, 4)))
        if rec.get("slo_pass") is not None:
            props.append((f"{prefix}.slo_pass", rec["slo_pass"]))
    return redact(props)  # type: ignore[no-any-return]


def finish_pending(st: State, done: dict[str, Any]) -> None:
    from pytest_sglang_tune.redact import redact
    from pytest_sglang_tune.results import ResultsLog

    for rec in done["records"]:
        rec = dict(rec)
        rec["status"] = done.get("status") or "error"
        rec["reason"] = done.get("reason")
        if done.get("log_tail"):
            rec["log_tail"] = done["log_tail"]
        rec["finished_at"] = now_iso()
        rec = redact(rec)
        st.records.append(rec)
        if st.log is None:
            st.run_dir.mkdir(parents=True, exist_ok=True)
            st.log = ResultsLog(st.run_dir / "results.jsonl")
        st.log.append(rec)


def _skip_reason(report: pytest.TestReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


def _short(report: pytest.TestReport) -> str:
    text = report.longreprtext.strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "Error:" in ln or ln.startswith("E "):
            return ln.removeprefix("E ").strip()[:500]
    return (lines[-1] if lines else "")[:500]
