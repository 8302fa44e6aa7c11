"""What a search adds to a run's end (called by the session owner on the controller): the trials an earlier run
measured when ``--sglang-resume`` continues its search, and the configs failed trials measured, for ``--lf``."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_sglang_tune.report.store import RESULTS_JSONL, ResultsLog
from pytest_sglang_tune.results import Result


def add_resumed_trials(session: Any) -> None:
    """``--sglang-resume`` with a search: the earlier run's trials of each continued search are this run's
    too (the continued study counts them and does not measure them again)."""
    from pytest_sglang_tune.search import SEARCH_DIR

    if not session.options.resume or session.options.search == "grid":
        return
    suites = {p.name.removesuffix(".plan.json") for p in (session.run_dir / SEARCH_DIR).glob("*.plan.json")}
    old = session.resume_dir()
    if not suites or old is None or not (old / RESULTS_JSONL).is_file():
        return
    have = {(r.point.slot, r.fidelity or "full") for r in session.results}
    for rec in ResultsLog.read(old / RESULTS_JSONL):
        r = Result.from_dict(rec)
        if r.trial and r.point.suite in suites and (r.point.slot, r.fidelity or "full") not in have:
            session.keep(r.with_(resumed_from=str(old / RESULTS_JSONL)))


def record_trial_configs(session: Any, config: pytest.Config) -> None:
    """Remember, in pytest's cache, which config each failed search trial measured, so that ``--lf`` re-runs
    those configs (a trial's number alone would draw whatever the strategy proposes next)."""
    if getattr(config, "cache", None) is None or not session.trial_outcomes:  # -p no:cacheprovider
        return
    from pytest_sglang_tune.search.items import LAST_TRIALS

    recorded = config.cache.get(LAST_TRIALS, {})
    recorded = dict(recorded) if isinstance(recorded, dict) else {}
    for nodeid, (config_id, failed) in session.trial_outcomes.items():
        if failed and config_id:
            recorded[nodeid] = config_id
        else:
            recorded.pop(nodeid, None)
    config.cache.set(LAST_TRIALS, recorded)
