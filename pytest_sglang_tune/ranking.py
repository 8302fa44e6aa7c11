"""Rank results per suite × workload × load level (pure).

The rule, for each group of results sharing (suite, workload name, load):

1. Only *measured* results are ranked: status ``passed``, or ``failed`` with a non-empty ``metrics``
   block (e.g. a strict-SLO failure). ``error``, ``skipped``, ``infeasible`` and ``excluded`` results — and
   ``failed`` ones without metrics — get no ranking entry; the reports list them separately with their reason.
2. Results that *meet the SLOs* come first: status ``passed`` and ``slo_pass`` not false (``None`` means the
   suite has no SLOs). Every other ranked result (SLO miss, or a failed test with metrics) follows.
3. Within each tier, the suite's objective orders them (``Objective.sort_key``: best first, a missing score
   last); ties are broken by ``config_id`` so the order is deterministic.

When a key (suite, workload, load, config_id) occurs more than once (a re-run appended to the same log), the
last record wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pytest_sglang_tune.grammar import DEFAULT_OBJECTIVE, Objective, parse_objective

RANKED_STATUSES = ("passed", "failed")
LoadKey = tuple[tuple[bool, float], tuple[bool, float]]
GroupKey = tuple[str, str, LoadKey]


def workload_name(result: Mapping[str, Any]) -> str:
    """The workload's name, whether the record holds ``{"name": ..., "content_hash": ...}`` or a bare name."""
    w = result.get("workload")
    if isinstance(w, Mapping):
        w = w.get("name")
    return "" if w is None else str(w)


def load_key(load: Mapping[str, Any] | None) -> LoadKey:
    """Numeric sort key of a load level: by concurrency, then request rate (absent values first)."""
    load = load or {}
    c, r = load.get("concurrency"), load.get("request_rate")
    return ((c is not None, float(c or 0)), (r is not None, float(r or 0)))


def load_label(load: Mapping[str, Any] | None) -> str:
    """``c64``, ``r2.5``, ``r4-c16``, a trace replay ``ts0.5`` (as ``Load.label``); ``-`` when the load is unknown."""
    load = load or {}
    parts = []
    if load.get("time_scale") is not None:  # a trace replay: its request_rate is the replay's mean rate
        parts.append(f"ts{_num(float(load['time_scale']))}")
    elif load.get("request_rate") is not None:
        parts.append(f"r{_num(float(load['request_rate']))}")
    if load.get("concurrency") is not None:
        parts.append(f"c{int(load['concurrency'])}")
    return "-".join(parts) or "-"


def _num(x: float) -> str:
    return str(int(x)) if x.is_integer() else str(x)


def result_key(result: Mapping[str, Any]) -> tuple[str, str, LoadKey, str]:
    """The identity of a result: (suite, workload name, load, config_id)."""
    return (str(result.get("suite", "")), workload_name(result), load_key(result.get("load")),
            str(result.get("config_id", "")))


def is_ranked(result: Mapping[str, Any]) -> bool:
    """Whether a result takes part in the ranking (see the module docstring)."""
    status = result.get("status")
    return status == "passed" or (status == "failed" and bool(result.get("metrics")))


def meets_slos(result: Mapping[str, Any]) -> bool:
    return result.get("status") == "passed" and result.get("slo_pass") is not False


def dedupe(results: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One result per key, the last one seen, in the order the keys first appeared."""
    by_key: dict[tuple[str, str, LoadKey, str], Mapping[str, Any]] = {}
    for r in results:
        k = result_key(r)
        by_key[k] = r
    return list(by_key.values())


def objective_for(suite: str, objectives: Mapping[str, Objective], result: Mapping[str, Any]) -> Objective:
    """The suite's objective; else the record's own ``objective``; else the default objective."""
    if suite in objectives:
        return objectives[suite]
    own = result.get("objective")
    return parse_objective(own if isinstance(own, str) and own else DEFAULT_OBJECTIVE)


def rank(results: list[dict[str, Any]], objectives: Mapping[str, Objective]) -> list[dict[str, Any]]:
    """Ranking entries ``{suite, workload, load, rank, config_id, score, slo_pass}``, best first per group.

    Groups come in the order their suite and workload first appear in ``results``, load levels ascending.
    ``slo_pass`` in an entry says whether the result counts as meeting the SLOs (tier 1 of the rule above).
    """
    groups: dict[GroupKey, list[Mapping[str, Any]]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for r in dedupe(results):
        if not is_ranked(r):
            continue
        suite, wl, lk, _ = result_key(r)
        first_seen.setdefault((suite, wl), len(first_seen))
        groups.setdefault((suite, wl, lk), []).append(r)

    out: list[dict[str, Any]] = []
    for (suite, wl, lk) in sorted(groups, key=lambda g: (first_seen[(g[0], g[1])], g[2])):
        members = groups[(suite, wl, lk)]
        scored = []
        for r in members:
            obj = objective_for(suite, objectives, r)
            score = obj.score(r.get("metrics") or {})
            tier = 0 if meets_slos(r) else 1
            scored.append((tier, obj.sort_key(score), str(r.get("config_id", "")), score, r))
        scored.sort(key=lambda t: (t[0], t[1], t[2]))
        for i, (tier, _, config_id, score, r) in enumerate(scored, start=1):
            load = r.get("load") or {}
            out.append({
                "suite": suite,
                "workload": wl,
                "load": {"concurrency": load.get("concurrency"), "request_rate": load.get("request_rate"),
                         **({"time_scale": load["time_scale"]} if load.get("time_scale") is not None else {})},
                "rank": i,
                "config_id": config_id,
                "score": score,
                "slo_pass": tier == 0,
            })
    return out
