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


def finish_backend(config: pytest.Config) -> None:
    """Stop the live server and release what the backend holds, at the end of this process's session.

    Objects shared by the whole run (an OME runtime, model or namespace the plugin created) are removed only when
    the run is over: an xdist worker hands them, with its notes, to the controller (``workeroutput``), which
    removes them after the last worker is done; without xdist this process does it now."""
    st = get_state(config)
    backend = st.engine.backend if st.engine is not None else None
    if st.engine is not None:
        st.engine.shutdown()
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker
        handoff = getattr(backend, "handoff", None)
        workeroutput["sglang_tune"] = {"notes": list(getattr(backend, "session_notes", None) or ()),
                                       "created": handoff() if handoff is not None else []}
        return
    if st.worker_created:
        backend = get_engine(config).backend
        backend.adopt(st.worker_created)  # type: ignore[attr-defined]  # only backends that hand objects off
        st.worker_created = []
    close = getattr(backend, "close", None)
    if close is not None:
        close()
