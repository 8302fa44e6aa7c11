"""Per-session state of the plugin, kept in ``config.stash`` (never on ``config`` itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.engine import Engine, Options

ERROR_KEY = "sglang_tune_error"


@dataclass
class State:
    options: Options
    run_id: str
    controller: bool
    lease_dir: Path
    started_at: str
    argv: list[str]
    engine: Engine | None = None
    has_items: bool = False
    records: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    suite_files: dict[str, str] = field(default_factory=dict)
    log: Any = None
    report_paths: dict[str, Path] = field(default_factory=dict)
    baseline: dict[Any, dict[str, Any]] | None = None
    introspected: dict[str, Any] = field(default_factory=dict)
    worker_notes: list[str] = field(default_factory=list)  # xdist: the workers' backend notes, for the summary
    worker_created: list[Any] = field(default_factory=list)  # xdist: shared objects workers created (to remove)

    @property
    def run_dir(self) -> Path:
        return self.options.report_dir / self.run_id


STATE = pytest.StashKey[State]()


def get_state(config: pytest.Config) -> State:
    return config.stash[STATE]


def get_engine(config: pytest.Config) -> Engine:
    st = get_state(config)
    if st.engine is None:
        backend = config.hook.pytest_sglang_tune_make_backend(config=config, name=st.options.backend,
                                                              gpus=st.options.gpus)
        st.engine = Engine(options=st.options, run_id=st.run_id, backend=backend, lease_dir=st.lease_dir)
    return st.engine
