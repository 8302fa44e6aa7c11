"""pytest-xdist: the run id for workers, their hand-off to the controller, and keeping a config's tests together.

**One config, one worker.** Every test of a configuration must run on the worker that deployed it. xdist's
``loadgroup`` does that by appending ``@group`` to node ids, which ``--lf``, ``--ff``, ``--sw`` and
``--deselect`` cannot reproduce in a run without it. Instead, each worker writes, before it reports its
collection, which configuration each of its tests belongs to (``<lease dir>/groups-<worker>.json``), and the
controller schedules with ``ConfigScheduling``: xdist's scope scheduler with that mapping as the scope (tests of
no configuration are their own scope, i.e. plain load balancing). Node ids stay exactly as collected. A
``--dist`` the user chose other than ``load``/``loadgroup`` is left alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from pytest_sglang_tune.items import config_key_of

if TYPE_CHECKING:
    from pytest_sglang_tune.session import TuneSession

GROUPED_DISTS = ("load", "loadgroup")


def groups_file(lease_dir: Path, worker: str) -> Path:
    return lease_dir / f"groups-{worker}.json"


class ConfigScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's scope scheduling, scoped by configuration (see the module docstring)."""

    def __init__(self, config: pytest.Config, log: Any, lease_dir: Path) -> None:
        super().__init__(config, log)
        self.lease_dir = lease_dir
        self._groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self._groups is None:
            groups: dict[str, str] = {}
            for path in sorted(self.lease_dir.glob("groups-*.json")):
                try:
                    groups.update(json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
            self._groups = groups
        return self._groups.get(nodeid, nodeid)


class XdistHooks:
    """Registered only when pytest-xdist is loaded (its hooks do not exist otherwise)."""

    def __init__(self, session: TuneSession) -> None:
        self.session = session
        self.view: Any = None  # controller: progress.WorkerView, one line per busy worker

    # controller ----------------------------------------------------------------------------------------------
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: Any) -> None:
        """Ask the backend before workers start (a refusal would crash each worker instead)."""
        if self.session.options.backend != "sim":
            self.session.asked_engine()
        from pytest_sglang_tune.progress import NullProgress, WorkerView

        if not isinstance(self.session.progress, NullProgress):
            self.view = WorkerView(self.session.run_dir / "progress", self.session.progress)
            self.view.start()

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Any:
        """Controller: the workers' progress lines step aside while pytest reports a test."""
        if self.view is None:
            return (yield)
        with self.view.sink.paused():
            return (yield)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.view is not None:
            self.view.stop()
            self.view = None

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["sglang_tune_run_id"] = self.session.run_id
        node.workerinput["sglang_tune_started_at"] = self.session.started_at

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """A worker is done: keep its backend notes and the run-wide objects it created (see ``stop_backend``)."""
        out = (getattr(node, "workeroutput", None) or {}).get("sglang_tune") or {}
        s = self.session
        s.worker_notes += [n for n in out.get("notes", ()) if n not in s.worker_notes]
        s.worker_created += [tuple(x) for x in out.get("created", ())]

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") not in GROUPED_DISTS:
            return None
        return ConfigScheduling(config, log, self.session.lease_dir)

    # worker --------------------------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        worker = self.session.worker_id
        if worker is None:
            return
        groups = {}
        for item in session.items:
            key = config_key_of(item)
            if key is not None:
                groups[item.nodeid] = f"{key[0]}::{key[1]}"
        self.session.lease_dir.mkdir(parents=True, exist_ok=True)
        path = groups_file(self.session.lease_dir, worker)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, path)
