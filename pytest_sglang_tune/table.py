"""Results as a pandas DataFrame (``load_results``) and as a printed table (``sglang-tune table``).

One row per result: its identity (suite, workload, load level, config), status, SLO verdict and rank, then one
column per SGLang flag (``--schedule-policy``) and one per metric, flattened with the metric grammar's names
(``ttft_ms.p99``, ``output_throughput``), so ``df["ttft_ms.p99"]`` reads as an SLO does. pandas is imported here
only, when a table is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_sglang_tune.report.store import REPORT_JSON, RESULTS_JSONL, ReportError, ResultsLog, load_report

if TYPE_CHECKING:
    import pandas as pd

IDENTITY = ("suite", "workload", "load", "concurrency", "request_rate", "time_scale", "display_id", "config_id",
            "status", "slo_pass", "rank", "score", "reason", "backend", "sglang_version", "model", "image_digest")
SHORT = ("suite", "workload", "load", "display_id", "status", "slo_pass", "rank")
FORMATS = ("text", "csv", "markdown")


def read_results(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The results (and the ranking, when there is one) of a report.json, a run directory or a results.jsonl."""
    path = Path(path)
    if path.is_dir():
        for name in (REPORT_JSON, RESULTS_JSONL):
            if (path / name).is_file():
                return read_results(path / name)
        raise ReportError(f"{path}: neither {REPORT_JSON} nor {RESULTS_JSONL} there (give a report.json, a run "
                          "directory such as reports/<run-id>, or a results.jsonl)")
    if not path.is_file():
        raise ReportError(f"{path}: no such file (give a report.json, a run directory or a results.jsonl)")
    if path.suffix == ".jsonl":
        try:
            return [dict(r) for r in ResultsLog.read(path)], []
        except ValueError as exc:
            raise ReportError(f"{path}: {exc}") from None
    report = load_report(path)
    return list(report.get("results") or []), list(report.get("ranking") or [])


def _load_fields(load: Mapping[str, Any] | None) -> dict[str, Any]:
    from pytest_sglang_tune.loadgen.workload import Load

    load = dict(load or {})
    fields = {k: load.get(k) for k in ("concurrency", "request_rate", "time_scale")}
    try:
        label = Load(**fields).label()
    except (TypeError, ValueError):
        label = ",".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    return {"load": label, **fields}


def _slot(suite: Any, workload: Any, load: Mapping[str, Any] | None, config_id: Any) -> tuple[Any, ...]:
    return (suite, workload, tuple(sorted((k, v) for k, v in (load or {}).items() if v is not None)), config_id)


def results_frame(results: Sequence[Mapping[str, Any]], ranking: Sequence[Mapping[str, Any]] = ()) -> pd.DataFrame:
    """One row per result (see the module docstring); ``rank``/``score`` from ``ranking`` when given."""
    import pandas as pd

    ranks = {_slot(e.get("suite"), e.get("workload"), e.get("load"), e.get("config_id")): e for e in ranking}
    rows = []
    for r in results:
        workload = r.get("workload") or {}
        name = workload.get("name") if isinstance(workload, Mapping) else workload
        entry = ranks.get(_slot(r.get("suite"), name, r.get("load"), r.get("config_id"))) or {}
        row: dict[str, Any] = {"suite": r.get("suite"), "workload": name, **_load_fields(r.get("load")),
                               "display_id": r.get("display_id"), "config_id": r.get("config_id"),
                               "status": r.get("status"), "slo_pass": r.get("slo_pass"), "rank": entry.get("rank"),
                               "score": entry.get("score"), "reason": r.get("reason"), "backend": r.get("backend"),
                               "sglang_version": r.get("sglang_version"), "model": r.get("model"),
                               "image_digest": r.get("image_digest")}
        for flag, value in (r.get("server_args") or {}).items():
            row["--" + str(flag).lstrip("-")] = value
        rows.append((row, r.get("metrics") or {}))
    base = pd.DataFrame([row for row, _ in rows], columns=None if rows else list(IDENTITY))
    metrics = pd.json_normalize([m for _, m in rows], sep=".") if rows else pd.DataFrame()
    frame = pd.concat([base, metrics.set_axis(base.index)], axis=1) if len(metrics.columns) else base
    if "rank" in frame:
        frame["rank"] = frame["rank"].astype("Int64")
    return frame


def load_results(path: str | Path) -> pd.DataFrame:
    """A DataFrame of the results in ``path``: a report.json, a run directory (``reports/<run-id>``) or a
    results.jsonl — one row per result, flags and flattened metrics as columns (``ttft_ms.p99``)."""
    return results_frame(*read_results(Path(path)))


def select(frame: pd.DataFrame, metrics: Sequence[str] = (), *, short: bool = True) -> pd.DataFrame:
    """The columns a reader wants: identity, the flags that vary, then ``metrics`` (in that order). ``short``
    keeps the compact identity (``SHORT``); ``metrics`` empty with ``short=False`` keeps every column."""
    from pytest_sglang_tune.diff import DEFAULT_METRICS

    if not short and not metrics:
        return frame
    ident = [c for c in (SHORT if short else IDENTITY) if c in frame]
    flags = [c for c in frame.columns if c.startswith("--") and frame[c].astype(str).nunique(dropna=False) > 1]
    missing = [m for m in metrics if m not in frame]
    if missing:
        known = sorted(c for c in frame.columns if c not in IDENTITY and not c.startswith("--"))
        raise ValueError(f"no metric {', '.join(map(repr, missing))} in these results (metrics there: "
                         f"{', '.join(known) or 'none'})")
    chosen = list(metrics) or [m for m in DEFAULT_METRICS if m in frame]
    order = [c for c in ("suite", "workload", "request_rate", "concurrency", "time_scale", "rank") if c in frame]
    return frame.sort_values(order, na_position="last", kind="stable")[ident + flags + chosen]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(getattr(value, "item", lambda: value)()) if not isinstance(value, str) else value


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (``tabulate``, which pandas' own ``to_markdown`` needs, is not a
    dependency)."""
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    numeric = [frame[c].dtype.kind in "iuf" for c in frame.columns]
    lines = [row([str(c) for c in frame.columns]), row(["---:" if n else "---" for n in numeric])]
    lines += [row([_cell(v) for v in values]) for values in frame.astype(object).itertuples(index=False)]
    return "\n".join(lines) + "\n"


def render(frame: pd.DataFrame, fmt: str) -> str:
    """``frame`` as ``text`` (aligned columns), ``csv`` or ``markdown``."""
    if fmt == "csv":
        return str(frame.to_csv(index=False))
    if fmt == "markdown":
        return to_markdown(frame)
    if fmt == "text":
        if frame.empty:
            return "no results\n"
        return str(frame.astype(object).map(_cell).to_string(index=False)) + "\n"
    raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
