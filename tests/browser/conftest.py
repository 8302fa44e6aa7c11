"""Headless Chromium for the `browser`-marked tests (see cdp.py). Without a browser the tests skip locally and
fail under CI (the CI environment variable set), so `.ci/run` cannot pass by skipping them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cdp import Chromium, find_chromium

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        msg = ("headless Chromium not found (Debian package chromium; install it with .ci/setup-browser.sh, "
               "or point SGLANG_TUNE_CHROMIUM at a browser)")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {msg}", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Chromium]:
    with Chromium.launch(chromium_path) as b:
        yield b


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where screenshots go: ``$CI_ARTIFACTS`` if set, else reports/browser-artifacts in the checkout."""
    base = os.environ.get("CI_ARTIFACTS")
    path = Path(base) if base else REPO / "reports" / "browser-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path
