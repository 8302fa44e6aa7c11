"""The whole pipeline over real HTTP: suite → tests → simulated SGLang → metrics → ranked reports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from pytest_sglang_tune.report.store import load_report

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow
LAUNCHERS = Path(__file__).with_name("launchers.py")


def suite(model: str, *, grid: str = "schedule-policy: [lpm, fcfs]", fixed: str = "{enable-metrics: true}",
          concurrency: str = "[1, 4]", num_requests: str = "[2, 8]", launcher: str = "", output: int = 16,
          slos: str = '["ttft_ms.p99 <= 5000"]') -> str:
    launch = f", launcher: {json.dumps(launcher)}" if launcher else ""
    return f"""\
model: {{path: {model}, served_name: tiny}}
backends:
  sim: {{gpu: h100_sxm{launch}}}
server:
  fixed: {fixed}
  grid: {{{grid}}}
workloads:
  - name: chat
    scenario: D(64,{output})
    num_requests: {num_requests}
    warmup_requests: 1
    concurrency: {concurrency}
slos: {slos}
objective: {{maximize: output_throughput_per_gpu}}
"""


def unique_model() -> str:
    return "Qwen/Qwen3-8B"  # the sim knows this model; uniqueness comes from the served name per test


def sim_processes(tag: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "pytest_sglang_tune.sim" in cmd and tag in cmd:
            found.append(p)
    return found


def records(run_root: Path) -> list[dict]:  # type: ignore[type-arg]
    (log,) = run_root.glob("*/results.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_pipeline_end_to_end(pytester: pytest.Pytester) -> None:
    tag = f"tiny-{uuid.uuid4().hex[:8]}"
    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B").replace("served_name: tiny", f"served_name: {tag}"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--junitxml=junit.xml")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*sglang-tune: top configurations*", "*chat*", "json: *report.json"])
    (report_path,) = (pytester.path / "reports").glob("*/report.json")
    report = load_report(report_path)
    assert report["run"]["backend"] == "sim"
    assert len(report["results"]) == 4
    for res in report["results"]:
        assert res["status"] == "passed"
        m = res["metrics"]
        assert m["completed"] == res["workload"]["num_requests"]
        assert m["ttft_ms"]["p50"] > 0 and m["itl_ms"]["p50"] > 0 and m["output_throughput"] > 0
        assert res["perf_model"] and res["launch_command"].count("--schedule-policy") <= 1
        # issue 11: every report names the perf model, its data version and GPU, and what the sim does not model
        assert set(res["perf_model"]) >= {"name", "data_version", "gpu"} and res["perf_model"]["gpu"] == "h100_sxm"
        assert res["perf_model"]["data_version"]
        sim = res["sim"]
        assert sim["physics_version"] == 2 and "speculative decoding" in sim["not_modelled"]
        assert (sim["prefill_mode"], sim["prefill_mode_source"]) == ("strict", "--enable-mixed-chunk")
        assert res["sglang_version"] == "0.5.23"
    assert {r["load"]["concurrency"] for r in report["ranking"]} == {1, 4}
    # GPU-time accounting: the sim's virtual figures (its predicted start-up, its clock), deploy on first points
    for res in report["results"]:
        cost = res["cost"]
        first = res["load"]["concurrency"] == 1  # each config's c1 point comes first on its deployment
        assert cost["virtual"] is True and cost["measure_s"] > 0
        assert (cost["deploy_s"] > 30) if first else cost["deploy_s"] == 0
        assert cost["gpu_s"] == pytest.approx((cost["deploy_s"] + cost["measure_s"]) * res["gpus_required"], abs=0.01)
    spent = sum(r["cost"]["gpu_s"] for r in report["results"]) / 3600
    assert report["run"]["gpu_hours"] == {"spent": pytest.approx(spent, abs=1e-5), "virtual": True,
                                         "grid_predicted": None}
    result.stdout.fnmatch_lines(["*GPU time: spent * GPU-h (virtual: what these runs would hold on the simulated "
                                 "GPU)*"])
    c4 = [r for r in report["ranking"] if r["load"]["concurrency"] == 4]
    assert [r["rank"] for r in c4] in ([1, 2], [1, 1])  # lpm and fcfs may be tied without shared prefixes
    assert all(r["tied"] for r in c4) == (c4[1]["rank"] == 1)
    assert (report_path.parent / "report.html").read_text().count("<html") == 1
    assert not sim_processes(tag), "the sim server outlived the session"


def test_flags_not_applied_is_an_error(pytester: pytest.Pytester) -> None:
    launcher = f"{sys.executable} {LAUNCHERS} drop:--schedule-policy"
    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B", grid="schedule-policy: [lpm]", launcher=launcher,
                                               concurrency="[1]", num_requests="[2]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*FlagsNotApplied: flags not applied: --schedule-policy='lpm' "
                                 "(the server runs with 'fcfs')*"])


def test_crash_mid_point_fails_that_point_and_redeploys(pytester: pytest.Pytester, tmp_path: Path) -> None:
    launcher = f"{sys.executable} {LAUNCHERS} crash-after:1.0"
    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B", grid="schedule-policy: [lpm]", launcher=launcher,
                                               concurrency="[1, 2]", num_requests="[40, 4]", output=200))
    env_marker = tmp_path / "crashed"
    os.environ["CRASH_MARKER"] = str(env_marker)
    try:
        start = time.monotonic()
        result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider")
    finally:
        del os.environ["CRASH_MARKER"]
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*ServerCrashed: server crashed during the point: the server process*",
                                 "*CUDA out of memory*"])
    assert time.monotonic() - start < 120
    recs = {r["load"]["concurrency"]: r for r in records(pytester.path / "reports")}
    assert recs[1]["status"] == "failed" and "crashed" in recs[1]["reason"]
    assert recs[2]["status"] == "passed"


def test_ctrl_c_stops_the_server_and_keeps_results(tmp_path: Path) -> None:
    tag = f"tiny-{uuid.uuid4().hex[:8]}"
    (tmp_path / "tune_long.yaml").write_text(
        suite("Qwen/Qwen3-8B", concurrency="[1, 2]", num_requests="[1, 60]", output=200)
        .replace("served_name: tiny", f"served_name: {tag}"))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "tune_long.yaml", "--backend=sim", "-p",
                             "no:cacheprovider", "-q"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        log = None
        while time.monotonic() < deadline:  # wait for the first finished test, then interrupt the second
            found = list((tmp_path / "reports").glob("*/results.jsonl"))
            if found and found[0].read_text().count("\n") >= 1 and sim_processes(tag):
                log = found[0]
                break
            time.sleep(0.2)
        assert log is not None, "no result was recorded in time"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    lines = log.read_text().splitlines()
    assert len(lines) >= 1 and all(json.loads(line)["config_id"] for line in lines)
    report = load_report(log.parent / "report.json")
    assert report["run"]["interrupted"] is True
    assert len(report["results"]) >= 1
    deadline = time.monotonic() + 10
    while sim_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not sim_processes(tag), "Ctrl-C left a sim server running"


def test_python_suite_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_custom="""
        import pytest

        @pytest.mark.sglang_tune(model="Qwen/Qwen3-8B", server={"grid": {"schedule-policy": ["lpm", "fcfs"]}},
                                 slos=["ttft_ms.p99 <= 5000"])
        def test_short(sglang_server, sglang_bench):
            assert sglang_server.server_info["schedule_policy"] in ("lpm", "fcfs")
            metrics = sglang_bench("D(32,8)", concurrency=2, num_requests=4)
            assert metrics["completed"] == 4 and metrics["error_rate"] == 0
    """)
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_short?lpm? PASSED*", "*test_short?fcfs? PASSED*"])
    recs = records(pytester.path / "reports")
    assert {r["server_args"].get("schedule-policy", "fcfs") for r in recs} == {"lpm", "fcfs"}
    assert all(r["status"] == "passed" and r["metrics"]["completed"] == 4 for r in recs)


def test_secrets_never_reach_reports_logs_or_ids(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    secret, hf = "sk-topsecret-4242", "hf_verysecret_9999"
    monkeypatch.setenv("HF_TOKEN", hf)
    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B", fixed=f"{{api-key: {secret}}}",
                                               grid="schedule-policy: [lpm]", concurrency="[1]",
                                               num_requests="[2]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--junitxml=junit.xml", "-v")
    result.assert_outcomes(passed=1)  # the load generator authenticated with the key
    texts = [result.stdout.str()] + [p.read_text(errors="replace") for p in pytester.path.rglob("*")
                                     if p.is_file() and p.suffix in (".json", ".jsonl", ".html", ".xml", ".log")]
    for text in texts:
        assert secret not in text and hf not in text


def test_rank_and_update_report_hooks(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        def pytest_sglang_tune_rank(config, results, objectives):
            # rank by config_id, descending, ignoring the objective
            ordered = sorted(results, key=lambda r: r["config_id"], reverse=True)
            return [{"suite": r["suite"], "workload": r["workload"]["name"], "load": r["load"], "rank": i + 1,
                     "config_id": r["config_id"], "score": None, "slo_pass": r["slo_pass"]}
                    for i, r in enumerate(ordered)]

        def pytest_sglang_tune_update_report(config, report):
            report["run"]["commit"] = "abc123"
    """)
    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B", concurrency="[2]", num_requests="[2]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    (path,) = (pytester.path / "reports").glob("*/report.json")
    report = load_report(path)
    assert report["run"]["commit"] == "abc123"
    ids = [r["config_id"] for r in report["ranking"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 2


def test_xdist_keeps_configs_on_one_worker_and_reports_once(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B", concurrency="[1, 2]", num_requests="[2, 2]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "-n", "2", "--gpus=2", "-v")
    result.assert_outcomes(passed=4)
    (path,) = (pytester.path / "reports").glob("*/report.json")  # written once, by the controller
    report = load_report(path)
    assert report["run"]["gpus"] == 2 and len(report["results"]) == 4
    by_config: dict[str, set[str]] = {}
    for line in result.stdout.lines:  # "[gw0] PASSED tune_demo.yaml::chat[lpm-c1]@sglang-..."
        if "PASSED" in line and line.startswith("[gw"):
            worker = line.split("]")[0] + "]"
            nodeid = line.partition(" PASSED ")[2]
            by_config.setdefault(nodeid.split("[")[1].rsplit("-c", 1)[0], set()).add(worker)
    assert len(by_config) == 2 and all(len(w) == 1 for w in by_config.values()), by_config
    assert all(r["status"] == "passed" and len(r["gpus_used"]) == 1 for r in report["results"])


def test_bench_command_against_the_sim(tmp_path: Path) -> None:
    from servers import SIM, serving

    out = tmp_path / "bench.json"
    with serving([*SIM, "--served-model-name", "q"]) as url:
        proc = subprocess.run([sys.executable, "-m", "pytest_sglang_tune.cli", "bench", "--url", url, "--model", "q",
                               "--scenario", "D(128,16)", "--concurrency", "1", "--concurrency", "4",
                               "--num-requests", "8", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = load_report(out)
    assert [r["load"]["concurrency"] for r in report["results"]] == [1, 4]
    for r in report["results"]:
        m = r["metrics"]
        assert m["completed"] == 8 and m["failed"] == 0
        # exact token-id prompts: served lengths equal requested ones (the sim tokenizes independently)
        assert m["self_check"]["input_mismatches"] == 0 and m["self_check"]["output_mismatches"] == 0
        assert m["self_check"]["served_input_mean"] == 128


def test_baseline_gate_and_release_diff(pytester: pytest.Pytester) -> None:
    from pytest_sglang_tune.cli import main as cli

    text = suite("Qwen/Qwen3-8B", grid="schedule-policy: [lpm]", concurrency="[4]", num_requests="[8]", output=32)
    pytester.makefile(".yaml", tune_demo=text.replace("gpu: h100_sxm", "gpu: h200_sxm"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--sglang-report-dir=old")
    result.assert_outcomes(passed=1)
    (old,) = (pytester.path / "old").glob("*/report.json")
    # the "new release": slower GPU, same flags and workload → same keys, lower throughput. The gate runs the
    # comparability check of `sglang-tune diff` first: another GPU type is refused unless allowed.
    pytester.makefile(".yaml", tune_demo=text)
    args = ["--backend=sim", "-p", "no:cacheprovider", f"--sglang-baseline={old}",
            "--sglang-fail-on=output_throughput:-5%"]
    result = pytester.runpytest_subprocess(*args, "--sglang-report-dir=refused")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*not comparable with the baseline *: GPU type differs: h200_sxm → h100_sxm "
                                 "(--sglang-allow-different compares anyway)*"])
    result = pytester.runpytest_subprocess(*args, "--sglang-report-dir=new", "--sglang-allow-different")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*regressed against the baseline: output_throughput * → * (-*%) crosses "
                                 "output_throughput:-5%*"])
    (new,) = (pytester.path / "new").glob("*/report.json")
    assert cli(["diff", str(old), str(new)]) == 3  # different sim GPUs: refused
    assert cli(["diff", str(old), str(new), "--allow-different", "--fail-on", "output_throughput:-5%"]) == 1


def test_two_runs_of_tied_configs_diff_as_unchanged_within_noise(pytester: pytest.Pytester,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 10, ties: a 2-config suite (lpm and fcfs, no shared prefixes: the same within noise) run twice;
    ``sglang-tune diff`` keeps the best config, "unchanged within noise", instead of announcing a new best."""
    from pytest_sglang_tune.cli import main as cli

    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B", concurrency="[1]", num_requests="[4]"))
    reports = []
    for run in ("a", "b"):
        result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider",
                                               f"--sglang-report-dir={run}")
        result.assert_outcomes(passed=2)
        (path,) = (pytester.path / run).glob("*/report.json")
        reports.append(str(path))
    ranking = load_report(reports[1])["ranking"]
    assert [e["rank"] for e in ranking] == [1, 1] and all(e["tied"] for e in ranking)
    capsys.readouterr()
    assert cli(["diff", *reports]) == 0
    out = capsys.readouterr().out
    assert "best config unchanged within noise:" in out and "(tied in the new run with " in out
    assert "THE BEST CONFIG CHANGED" not in out


def test_repeats_give_intervals_and_the_report_has_analysis(pytester: pytest.Pytester) -> None:
    text = suite("Qwen/Qwen3-8B", concurrency="[2]", num_requests="[4]") + "repeats: 3\n"
    pytester.makefile(".yaml", tune_demo=text)
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    (path,) = (pytester.path / "reports").glob("*/report.json")
    report = load_report(path)
    for r in report["results"]:
        assert r["confidence_method"]["method"].startswith("student-t over repeats")
        assert r["repeats"] == {"n": 3, "redeploy": False, "mode": "within one deployment"}
        lo, hi = r["confidence"]["output_throughput_per_gpu"]
        assert lo <= r["metrics"]["output_throughput_per_gpu"] <= hi
        assert r["metrics"]["completed"] == 12
    (front,) = report["analysis"]["pareto"]
    assert len(front["points"]) == 2 and any(p["on_front"] for p in front["points"])
    assert {b["load"]["concurrency"] for b in report["analysis"]["best_per_load"]} == {2}


def test_pytest_benchmark_export_reads_back_with_its_own_loader(pytester: pytest.Pytester) -> None:
    from pytest_benchmark.storage.file import FileStorage

    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B", concurrency="[2]", num_requests="[4]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider",
                                           "--sglang-benchmark-json=bench.json", "--sglang-benchmark-autosave")
    result.assert_outcomes(passed=2)
    storage = FileStorage(pytester.path / ".benchmarks", logger=__import__("logging").getLogger("t"))
    benches = list(storage.load_benchmarks())
    assert len(benches) == 2  # the autosaved file, loaded by pytest-benchmark itself
    for b in benches:
        assert b["rounds"] == 4 and 0 < b["min"] <= b["median"] <= b["max"]
        assert b["extra_info"]["completed"] == 4 and b["extra_info"]["config_id"]
    single = list(FileStorage(pytester.path, logger=__import__("logging").getLogger("t")).load_benchmarks(
        str(pytester.path / "bench.json")))
    assert {b["name"] for b in single} == {b["name"] for b in benches}
    cli = shutil.which("pytest-benchmark")
    assert cli, "pytest-benchmark console script not installed"
    compare = subprocess.run([cli, "compare", str(pytester.path / "bench.json")],
                             capture_output=True, text=True, cwd=pytester.path)
    assert compare.returncode == 0, compare.stderr
    assert "chat[lpm-c2]" in compare.stdout


def test_resume_skips_measured_points_and_merges_them(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B", concurrency="[1, 2]", num_requests="[2, 2]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--sglang-report-dir=first",
                                           "-k", "c1")
    result.assert_outcomes(passed=2)
    (first,) = (pytester.path / "first").iterdir()
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "--sglang-report-dir=second",
                                           f"--sglang-resume={first}")
    result.assert_outcomes(passed=4)
    (path,) = (pytester.path / "second").glob("*/report.json")
    report = load_report(path)
    resumed = [r for r in report["results"] if r.get("resumed_from")]
    fresh = [r for r in report["results"] if not r.get("resumed_from")]
    assert {r["load"]["concurrency"] for r in resumed} == {1} and len(resumed) == 2
    assert {r["load"]["concurrency"] for r in fresh} == {2} and len(fresh) == 2
    old = {r["config_id"]: r["metrics"] for r in records(pytester.path / "first")}
    for r in resumed:
        assert r["metrics"] == old[r["config_id"]]  # merged as measured, not re-measured
    assert len(report["ranking"]) == 4


def test_infeasible_configs_are_data_not_errors(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_demo=suite("Qwen/Qwen3-8B", grid="mem-fraction-static: [0.1, 0.85]",
                                               concurrency="[1]", num_requests="[2]"))
    result = pytester.runpytest_subprocess("--backend=sim", "-p", "no:cacheprovider", "-rx")
    result.assert_outcomes(passed=1, xfailed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*infeasible config: the config cannot run: not enough memory for the KV cache*"])
    recs = {r["server_args"]["mem-fraction-static"]: r for r in records(pytester.path / "reports")}
    assert recs[0.1]["status"] == "infeasible" and "not enough memory" in recs[0.1]["reason"]
    assert "mem_fraction_static=0.1" in recs[0.1]["log_tail"]
    assert recs[0.85]["status"] == "passed"


def test_shipped_suites_write_a_report_that_validates_against_the_documented_schema(tmp_path: Path) -> None:
    """A slice of `pytest suites/ --backend=sim` (three points of the two shipped suites): its report.json
    validates against docs/report-schema.json, the schema docs/report-schema.md describes."""
    import jsonschema

    repo = Path(__file__).resolve().parents[2]
    selection = "mem0.85-chunk8192-lpm-c1] or mem0.85-chunk8192-fcfs-c1] or lpm-chunk1024-mem0.85-mrr128-c32]"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(repo / "suites"), "--backend=sim", "-q",
                           "-p", "no:cacheprovider", f"--sglang-report-dir={tmp_path}", "-k", selection],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    (path,) = tmp_path.glob("*/report.json")
    report = json.loads(path.read_text())
    schema = json.loads((repo / "docs" / "report-schema.json").read_text())
    jsonschema.validate(report, schema)
    assert {r["suite"] for r in report["results"]} == {"qwen8b-chat", "qwen8b-shared-prefix"}
    for r in report["results"]:
        assert r["confidence_method"]["method"].startswith("bootstrap over requests")
        assert r["confidence"]["output_throughput_per_gpu"][0] <= r["confidence"]["output_throughput_per_gpu"][1]
    c1 = [e for e in report["ranking"] if e["load"]["concurrency"] == 1]
    assert len(c1) == 2 and all(e["tied"] for e in c1) == (c1[0]["rank"] == c1[1]["rank"])
    # the chat suite gates ttft_ms.p99 on 4 requests at c1: the point says so
    assert any("gates ttft_ms.p99 on 4 requests" in w for r in report["results"] for w in r["warnings"])
