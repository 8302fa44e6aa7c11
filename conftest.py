"""The repository's conftest: one extension hook in use for the shipped suites (``pytest suites/``).

``pytest_sglang_tune_update_report`` records which commit of this repository (and so of ``suites/``) a run
measured, as ``run.commit`` = ``{sha, dirty}``; results, ranking and analysis are left as they are. pytest loads
this file for every run from the repository root (the project's own tests too); outside a git checkout, or
without git, it adds nothing. Copy it beside your own suites to get the same record.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest


@pytest.hookimpl(optionalhook=True)  # a harmless no-op if the plugin is disabled (-p no:sglang_tune)
def pytest_sglang_tune_update_report(config: Any, report: dict[str, Any]) -> None:
    """Add ``run.commit``: the git commit of the checkout the suites came from, and whether it had local edits."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(config.rootpath), *args], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return
    status = git("status", "--porcelain", "--untracked-files=no")
    report["run"]["commit"] = {"sha": sha.strip(), "dirty": bool(status and status.strip())}
