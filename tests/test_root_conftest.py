"""The repository's own conftest.py: one extension hook in use for the shipped suites, results untouched."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
CONFTEST = REPO / "conftest.py"


def load_conftest():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("repo_root_conftest", CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_report_records_the_commit_and_nothing_else() -> None:
    report = json.loads((REPO / "tests" / "fixtures" / "report_v1.json").read_text())
    before = copy.deepcopy(report)
    config = SimpleNamespace(rootpath=REPO)
    load_conftest().pytest_sglang_tune_update_report(config=config, report=report)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert report["run"]["commit"]["sha"] == head
    assert isinstance(report["run"]["commit"]["dirty"], bool)
    del report["run"]["commit"]
    assert report == before  # results, ranking and analysis as they were
    schema = json.loads((REPO / "docs" / "report-schema.json").read_text())
    assert schema["properties"]["run"].get("additionalProperties", True) is not False  # run.commit is allowed


def test_outside_a_git_checkout_nothing_is_added(tmp_path: Path) -> None:
    report: dict = {"run": {}, "results": []}  # type: ignore[type-arg]
    load_conftest().pytest_sglang_tune_update_report(config=SimpleNamespace(rootpath=tmp_path), report=report)
    assert report == {"run": {}, "results": []}
