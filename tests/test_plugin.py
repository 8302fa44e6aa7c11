"""The plugin driven through pytester: collection, ids, options, capacity, and bad input at deploy time."""

from __future__ import annotations

import json
import socket
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SUITE = """\
model: {{path: Qwen/Qwen3-8B, served_name: qwen}}
backends:
  local: {{launcher: {launcher}, ready_timeout: {timeout}{extra}}}
server:
  grid:
    schedule-policy: [lpm, fcfs]
  paired:
    tp-size: [1, 2]
    dp-size: [2, 1]
workloads:
  - name: chat
    scenario: D(16,4)
    num_requests: 2
    concurrency: [1, 4]
"""


def suite_text(launcher: str = "python -m sglang.launch_server", timeout: float = 30, extra: str = "") -> str:
    return SUITE.format(launcher=json.dumps(launcher), timeout=timeout, extra=extra)


def test_inert_without_suites(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest("--backend=docker")  # a backend that is not built would fail if touched
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()


def test_collects_one_item_per_config_workload_load(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_demo=suite_text())
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "tune_demo.yaml::chat?lpm-tp1-dp2-c1?",
        "tune_demo.yaml::chat?lpm-tp1-dp2-c4?",
        "tune_demo.yaml::chat?lpm-tp2-dp1-c1?",
        "tune_demo.yaml::chat?lpm-tp2-dp1-c4?",
        "tune_demo.yaml::chat?fcfs-tp1-dp2-c1?",
        "*8 tests collected*",
    ])


def test_k_selects_by_display_id(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_demo=suite_text())
    result = pytester.runpytest("--collect-only", "-q", "-k", "fcfs and c4")
    result.stdout.fnmatch_lines(["*chat?fcfs-tp1-dp2-c4?", "*chat?fcfs-tp2-dp1-c4?", "*2/8 tests collected*"])


def test_collection_error_names_file_line_and_flag(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_bad=suite_text().replace("schedule-policy", "schedule-polcy"))
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection errors stop the session
    result.stdout.fnmatch_lines([
        "*ERROR collecting tune_bad.yaml*",
        "*FlagError: *tune_bad.yaml:6: unknown SGLang flag *--schedule-polcy* for SGLang 0.5.23; "
        "did you mean --schedule-policy?",
    ])


def test_bad_options_are_usage_errors(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--backend=kubernetes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--backend='kubernetes' is not a valid backend. Valid backends: sim, local, "
                                 "docker, ome.*"])
    result = pytester.runpytest("--gpus=many")
    result.stderr.fnmatch_lines(["*--gpus='many' is not valid: give a whole number of GPUs >= 0.*"])


def test_configs_needing_more_gpus_are_skipped_with_numbers(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_demo=suite_text())
    result = pytester.runpytest("--backend=local", "--gpus=1", "-rs")
    result.assert_outcomes(skipped=8)
    result.stdout.fnmatch_lines(["*config needs 2 GPU(s) (tp × dp × pp) but 1 available (--gpus=1)*"])


def test_require_capacity_turns_skips_into_errors(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", tune_demo=suite_text())
    result = pytester.runpytest("--backend=local", "--gpus=1", "--sglang-require-capacity")
    result.assert_outcomes(errors=8)
    result.stdout.fnmatch_lines(["*CapacityError: config needs 2 GPU(s)*--sglang-require-capacity*"])


def _run_local(pytester: pytest.Pytester, launcher: str, timeout: float = 30, extra: str = "") -> pytest.RunResult:
    pytester.makefile(".yaml", tune_demo=suite_text(launcher, timeout, extra))
    return pytester.runpytest("--backend=local", "--gpus=2", "-k", "lpm-tp1 and c1", "-p", "no:cacheprovider")


def _records(pytester: pytest.Pytester) -> list[dict]:  # type: ignore[type-arg]
    (log,) = (pytester.path / "reports").glob("*/results.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_missing_launcher(pytester: pytest.Pytester) -> None:
    result = _run_local(pytester, "/nonexistent/python -m sglang.launch_server")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*DeployError: launcher not found: '/nonexistent/python' does not exist*"])
    (rec,) = _records(pytester)
    assert rec["status"] == "error" and "launcher not found" in rec["reason"]


def test_server_exiting_during_startup_fails_fast_with_log_tail(pytester: pytest.Pytester) -> None:
    launcher = f"{sys.executable} -c \"import sys; print('RuntimeError: NCCL init failed'); sys.exit(3)\""
    result = _run_local(pytester, launcher, timeout=300)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*NotReady: server died while starting: the server process exited with code 3*",
                                 "*NCCL init failed*"])
    assert result.duration < 60  # far below the 300 s readiness timeout


def test_server_that_never_becomes_ready(pytester: pytest.Pytester) -> None:
    launcher = f"{sys.executable} -c \"import time; time.sleep(120)\""
    result = _run_local(pytester, launcher, timeout=1.5)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*NotReady: server not ready after 2s (last: /health_generate*--sglang-ready-timeout*"])


def test_port_already_taken(pytester: pytest.Pytester) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _run_local(pytester, "python -m sglang.launch_server", extra=f", port: {port}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*DeployError: port {port} on 127.0.0.1 is already in use*"])


def test_hooks_modify_space_and_update_report(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(textwrap.dedent("""
        def pytest_sglang_tune_modify_space(config, suite, configs):
            configs[:] = [c for c in configs if c.display == "lpm-tp1-dp2"]
    """))
    pytester.makefile(".yaml", tune_demo=suite_text())
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*2 tests collected*"])


def test_make_backend_hook_replaces_the_backend(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(textwrap.dedent("""
        from pytest_sglang_tune.backends.base import Capacity
        class NoGpus:
            name = "nogpus"
            def capacity(self):
                return Capacity(0, "custom backend with no GPUs")
            def start(self, spec):
                raise AssertionError("nothing fits: never started")
            def stop(self, deployment):
                pass
        def pytest_sglang_tune_make_backend(config, name, gpus):
            return NoGpus()
    """))
    pytester.makefile(".yaml", tune_demo=suite_text())
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=8)
    result.stdout.fnmatch_lines(["*but 0 available (custom backend with no GPUs)*"])


def test_gpu_need_is_a_property_of_the_launcher(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_sglang_tune.backends.gpus as gpus

    monkeypatch.setattr(gpus, "detect_gpus", lambda: (0, "no GPU on this host (test)"))
    sim = "python -m pytest_sglang_tune.sim"
    pytester.makefile(".yaml", tune_demo=suite_text(sim))
    result = pytester.runpytest("--backend=local", "-rs", "-k", "lpm-tp1 and c1")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*config needs 2 GPU(s) (tp × dp × pp) but 0 available (no GPU on this host*"])
    pytester.makefile(".yaml", tune_demo=suite_text(sim, extra=", needs_gpus: false"))
    result = pytester.runpytest("--backend=local", "-rs", "-k", "lpm-tp1 and c1")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sglang-slo=ttft_ms.p42 <= 1"], "*unknown stat 'p42' in metric 'ttft_ms.p42'; valid stats: mean, p50*"),
        (["--sglang-objective=maximise: goodput"], "*objective direction 'maximise' is not valid*"),
        (["--sglang-fail-on=output_throughput:-5%"], "*--sglang-fail-on needs --sglang-baseline=REPORT.json*"),
        (["--sglang-baseline=nope.json"], "*--sglang-baseline='nope.json': no such report file.*"),
        (["--sglang-gpu-hour-price=free"], "*--sglang-gpu-hour-price='free' is not valid: give a price > 0*"),
    ],
)
def test_bad_grammar_options(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_command_line_slos_and_objective_override_the_suite(pytester: pytest.Pytester) -> None:
    from pytest_sglang_tune.grammar import parse_objective, parse_slo
    from pytest_sglang_tune.options import Options
    from pytest_sglang_tune.suite import load_suite

    path = pytester.makefile(".yaml", tune_demo=suite_text())
    opts = Options(slos=(parse_slo("e2e_ms.p50 < 10"),), objective=parse_objective("minimize: cost_per_mtok"),
                   gpu_hour_price=2.0)
    s = opts.apply(load_suite(path))
    assert [str(x) for x in s.slos] == ["e2e_ms.p50 < 10"]
    assert str(s.objective) == "minimize: cost_per_mtok" and s.gpu_hour_price == 2.0


def test_local_backend_validates_against_the_launchers_real_sglang(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Where the launcher's Python can import SGLang, its real argument parser decides (not the shipped tables)."""
    fake = tmp_path / "fake-sglang"
    (fake / "sglang" / "srt").mkdir(parents=True)
    (fake / "sglang" / "__init__.py").write_text("__version__ = '9.9.9'\n")
    (fake / "sglang" / "srt" / "__init__.py").write_text("")
    (fake / "sglang" / "srt" / "server_args.py").write_text(textwrap.dedent("""
        import dataclasses
        @dataclasses.dataclass
        class ServerArgs:
            model_path: str = ""
            only_in_nine: int = 1
            @staticmethod
            def add_cli_args(parser):
                parser.add_argument("--model-path", type=str)
                parser.add_argument("--only-in-nine", type=int, default=1)
    """))
    wrapper = tmp_path / "python-with-sglang"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    text = textwrap.dedent(f"""\
        model: Qwen/Qwen3-8B
        backends:
          local: {{launcher: "{wrapper} -m sglang.launch_server"}}
        server:
          grid: {{only-in-nine: [2, 3]}}
        workloads: [{{name: chat, scenario: "D(16,4)", concurrency: [1, 4]}}]
    """)
    pytester.makefile(".yaml", tune_demo=text)
    result = pytester.runpytest("--backend=local", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*chat?oin2-c1?*", "*4 tests collected*"])  # a flag only that SGLang knows
    result = pytester.runpytest("--backend=sim", "--collect-only", "-q")  # the sim: the shipped 0.5.23 table
    result.stdout.fnmatch_lines(["*unknown SGLang flag '--only-in-nine' for SGLang 0.5.23*"])


MYCLOUD_CONFTEST = '''
import socket, subprocess, sys
from pytest_sglang_tune.backends.base import Capacity, Endpoint


class CloudDeployment:
    def __init__(self, proc, port, model):
        self.proc = proc
        self.endpoint = Endpoint(f"http://127.0.0.1:{port}", model)
        self.launch_command = list(proc.args)
        self.info = {"image": "mycloud/sglang:1"}

    def poll(self):
        rc = self.proc.poll()
        return None if rc is None else f"exited with {rc}"

    def logs(self, tail=50):
        return ""


class MyCloud:  # only the four required members
    name = "mycloud"

    def capacity(self):
        return Capacity(3, "mycloud quota: 3 GPUs")

    def start(self, spec):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "pytest_sglang_tune.sim", "--model-path", spec.model_path, "--port", str(port),
               "--served-model-name", spec.served_model_name, *spec.argv]
        return CloudDeployment(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT), port,
                               spec.served_model_name)

    def stop(self, deployment):
        deployment.proc.kill()
        deployment.proc.wait()


def pytest_sglang_tune_make_backend(config, name, gpus, context):
    if name == "mycloud":
        return MyCloud()
'''

MYCLOUD_SUITE = """\
model: {path: Qwen/Qwen3-8B, served_name: qwen}
backends:
  mycloud: {region: eu-1}
server:
  grid:
    tp-size: [1, 4]
workloads:
  - name: chat
    scenario: D(16,4)
    num_requests: 2
    warmup_requests: 0
    concurrency: [1]
"""


@pytest.mark.slow
def test_a_conftest_backend_with_four_members_runs_without_editing_the_package(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(MYCLOUD_CONFTEST)
    pytester.makefile(".yaml", tune_cloud=MYCLOUD_SUITE)
    result = pytester.runpytest("--backend=mycloud", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)  # tp4 needs 4 GPUs: its own capacity says 3
    result.stdout.fnmatch_lines(["*sglang-tune run * (backend mycloud, GPUs 3)*",
                                 "*config needs 4 GPU(s) (tp × dp × pp) but 3 available (mycloud quota: 3 GPUs)*"])
    (report,) = (pytester.path / "reports").glob("*/report.json")
    data = json.loads(report.read_text())
    passed = [r for r in data["results"] if r["status"] == "passed"]
    assert passed[0]["image"] == "mycloud/sglang:1" and passed[0]["metrics"]["completed"] == 2


def test_an_unknown_backend_name_with_a_make_backend_plugin_is_checked_when_made(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(MYCLOUD_CONFTEST)
    pytester.makefile(".yaml", tune_cloud=MYCLOUD_SUITE)
    result = pytester.runpytest("--backend=othercloud", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--backend='othercloud': no plugin made a backend of that name (built-in: sim, "
                                 "local, docker, ome*"])
