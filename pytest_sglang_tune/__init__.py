"""pytest-sglang-tune: find the SGLang server settings that give your traffic the most throughput within SLOs."""

from __future__ import annotations

__version__ = "0.1.0"
TOOL_NAME = "pytest-sglang-tune"
