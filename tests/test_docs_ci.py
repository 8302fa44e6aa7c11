"""docs/ci.md is a workflow users copy: it must install what exists and gate for real."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DOC = Path(__file__).resolve().parents[1] / "docs" / "ci.md"


def workflow() -> dict:  # type: ignore[type-arg]
    (block,) = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    return yaml.safe_load(block)  # type: ignore[no-any-return]


def steps() -> list[dict]:  # type: ignore[type-arg]
    return workflow()["jobs"]["tune"]["steps"]  # type: ignore[no-any-return]


def test_installs_from_the_checkout_or_a_pinned_git_url() -> None:
    installs = [s["run"] for s in steps() if "pip install" in str(s.get("run", ""))]
    assert installs, "the workflow installs nothing"
    for cmd in installs:
        # the package is not on PyPI: install the checked-out repository, or a git URL pinned to a tag or commit
        from_checkout = re.search(r"pip install (-e )?'?\.(\[[a-z,]+\])?'?(\s|$)", cmd)
        pinned_git = re.search(r"git\+https://\S+@[0-9a-zA-Z.]+", cmd)
        assert from_checkout or pinned_git, cmd


def test_every_gate_fails_the_job() -> None:
    text = DOC.read_text()
    assert "|| true" not in text
    runs = "\n".join(str(s.get("run", "")) for s in steps())
    assert "sglang-tune diff" in runs and "--fail-on" in runs.split("sglang-tune diff", 1)[1]
    # the exit codes of both gates are explained beside the workflow (cli.py: 1 threshold crossed, 3 refused)
    (diff_row,) = [ln for ln in text.splitlines() if ln.startswith("| `sglang-tune diff` |")]
    cells = [c.strip() for c in diff_row.strip("|").split("|")]
    assert "threshold crossed" in cells[2] and "not comparable" in cells[4]
    assert [ln for ln in text.splitlines() if ln.startswith("| `pytest` |")]
