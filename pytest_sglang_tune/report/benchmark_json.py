"""Our results in pytest-benchmark's JSON format, so ``pytest-benchmark compare`` and benchmark trackers read them.

Each measured point is one benchmark: ``stats`` are computed (with pytest-benchmark's own ``Stats``) from the
point's per-request end-to-end latencies in seconds; every other metric goes into ``extra_info``.
``--sglang-benchmark-json PATH`` writes one file; ``--sglang-benchmark-autosave`` saves into
``.benchmarks/<machine>/NNNN_<name>.json`` through pytest-benchmark's own ``FileStorage``, as it does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_sglang_tune.ranking import load_label, workload_name

LOG = logging.getLogger("pytest_sglang_tune.benchmark_json")


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, int | float | str | bool) or value is None:
        out[prefix] = value


def to_pytest_benchmark(report: Mapping[str, Any]) -> dict[str, Any]:
    from pytest_benchmark import __version__ as pb_version
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
    from pytest_benchmark.stats import Stats
    from pytest_benchmark.utils import get_commit_info

    benchmarks = []
    for r in report.get("results") or []:
        data = [float(x) for x in r.get("e2e_s") or [] if x is not None]
        if r.get("status") not in ("passed", "failed") or not data:
            continue
        stats = Stats()
        for x in data:
            stats.update(x)
        stats_dict = stats.as_dict()
        stats_dict["data"] = data
        stats_dict["iterations"] = 1
        extra: dict[str, Any] = {"config_id": r.get("config_id"), "status": r.get("status"),
                                 "slo_pass": r.get("slo_pass"), "suite": r.get("suite"),
                                 "workload": workload_name(r), "load": load_label(r.get("load"))}
        _flat("", r.get("metrics") or {}, extra)
        for k, v in (r.get("server_args") or {}).items():
            extra[f"server_args.{k}"] = v
        name = str(r.get("display_id") or r.get("test_id"))
        benchmarks.append({
            "group": f"{r.get('suite')}/{workload_name(r)}@{load_label(r.get('load'))}",
            "name": name,
            "fullname": str(r.get("test_id") or name),
            "params": {"config_id": r.get("config_id"), "load": load_label(r.get("load"))},
            "param": str(r.get("config_id")),
            "extra_info": extra,
            "options": {"timer": "perf_counter", "disable_gc": False, "min_rounds": len(data),
                        "max_time": None, "min_time": None, "warmup": False},
            "stats": stats_dict,
        })
    return {
        "machine_info": pytest_benchmark_generate_machine_info(),
        "commit_info": get_commit_info(),
        "benchmarks": benchmarks,
        "datetime": datetime.now(UTC).isoformat(),
        "version": pb_version,
    }


def write_json(report: Mapping[str, Any], path: Path) -> Path:
    from pytest_sglang_tune.report.json import dumps
    from pytest_sglang_tune.report.store import atomic_write_text

    atomic_write_text(Path(path), dumps(to_pytest_benchmark(report)))
    return Path(path)


def autosave(report: Mapping[str, Any], root: Path = Path(".benchmarks")) -> Path:
    """Save as pytest-benchmark's --benchmark-autosave does: ``<root>/<machine>/NNNN_<tag>.json``."""
    from pytest_benchmark.storage.file import FileStorage
    from pytest_benchmark.utils import get_machine_id, get_tag

    storage = FileStorage(root, logger=LOG, default_machine_id=get_machine_id())
    before = set(storage.query("[0-9][0-9][0-9][0-9]_*"))
    storage.save(to_pytest_benchmark(report), get_tag())
    (path,) = set(storage.query("[0-9][0-9][0-9][0-9]_*")) - before
    return Path(path)
