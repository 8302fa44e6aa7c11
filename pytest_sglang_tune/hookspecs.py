"""Hooks of pytest-sglang-tune. Implement them in a ``conftest.py`` or a plugin."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec(firstresult=True)
def pytest_sglang_tune_make_backend(config: pytest.Config, name: str, gpus: int | None, context: Any) -> Any:
    """Return the backend for ``--backend=name`` (first non-None result wins; the built-in registry runs last).

    A backend subclasses ``pytest_sglang_tune.backends.base.Backend`` (or just has its four required members:
    ``name``, ``capacity``, ``start``, ``stop``). ``context`` is a ``BackendContext``: the parsed options, the run
    id, the log directory, the xdist worker id and a progress callback. Any name a conftest returns a backend
    for is a valid ``--backend``.

    Example ``conftest.py``::

        def pytest_sglang_tune_make_backend(config, name, gpus, context):
            if name == "mycloud":
                from mycloud_backend import MyCloudBackend
                return MyCloudBackend(gpus=gpus, log_dir=context.log_dir)
    """


def pytest_sglang_tune_modify_space(config: pytest.Config, suite: Any, configs: list[Any]) -> None:
    """Change the list of configurations of ``suite`` in place before tests are made from them.

    Example ``conftest.py``::

        def pytest_sglang_tune_modify_space(config, suite, configs):
            # keep only configs that fit one node of our cluster
            configs[:] = [c for c in configs if c.gpus <= 4]
    """


@pytest.hookspec(firstresult=True)
def pytest_sglang_tune_rank(config: pytest.Config, results: list[dict[str, Any]],
                            objectives: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Return the ranking (list of ranking entries) for ``results``; the built-in ranking runs last.

    Example ``conftest.py``::

        def pytest_sglang_tune_rank(config, results, objectives):
            from pytest_sglang_tune.ranking import rank
            passed = [r for r in results if r["metrics"] and r["metrics"]["error_rate"] == 0]
            return rank(passed, objectives)
    """


def pytest_sglang_tune_update_report(config: pytest.Config, report: dict[str, Any]) -> None:
    """Change ``report`` (the report.json dict) in place before it is written.

    Example ``conftest.py``::

        def pytest_sglang_tune_update_report(config, report):
            import subprocess
            sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
            report["run"]["commit"] = sha
    """
