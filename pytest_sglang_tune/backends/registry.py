"""The built-in backends, by name: where each lives and which suite settings (``backends.<name>``) it takes.

Modules are imported only when their backend is made (docker and kubernetes are optional dependencies). A
conftest or plugin adds a backend by implementing ``pytest_sglang_tune_make_backend``; its name is then
accepted by ``--backend`` and its suite section (``backends.<name>``) is passed through unchecked.
"""

from __future__ import annotations

import importlib

from pytest_sglang_tune.backends.base import Backend, BackendContext, as_backend
from pytest_sglang_tune.options import Options

BUILTIN: dict[str, str] = {
    "sim": "pytest_sglang_tune.backends.sim",
    "local": "pytest_sglang_tune.backends.local",
    "docker": "pytest_sglang_tune.backends.docker",
    "ome": "pytest_sglang_tune.backends.ome",
}
BUILTIN_NAMES: tuple[str, ...] = tuple(BUILTIN)

# The suite fields each built-in backend understands (``backends.<name>.<field>``).
SETTINGS_FIELDS: dict[str, tuple[str, ...]] = {
    "sim": ("gpu", "perf_model", "needs_gpus", "launcher", "env", "port", "ready_timeout"),
    "local": ("launcher", "needs_gpus", "env", "port", "ready_timeout"),
    "docker": ("image", "needs_gpus", "env", "shm_size", "ipc_host", "hf_cache", "ulimits", "network",
               "ready_timeout"),
    "ome": ("runtime", "model", "namespace", "create_runtime", "create_model", "create_namespace", "node_selector",
            "tolerations", "env", "ready_timeout", "unschedulable_grace", "image_pull_grace", "deployment_mode"),
}


def check_options(options: Options) -> None:
    """Checks of the command line that need the host but no backend, run once by the controller before any
    xdist worker starts: ``--gpus`` beyond the job's GPU mask (local, docker). Raises ``pytest.UsageError``."""
    from pytest_sglang_tune.backends.gpus import check_gpus_option

    check_gpus_option(options.backend, options.gpus, fake_gpus=options.fake_gpus is not None)


def make_builtin(name: str, context: BackendContext) -> Backend | None:
    """The built-in backend ``name`` (its module's ``make_backend(context)``), or None for another name."""
    module = BUILTIN.get(name)
    if module is None:
        return None
    return as_backend(importlib.import_module(module).make_backend(context))
