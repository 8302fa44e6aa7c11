"""pytest-sglang-tune: find the SGLang server settings that give your traffic the most throughput within SLOs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
TOOL_NAME = "pytest-sglang-tune"

if TYPE_CHECKING:
    from pytest_sglang_tune.table import load_results as load_results

__all__ = ["TOOL_NAME", "__version__", "load_results"]


def __getattr__(name: str) -> Any:
    """``load_results`` (:func:`pytest_sglang_tune.table.load_results`: results as a pandas DataFrame), imported
    on first use, so ``import pytest_sglang_tune`` stays light (pytest loads it for every run) and the package's
    root imports nothing of its own modules."""
    if name == "load_results":
        import importlib

        return importlib.import_module("pytest_sglang_tune.table").load_results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
