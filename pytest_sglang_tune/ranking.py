"""Rank results per suite × workload × load level (pure).

The rule, for each group of results sharing ``Point.group`` (suite, workload, load):

1. Only *measured* results are ranked (``Result.measured``): status ``passed``, or ``failed`` with metrics (e.g.
   a strict-SLO failure). ``error``, ``skipped``, ``infeasible``, ``excluded`` and ``not_measured`` results get no
   ranking entry; the reports list them separately with their reason.
2. Results that *meet the SLOs* come first (status ``passed`` and ``slo_pass`` not false); every other ranked
   result (SLO miss, or a failed test with metrics) follows.
3. Within each tier, the suite's objective orders them (best first, a missing score last; then ``config_id``,
   so the order is deterministic).
4. **Ties** (:func:`pytest_sglang_tune.stats.tied`): walking down a tier, a result tied with the current leader
   (the best result not tied with anything above it) shares the leader's rank and is marked ``tied``; the
   leader is marked ``tied`` too. So ranks read 1, 1, 1, 4: the order among equal ranks is not a claim.

When a slot occurs more than once (a re-run appended to the same log), the last result wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pytest_sglang_tune.grammar import DEFAULT_OBJECTIVE, Objective, parse_objective
from pytest_sglang_tune.results import LoadKey, Result, as_result, dedupe, load_key, load_label
from pytest_sglang_tune.stats import DEFAULT_TIE_MARGIN, Interval, as_interval, tied

__all__ = ["dedupe", "is_ranked", "load_key", "load_label", "objective_for", "rank", "result_key",
           "score_of", "workload_name"]

GroupKey = tuple[str, str, LoadKey]


def workload_name(result: Mapping[str, Any]) -> str:
    """The workload's name, whether a result dict holds ``{"name": ..., "content_hash": ...}`` or a bare name."""
    w = result.get("workload")
    if isinstance(w, Mapping):
        w = w.get("name")
    return "" if w is None else str(w)


def result_key(result: Mapping[str, Any]) -> tuple[str, str, LoadKey, str]:
    """The slot of a result dict (``Point.slot``): (suite, workload name, load, config_id)."""
    return Result.from_dict(result).point.slot


def is_ranked(result: Mapping[str, Any] | Result) -> bool:
    """Whether a result takes part in the ranking (see the module docstring)."""
    return as_result(result).measured


def objective_for(suite: str, objectives: Mapping[str, Objective], result: Result) -> Objective:
    """The suite's objective; else the result's own ``objective``; else the default objective."""
    if suite in objectives:
        return objectives[suite]
    own = result.objective
    return parse_objective(own if isinstance(own, str) and own else DEFAULT_OBJECTIVE)


def score_of(result: Result, objective: Objective) -> tuple[float | None, Interval | None]:
    """The result's score under ``objective`` and its 95 % interval when the result has one."""
    return objective.score(dict(result.metrics or {})), as_interval(result.confidence.get(str(objective.metric)))


def rank(results: Iterable[Result | Mapping[str, Any]], objectives: Mapping[str, Objective], *,
         margin: float = DEFAULT_TIE_MARGIN) -> list[dict[str, Any]]:
    """Ranking entries ``{suite, workload, load, rank, config_id, score, interval, slo_pass, tied}``, best first
    per group. Groups come in the order their suite and workload first appear, load levels ascending."""
    groups: dict[GroupKey, list[Result]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for r in dedupe([as_result(x) for x in results]):
        if not r.measured:
            continue
        first_seen.setdefault((r.point.suite, r.point.workload), len(first_seen))
        groups.setdefault(r.point.group, []).append(r)

    out: list[dict[str, Any]] = []
    for key in sorted(groups, key=lambda g: (first_seen[(g[0], g[1])], g[2])):
        scored = []
        for r in groups[key]:
            obj = objective_for(r.point.suite, objectives, r)
            score, interval = score_of(r, obj)
            scored.append((0 if r.meets_slos else 1, obj.sort_key(score), r.point.config_id, score, interval, r))
        scored.sort(key=lambda t: (t[0], t[1], t[2]))
        entries: list[dict[str, Any]] = []
        leader: tuple[int, float | None, Interval | None, dict[str, Any]] | None = None
        for position, (tier, _, config_id, score, interval, r) in enumerate(scored, start=1):
            entry = {"suite": r.point.suite, "workload": r.point.workload, "load": r.point.load, "rank": position,
                     "config_id": config_id, "score": score,
                     "interval": list(interval) if interval is not None else None,
                     "slo_pass": tier == 0, "tied": False}
            if leader is not None and leader[0] == tier and tied(leader[1], leader[2], score, interval,
                                                                 margin=margin):
                entry["rank"] = leader[3]["rank"]
                entry["tied"] = leader[3]["tied"] = True
            else:
                leader = (tier, score, interval, entry)
            entries.append(entry)
        out.extend(entries)
    return out


def rank_label(entry: Mapping[str, Any]) -> str:
    """``3`` or ``1=`` (tied): how every view prints a rank."""
    return f"{entry.get('rank')}{'=' if entry.get('tied') else ''}"


def best_entries(ranking: Iterable[Mapping[str, Any]]) -> dict[GroupKey, list[Mapping[str, Any]]]:
    """Per (suite, workload, load): the entries of rank 1 (several when tied), best first."""
    best: dict[GroupKey, list[Mapping[str, Any]]] = {}
    for e in ranking:
        if e.get("rank") == 1:
            best.setdefault((str(e.get("suite")), str(e.get("workload")), load_key(e.get("load"))), []).append(e)
    return best


def group_label(key: GroupKey, load: Mapping[str, Any] | None = None) -> str:
    return f"{key[0]}/{key[1]}@{load_label(load)}"
