"""Reading and writing reports: run ids, machine info, results.jsonl, report.json/.html.

A run writes ``reports/<run-id>/results.jsonl`` as it goes (one line per finished test, fsynced, so a crash
keeps every finished result) and, at the end, ``report.json`` and ``report.html`` (each written atomically).
Everything written is redacted first (:mod:`pytest_sglang_tune.redact`). The schema: docs/report-schema.md.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import secrets
import socket
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_sglang_tune import TOOL_NAME, __version__
from pytest_sglang_tune.errors import TuneError
from pytest_sglang_tune.grammar import Objective, parse_objective
from pytest_sglang_tune.redact import redact
from pytest_sglang_tune.report.json import dumps, dumps_line
from pytest_sglang_tune.results import (
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    STATUSES,
    Result,
    as_result,
    dedupe,
)

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
RESULTS_JSONL = "results.jsonl"

RUN_DEFAULTS: dict[str, Any] = {
    "id": None, "started_at": None, "finished_at": None, "backend": None, "gpus": None, "argv": [],
    "machine": {"host": None, "cpu": None, "gpus": None},  # gpus: None = not known (see diff.machine_gpus)
}
SUITE_DEFAULTS: dict[str, Any] = {"objective": None, "slos": [], "sglang_version": None, "excluded": []}


class ReportError(TuneError):
    """A report or results file cannot be read or built (names the file, the field and what is expected)."""


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds (``2026-11-27T13:05:01+00:00``), for ``*_at`` fields."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYMMDD-HHMMSS-xxxx``: UTC time (aware datetimes are converted; naive ones taken as they are) and
    four random hex digits, so ids sort by start time and two runs in the same second still differ."""
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is not None:
        now = now.astimezone(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """``{host, platform, python, cpu: {model, count}, gpus: [names], gpu_details: [{index, uuid, name, ...}],
    driver_version, cuda_version, gpu_source}``; GPUs from NVML or nvidia-smi (``backends.gpus``). Comparisons
    use the names and their count only (``diff.machine_gpus``), never UUIDs or versions."""
    from pytest_sglang_tune.backends.gpus import gpu_machine_info

    gpu = gpu_machine_info()
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": {"model": _cpu_model(), "count": os.cpu_count()},
        "gpus": [str(d.get("name")) for d in gpu["gpus"]],
        "gpu_details": gpu["gpus"],
        "driver_version": gpu["driver_version"],
        "cuda_version": gpu["cuda_version"],
        "gpu_source": gpu["gpu_source"],
    }


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the whole new one, never a part.

    The text goes to a temporary file in the same directory, is fsynced, then ``os.replace``d over ``path``;
    on any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


class Records(list[dict[str, Any]]):
    """Records read from a results.jsonl; ``skipped`` counts lines that were not valid JSON (a torn write)."""

    skipped: int = 0


class ResultsLog:
    """``reports/<run-id>/results.jsonl``: one redacted JSON line per finished test, flushed and fsynced."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, record: Mapping[str, Any]) -> None:
        """Redact ``record`` and append it as one line. A torn last line left by a crash is closed first."""
        line = dumps_line(redact(record))
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as f:
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
                f.write(line.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    @staticmethod
    def read(path: Path) -> Records:
        """All records of a results.jsonl (empty when the file does not exist yet).

        Lines that are not a JSON object (the last line of a run that died mid-write) are skipped and counted
        in ``.skipped``.
        """
        out = Records()
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return out
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                out.skipped += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                out.skipped += 1
        return out


def _with_defaults(value: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(defaults))
    out.update(value or {})
    return out


def _checked(i: int, value: Result | Mapping[str, Any]) -> tuple[Result, str | None]:
    """The result, typed; an invalid one becomes an ``error`` result (with the problem as its reason and as the
    returned warning) rather than costing the whole report."""
    problems = []
    if isinstance(value, Mapping):
        w = value.get("workload")
        if w is not None and not isinstance(w, str) and not (isinstance(w, Mapping) and "name" in w):
            problems.append(f"field 'workload' must be {{name, content_hash}}, got {w!r}")
            value = {**value, "workload": None}
    r = as_result(value)
    point = r.point
    for key in ("suite", "config_id"):
        if not getattr(point, key):
            problems.append(f"field {key!r} is missing or empty")
            point = replace(point, suite=point.suite or "?") if key == "suite" else \
                replace(point, config_id=point.config_id or "?")
    if r.status not in STATUSES:
        problems.append(f"status {r.status!r} is not valid (allowed: {', '.join(STATUSES)})")
    if not problems:
        return r, None
    problem = f"result #{i} (test_id {r.test_id!r}) is invalid: {'; '.join(problems)}"
    reason = problem + (f" (reason given: {r.reason})" if r.reason else "")
    return r.with_(point=point, status="error", reason=reason), problem


def suite_objectives(suites: Mapping[str, Mapping[str, Any]]) -> dict[str, Objective]:
    """``{suite: Objective}`` for the suites that name an objective."""
    return {name: parse_objective(info["objective"]) for name, info in suites.items()
            if info and info.get("objective")}


def build_report(*, run: Mapping[str, Any], results: Iterable[Result | Mapping[str, Any]], suites: Mapping[str, Any],
                 ranking: list[dict[str, Any]] | None = None, warnings: Iterable[str] = (),
                 tie_margin: float | None = None) -> dict[str, Any]:
    """The report dict (schema 2), redacted; ``ranking`` is computed by :func:`ranking.rank` if None.

    Results are typed first (dicts of any readable schema are accepted) and deduplicated on their slot: a later
    result replaces an earlier one. A result that breaks the schema (unknown status, no suite or config_id) is
    kept as an ``error`` result and named in ``warnings``.
    """
    from pytest_sglang_tune.ranking import rank

    warns = [str(w) for w in warnings]
    typed = []
    for i, value in enumerate(results):
        r, problem = _checked(i, value)
        typed.append(r)
        if problem:
            warns.append(problem)
    unique = dedupe(typed)
    if len(unique) < len(typed):
        warns.append(f"{len(typed) - len(unique)} result(s) were measured again in this run; "
                     "the report keeps the last measurement of each")
    suites_out = {str(name): _with_defaults(info, SUITE_DEFAULTS) for name, info in suites.items()}
    if ranking is None:
        ranking = rank(unique, suite_objectives(suites_out), **({} if tie_margin is None else
                                                                 {"margin": tie_margin}))
    run_out = _with_defaults(run, RUN_DEFAULTS)
    run_out["machine"] = _with_defaults(run_out.get("machine"), RUN_DEFAULTS["machine"])
    if tie_margin is not None:
        run_out.setdefault("tie_margin", tie_margin)
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": __version__},
        "run": run_out,
        "suites": suites_out,
        "results": [r.to_dict() for r in unique],
        "ranking": list(ranking),
        "warnings": warns,
    }
    redacted: dict[str, Any] = redact(report)
    return redacted


def write_report(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``report.json`` then ``report.html`` into ``out_dir``, each atomically; returns their paths."""
    from pytest_sglang_tune.report.html import render_html

    out_dir = Path(out_dir)
    clean: dict[str, Any] = redact(report)
    paths = {"json": out_dir / REPORT_JSON, "html": out_dir / REPORT_HTML}
    atomic_write_text(paths["json"], dumps(clean))
    atomic_write_text(paths["html"], render_html(clean))
    return paths


def load_report(path: Path) -> dict[str, Any]:
    """Read a report.json and check it is one this version understands (schema_version 1 or 2)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such report file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read report: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: a report.json holds a JSON object, found {type(data).__name__}")
    if "schema_version" not in data:
        raise ReportError(f"{path}: no 'schema_version' field; this is not a {TOOL_NAME} report.json "
                          f"(expected schema_version {SCHEMA_VERSION})")
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ReportError(f"{path}: schema_version {version!r} is not valid; "
                          f"expected the integer {SCHEMA_VERSION}")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ReportError(f"{path}: schema_version {version} was written by a newer {TOOL_NAME}; "
                          f"this version ({__version__}) reads schema_version "
                          f"{' and '.join(map(str, READABLE_SCHEMA_VERSIONS))}. "
                          f"Upgrade {TOOL_NAME} to read it.")
    for key, kind in (("run", dict), ("results", list), ("ranking", list)):
        if not isinstance(data.get(key), kind):
            expected = "object" if kind is dict else "array"
            raise ReportError(f"{path}: field {key!r} must be a JSON {expected}, "
                              f"found {type(data.get(key)).__name__}")
    for i, r in enumerate(data["results"]):
        if not isinstance(r, dict) or r.get("status") not in STATUSES:
            status = r.get("status") if isinstance(r, dict) else r
            raise ReportError(f"{path}: results[{i}].status {status!r} is not valid; "
                              f"allowed: {', '.join(STATUSES)}")
    if version < SCHEMA_VERSION:  # the reader for older files: their results in today's shape
        data["results"] = [Result.from_dict(r).to_dict() for r in data["results"]]
        data["upgraded_from_schema_version"] = version
    return data
