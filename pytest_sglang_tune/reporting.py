"""Controller-side assembly of a run's report: records + suites + ranking → reports/<run-id>/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.results import now_iso


def suites_info(suite_files: dict[str, str], records: list[dict[str, Any]], options: Any = None,
                table_for: Any = None) -> dict[str, Any]:
    """Objective, SLOs, SGLang version and excluded configs of every suite the run touched.

    Under xdist only workers collect, so the controller re-reads the suite files named by the records (cheap).
    """
    from pytest_sglang_tune.errors import TuneError
    from pytest_sglang_tune.space import expand
    from pytest_sglang_tune.suite import load_suite

    files = dict(suite_files)
    for rec in records:
        if rec.get("suite") and rec.get("suite_file"):
            files.setdefault(rec["suite"], rec["suite_file"])
    out: dict[str, Any] = {}
    for name, path in files.items():
        info: dict[str, Any] = {"file": path}
        try:
            suite = load_suite(Path(path))
            if options is not None:
                suite = options.apply(suite)
            exp = expand(suite, table_for(suite) if table_for is not None else None)
        except (TuneError, OSError) as exc:
            info["error"] = str(exc)
            out[name] = info
            continue
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


def write_run_report(config: pytest.Config, st: Any, exitstatus: int) -> dict[str, Path]:
    from pytest_sglang_tune.items import flag_table_for
    from pytest_sglang_tune.results import build_report, machine_info, suite_objectives, write_report

    suites = suites_info(st.suite_files, st.records, st.options, lambda s: flag_table_for(config, s))
    try:  # under xdist the controller never deployed: ask the backend (cheap, touches no server)
        from pytest_sglang_tune.state import get_engine

        cap = get_engine(config).capacity()
    except Exception:
        cap = None
    run = {
        "id": st.run_id,
        "started_at": st.started_at,
        "finished_at": now_iso(),
        "backend": st.options.backend,
        "gpus": cap.gpus if cap else st.options.gpus,
        "gpus_source": cap.source if cap else None,
        "argv": st.argv,
        "exit_status": int(exitstatus),
        "interrupted": int(exitstatus) == int(pytest.ExitCode.INTERRUPTED),
        "machine": machine_info(),
    }
    if cap is not None and not cap.checked:  # the backend could not count (e.g. ome without node rights)
        run["machine"]["gpus"] = "unknown"
    warnings: list[str] = []  # per-result warnings stay on their results
    objectives = suite_objectives(suites)
    from pytest_sglang_tune.ranking import dedupe

    ranking = config.hook.pytest_sglang_tune_rank(config=config, results=list(dedupe(st.records)),
                                                  objectives=objectives)
    report = build_report(run=run, results=st.records, suites=suites, ranking=ranking, warnings=warnings)
    from pytest_sglang_tune.analysis import analyse

    analyse(report, objectives)
    config.hook.pytest_sglang_tune_update_report(config=config, report=report)
    paths = write_report(report, st.run_dir)
    bench_json = config.getoption("sglang_benchmark_json", None)
    if bench_json:
        from pytest_sglang_tune.report.benchmark_json import write_json

        paths["pytest-benchmark json"] = write_json(report, Path(bench_json))
    if config.getoption("sglang_benchmark_autosave", False):
        from pytest_sglang_tune.report.benchmark_json import autosave

        paths["pytest-benchmark autosave"] = autosave(report, Path(str(config.rootpath)) / ".benchmarks")
    return paths


@pytest.hookimpl(trylast=True)
def pytest_sglang_tune_rank(config: pytest.Config, results: list[dict[str, Any]],
                            objectives: dict[str, Any]) -> list[dict[str, Any]]:
    from pytest_sglang_tune.ranking import rank

    return rank(results, objectives)
