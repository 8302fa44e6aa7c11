"""Searching a suite's grid within a GPU budget: ``--sglang-search=grid|random|tpe|halving|predicted``.

:mod:`.budget` parses ``--sglang-budget``; :mod:`.strategies` decides the next config from what is known (pure,
shared by the pytest items and benchmarks/search_efficiency.py); :mod:`.ledger` keeps the trials of a run in one
Optuna study (journal file storage: safe across xdist workers); :mod:`.items` makes the trial items.
"""

SEARCH_DIR = "search"  # <run dir>/search/: each suite's plan, ledger journal and stop reason
