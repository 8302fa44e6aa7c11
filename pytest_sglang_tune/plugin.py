"""pytest wiring, and nothing else: options (``options``), our hooks (``hookspecs``), suite collection (``items``),
the session owner (``session``), the Python-suite fixtures (``fixtures``) and the built-in backends
(``backends.registry``).

Heavy imports (load generator, backends, report writers) happen inside the hooks that need them; a pytest
session that collects no suite item touches no server, Docker or Kubernetes.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune import hookspecs
from pytest_sglang_tune.items import SuiteFile
from pytest_sglang_tune.options import add_options, parse_options

SUITE_PATTERNS = ("tune_*.yaml", "tune_*.yml")


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(trylast=True)
def pytest_sglang_tune_make_backend(config: pytest.Config, name: str, gpus: int | None, context: Any) -> Any:
    from pytest_sglang_tune.backends.registry import make_builtin

    return make_builtin(name, context)


def pytest_configure(config: pytest.Config) -> None:
    from pytest_sglang_tune.backends.registry import BUILTIN_NAMES, check_options
    from pytest_sglang_tune.session import start_session

    config.addinivalue_line("markers", "sglang_tune(**suite): a Python suite: the server space and settings "
                                       "for the sglang_server / sglang_bench fixtures (same fields as a YAML suite)")
    # another plugin or conftest implementing make_backend may provide more names (checked when it is made)
    extensible = len(config.pluginmanager.hook.pytest_sglang_tune_make_backend.get_hookimpls()) > 1
    session = start_session(config, parse_options(config, BUILTIN_NAMES, extensible))
    if session.controller and not config.option.collectonly:  # --gpus beyond the GPU mask, before any worker
        check_options(session.options)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if any(fnmatch.fnmatch(file_path.name, p) for p in SUITE_PATTERNS):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


from pytest_sglang_tune.fixtures import (  # noqa: E402,F401
    pytest_generate_tests,
    sglang_bench,
    sglang_config,
    sglang_server,
)
from pytest_sglang_tune.report.run import pytest_sglang_tune_rank  # noqa: E402,F401
