from __future__ import annotations

from pathlib import Path

# pytester's in-process runs restore sys.modules afterwards; modules first imported inside such a run would be
# dropped and re-imported with new class identities (requests then fails with "You can only merge into
# CookieJar"). Import what the plugin loads lazily once, up front.
import numpy  # noqa: F401  (stats.py's bootstrap imports it lazily)
import pytest

import pytest_sglang_tune.backends.docker
import pytest_sglang_tune.backends.local
import pytest_sglang_tune.backends.ome
import pytest_sglang_tune.backends.sim
import pytest_sglang_tune.loadgen.runner
import pytest_sglang_tune.metrics
import pytest_sglang_tune.readiness
import pytest_sglang_tune.report.run
import pytest_sglang_tune.report.store  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


@pytest.fixture
def reference_dir() -> Path:
    """../shared/reference (upstream interface data); tests that need it skip with a reason when absent."""
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {SHARED_REFERENCE} (the ../shared folder beside the checkout)")
    return SHARED_REFERENCE
