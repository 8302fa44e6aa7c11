"""Controller-side assembly of a run's report: results + suites + ranking → reports/<run-id>/."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.report.store import now_iso
from pytest_sglang_tune.results import Result


def load_suites(suite_files: dict[str, str], results: list[Result], options: Any = None,
                table_for: Any = None) -> dict[str, tuple[str, Any]]:
    """``{suite: (file, Source or the error text)}`` of every suite the run touched, as the run saw them (the
    command line's overrides applied, the space expanded with the run's flag table).

    Under xdist only workers collect, so the controller re-reads the suite files named by the records (cheap).
    """
    from pytest_sglang_tune.errors import TuneError
    from pytest_sglang_tune.report.export import Source
    from pytest_sglang_tune.space import expand
    from pytest_sglang_tune.suite import load_suite

    files = dict(suite_files)
    for r in results:
        if r.point.suite and r.suite_file:
            files.setdefault(r.point.suite, r.suite_file)
    out: dict[str, tuple[str, Any]] = {}
    for name, path in files.items():
        try:
            suite = load_suite(Path(path))
            if options is not None:
                suite = options.apply(suite)
            out[name] = (path, Source(suite, expand(suite, table_for(suite) if table_for is not None else None)))
        except (TuneError, OSError) as exc:
            out[name] = (path, str(exc))
    return out


def suites_info(loaded: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Objective, SLOs, SGLang version and excluded configs of every suite the run touched."""
    out: dict[str, Any] = {}
    for name, (path, source) in loaded.items():
        info: dict[str, Any] = {"file": path}
        if isinstance(source, str):
            info["error"] = source
            out[name] = info
            continue
        suite, exp = source.suite, source.expansion
        info.update({
            "objective": str(suite.objective),
            "slos": [str(s) for s in suite.slos],
            "model": suite.model_path,
            "sglang_version": exp.flags.version,
            "flag_table": exp.flags.source,
            "configs": len(exp.configs),
            "varying_flags": [f.lstrip("-") for f in exp.varying],
            "excluded": [{"config_id": e.config_id, "server_args": {k.lstrip("-"): v for k, v in
                                                                     e.server_args.items()},
                          "reason": e.reason} for e in exp.excluded],
        })
        out[name] = info
    return out


def write_run_report(session: Any, exitstatus: int) -> dict[str, Path]:
    """report.json, report.html (and the pytest-benchmark files asked for) of the session's results."""
    from pytest_sglang_tune.analysis import analyse
    from pytest_sglang_tune.redact import redact
    from pytest_sglang_tune.report.export import build_exports
    from pytest_sglang_tune.report.store import build_report, suite_objectives, write_report
    from pytest_sglang_tune.results import dedupe

    config = session.config
    options = session.options
    loaded = load_suites(session.suite_files, session.results, options, session.flag_table_for)
    suites = suites_info(loaded)
    try:  # under xdist the controller never deployed: ask the backend (cheap, touches no server)
        cap = session.engine.capacity()
    except Exception:
        cap = None
    run = {
        "id": session.run_id,
        "started_at": session.started_at,
        "finished_at": now_iso(),
        "backend": options.backend,
        "gpus": cap.gpus if cap else options.gpus,
        "gpus_source": cap.source if cap else None,
        "argv": session.argv,
        "exit_status": int(exitstatus),
        "interrupted": int(exitstatus) == int(pytest.ExitCode.INTERRUPTED),
        "machine": session.machine(),
        "tie_margin": options.tie_margin,
    }
    if cap is not None and not cap.checked:  # the backend could not count (e.g. ome without node rights)
        run["machine"] = {**run["machine"], "gpus": "unknown"}
    unique = dedupe(list(session.results))
    if options.search != "grid":
        from pytest_sglang_tune.search.summary import summarize_search

        searches = {name: s for name in suites
                    if (s := summarize_search(session.run_dir, name, options.search, options.budget, unique))}
        run["search"] = searches
        grid = [s["grid_gpu_h_predicted"] for s in searches.values() if s.get("grid_gpu_h_predicted") is not None]
        session.grid_gpu_s = sum(grid) * 3600.0 if grid else None
    run["gpu_hours"] = gpu_hours(unique, session.grid_gpu_s)
    ranking = config.hook.pytest_sglang_tune_rank(config=config, results=[r.to_dict() for r in unique],
                                                  objectives=suite_objectives(suites))
    report = build_report(run=run, results=session.results, suites=suites, ranking=ranking,
                          tie_margin=options.tie_margin)
    analyse(report)
    sources = {name: source for name, (_, source) in loaded.items() if not isinstance(source, str)}
    report["exports"] = build_exports(report, sources, backend=options.backend, options=options)
    config.hook.pytest_sglang_tune_update_report(config=config, report=report)
    paths = write_report(report, session.run_dir)
    write_exports(redact(report), session.run_dir)   # the manifests as report.json holds them (redacted)
    if options.benchmark_json:
        from pytest_sglang_tune.report.benchmark_json import write_json

        paths["pytest-benchmark json"] = write_json(report, options.benchmark_json)
    if options.benchmark_autosave:
        from pytest_sglang_tune.report.benchmark_json import autosave

        paths["pytest-benchmark autosave"] = autosave(report, Path(str(config.rootpath)) / ".benchmarks")
    return paths


@pytest.hookimpl(trylast=True)
def pytest_sglang_tune_rank(config: pytest.Config, results: list[dict[str, Any]],
                            objectives: dict[str, Any]) -> list[dict[str, Any]]:
    from pytest_sglang_tune.ranking import rank
    from pytest_sglang_tune.stash import get_session

    return rank(results, objectives, margin=get_session(config).options.tie_margin)


def gpu_hours(results: list[Result], grid_gpu_s: float | None = None) -> dict[str, Any]:
    """``run.gpu_hours``: GPU-hours the run's deployments held (``spent``), whether they are a simulated server's
    virtual figures, and what measuring the whole grid would cost (``grid_predicted``, from ``predict``; None when
    not predicted)."""
    spent = sum(r.cost.gpu_s or 0.0 for r in results)
    return {"spent": round(spent / 3600.0, 6), "virtual": any(bool(r.cost.virtual) for r in results),
            "grid_predicted": None if grid_gpu_s is None else round(grid_gpu_s / 3600.0, 6)}


def write_exports(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write each export's InferenceService YAML to ``out_dir/winner-<suite>-<workload>.yaml``, atomically, from
    the report as written (redacted); returns ``{"<suite>/<workload>": path}``."""
    from pytest_sglang_tune.report.store import atomic_write_text

    paths: dict[str, Path] = {}
    for suite, per_workload in (report.get("exports") or {}).items():
        for workload, entry in per_workload.items():
            name, text = entry.get("inference_service_file"), entry.get("inference_service_yaml")
            if name and text:
                path = Path(out_dir) / Path(str(name)).name
                atomic_write_text(path, str(text))
                paths[f"{suite}/{workload}"] = path
    return paths
