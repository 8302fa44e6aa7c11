"""The plugin's keys into pytest's stashes: the session owner (``config.stash``), and each test node's results
and explained error (``item.stash``). A module of its own so that items and hooks reach the session owner
without importing it (the session imports them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_sglang_tune.results import Result

if TYPE_CHECKING:
    from pytest_sglang_tune.session import TuneSession

SESSION = pytest.StashKey["TuneSession"]()
RESULTS = pytest.StashKey[list[Result]]()   # the results a test node measured (a suite item: one)
ERROR = pytest.StashKey[dict[str, Any]]()   # what our own error said: status, reason, log tail
# a user property: the config a search trial measured (JUnit shows it; ``--lf`` re-runs it)
TRIAL_CONFIG_KEY = "sglang.trial.config_id"


def get_session(config: pytest.Config) -> TuneSession:
    """The session owner of this pytest process (created in ``pytest_configure``)."""
    return config.stash[SESSION]
