"""The parts of a suite that searches read: ``search: {target: workload@load}`` and a workload's load search
``load: {search: max_within_slo, request_rate: [low, high]}``. ``c`` is the suite parser's context (errors that
name file, line and field)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_sglang_tune.loadgen.workload import MaxLoadSearch, Workload


def search_target(c: Any, raw: Any, workloads: Sequence[Workload]) -> tuple[str, str] | None:
    """``search: {target: chat@c64}``: the point a search scores configs at (default: the first workload's last
    load level; ``max`` for a workload whose load is searched)."""
    section = c.mapping(raw, "search", allowed=("target",))
    text = section.get("target")
    labels = {w.name: ["max"] if w.max_load is not None else [ld.label() for ld in w.loads] for w in workloads}
    if text is None:
        return (workloads[0].name, labels[workloads[0].name][-1]) if workloads else None
    allowed = ", ".join(f"{w}@{lb}" for w, lbs in labels.items() for lb in lbs)
    name, _, label = str(text).partition("@")
    if name not in labels or label not in labels[name]:
        raise c.err(f"search.target {text!r} is not a point of this suite; choose one of: {allowed}",
                    "search", "target")
    return (name, label)


def max_load_search(c: Any, raw: Any, i: int) -> MaxLoadSearch:
    """``load: {search: max_within_slo, request_rate: [1, 64], tolerance: 0.1}`` (or ``concurrency: [1, 256]``)."""
    m = c.mapping(raw, "workloads", i, "load", allowed=("search", "concurrency", "request_rate", "tolerance"))
    if m.get("search") != "max_within_slo":
        raise c.err(f"load.search {m.get('search')!r} is not valid; the one load search is max_within_slo",
                    "workloads", i, "load", "search")
    kinds = [k for k in ("concurrency", "request_rate") if k in m]
    if len(kinds) != 1:
        raise c.err("load needs the bounds of exactly one of concurrency or request_rate, e.g. request_rate: [1, 64]",
                    "workloads", i, "load")
    kind = kinds[0]
    bounds = m[kind]
    numbers = isinstance(bounds, list) and len(bounds) == 2 and all(
        isinstance(b, int | float) and not isinstance(b, bool) and b > 0 for b in bounds)
    if not (numbers and bounds[0] < bounds[1]):
        raise c.err(f"load.{kind} {bounds!r} must be [low, high] with 0 < low < high", "workloads", i, "load", kind)
    if kind == "concurrency" and not all(isinstance(b, int) for b in bounds):
        raise c.err(f"load.concurrency {bounds!r} must be whole numbers", "workloads", i, "load", kind)
    tol = m.get("tolerance", 0.1)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        raise c.err(f"load.tolerance {tol!r} must be a share between 0 and 1 (0.1: stop within 10 %)",
                    "workloads", i, "load", "tolerance")
    return MaxLoadSearch(kind, float(bounds[0]), float(bounds[1]), float(tol))
