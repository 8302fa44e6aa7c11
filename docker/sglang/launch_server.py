"""``python3 -m sglang.launch_server ...`` inside the test image runs pytest-sglang-tune's simulated server."""

from __future__ import annotations

import sys

from pytest_sglang_tune.sim.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
