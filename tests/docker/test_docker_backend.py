"""The docker backend on a real Docker Engine: deploy, ready, benchmark, report, teardown, start-up failures."""

from __future__ import annotations

import time
from typing import Any

import pytest
from dockerkit import IMAGE, ours, registry_digest, results, suite_yaml

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.docker


def test_under_xdist_the_workers_notes_reach_the_summary(pytester: pytest.Pytester, docker_client: Any,
                                                          test_image: str) -> None:
    try:
        docker_client.images.remove(test_image, force=True)
    except Exception:
        pass
    pytester.makefile(".yaml", tune_dk=suite_yaml())
    result = pytester.runpytest_subprocess("--backend=docker", "--sglang-fake-gpus=2", "-n", "2",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    # a worker pulled the image; the controller, which deploys nothing, prints the note with the summary
    result.stdout.fnmatch_lines(["*sglang-tune: top configurations*", f"docker: pulled {test_image} in *"])
    assert not ours(docker_client)


def test_pipeline_pulls_deploys_benchmarks_reports_and_removes(pytester: pytest.Pytester, docker_client: Any,
                                                                test_image: str) -> None:
    try:  # make the run pull it: real progress, real digest
        docker_client.images.remove(test_image, force=True)
    except Exception:
        pass
    pytester.makefile(".yaml", tune_dk=suite_yaml())
    # no terminal here: progress lines appear once a step has run --sglang-progress-interval seconds (0: at once)
    result = pytester.runpytest_subprocess("--backend=docker", "-p", "no:cacheprovider", "--sglang-progress-interval=0")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*pulling {test_image} ...*", f"*pulled {test_image} in *s (* layer(s))*"])
    result.stdout.fnmatch_lines(["*sglang-tune: top configurations*", f"docker: pulled {test_image} in *"])
    digest = registry_digest()
    recs = results(pytester.path)
    assert len(recs) == 2
    for rec in recs:
        assert rec["status"] == "passed" and rec["backend"] == "docker"
        assert rec["image"] == test_image
        assert rec["image_digest"] == f"{test_image.rsplit(':', 1)[0]}@{digest}"
        assert rec["gpus_used"] == [0]
        assert rec["launch_command"].startswith("docker run --init --rm --ipc=host -p=127.0.0.1::30000 ")
        assert "python3 -m sglang.launch_server --model-path Qwen/Qwen3-8B --host 0.0.0.0 --port 30000" in \
            rec["launch_command"]
        assert rec["perf_model"]["name"] == "roofline"
        assert rec["metrics"]["completed"] == 4 and rec["metrics"]["output_throughput"] > 0
        assert rec["endpoint_url"].startswith("http://127.0.0.1:")
    logs = list(pytester.path.glob("reports/*/logs/dk-*.log"))
    assert len(logs) == 2 and all("Uvicorn running on http://0.0.0.0:30000" in p.read_text() for p in logs)
    assert not ours(docker_client)


def test_container_that_exits_during_start_up_errors_at_once(pytester: pytest.Pytester, docker_client: Any,
                                                             test_image: str) -> None:
    pytester.makefile(".yaml", tune_dk=suite_yaml(model="nope/unknown-model", grid="schedule-policy: [lpm]"))
    start = time.monotonic()
    result = pytester.runpytest_subprocess("--backend=docker", "-p", "no:cacheprovider", "--tb=line")
    assert time.monotonic() - start < 30
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "*NotReady: server died while starting: the container exited with code 1; cause: model not found or "
        "gated; last error line: error: model 'nope/unknown-model' is unknown to the simulated server*"])
    (rec,) = results(pytester.path)
    assert rec["status"] == "error" and "exited with code 1" in rec["reason"]
    assert "unknown to the simulated server" in rec["log_tail"]


def test_image_that_does_not_exist_names_image_and_daemon_message(pytester: pytest.Pytester, docker_client: Any,
                                                                  test_image: str) -> None:
    missing = "127.0.0.1:5000/sglang-tune-nope:v0"
    pytester.makefile(".yaml", tune_dk=suite_yaml(image=missing, grid="schedule-policy: [lpm]"))
    result = pytester.runpytest_subprocess("--backend=docker", "-p", "no:cacheprovider", "--tb=line")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*DeployError: cannot pull image '{missing}': the Docker Engine said: *"
                                 "manifest unknown*"])


def test_gpu_request_without_gpu_support_is_a_clear_error_and_leaves_nothing(
        pytester: pytest.Pytester, docker_client: Any, test_image: str) -> None:
    pytester.makefile(".yaml", tune_dk=suite_yaml(needs_gpus=True, grid="schedule-policy: [lpm]"))
    result = pytester.runpytest_subprocess("--backend=docker", "--gpus=1", "-p", "no:cacheprovider", "--tb=line")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        f"*DeployError: cannot start a container of '{test_image}': the Docker Engine said: could not select "
        "device driver \"\" with capabilities: [[][[]gpu[]][]] — this daemon has no GPU support*"])
    assert not ours(docker_client), "the failed GPU request left a 'created' container behind"


TIMING_CONFTEST = """
import time
T = {}
def pytest_sessionstart(session):
    T["start"] = time.monotonic()
def pytest_collection_finish(session):
    T["collected"] = time.monotonic()
def pytest_runtest_logreport(report):
    if report.skipped and "skipped" not in T:
        T["skipped"] = time.monotonic()
        open("timing.txt", "w").write(f"{T['skipped'] - T['start']:.3f} {T['skipped'] - T['collected']:.3f}")
"""


def test_zero_gpus_skips_configs_whose_image_needs_gpus_within_a_second(pytester: pytest.Pytester,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # a skip must not talk to any engine
    monkeypatch.setenv("PATH", "/nonexistent")  # and no nvidia-smi: zero GPUs, whatever this host has
    pytester.makeconftest(TIMING_CONFTEST)
    pytester.makefile(".yaml", tune_dk=suite_yaml(needs_gpus=True, grid="tp-size: [1, 2]"))
    result = pytester.runpytest_subprocess("--backend=docker", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*SKIPPED*config needs 1 GPU(s) (tp × dp × pp) but 0 available*",
                                 "*SKIPPED*config needs 2 GPU(s) (tp × dp × pp) but 0 available*"])
    since_start, since_collection = map(float, (pytester.path / "timing.txt").read_text().split())
    assert since_start < 1.0, f"the first skip came {since_start:.2f}s after the session started"
    assert since_collection < 1.0  # the issue: skipped "within a second of collection"


def test_no_image_configured_names_the_setting(pytester: pytest.Pytester, docker_client: Any,
                                               test_image: str) -> None:
    pytester.makefile(".yaml", tune_dk=suite_yaml(grid="schedule-policy: [lpm]").replace(
        f'image: "{IMAGE}", ', ""))
    result = pytester.runpytest_subprocess("--backend=docker", "-p", "no:cacheprovider", "--tb=line")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*DeployError: suite 'dk': no image for the docker backend; set "
                                 "backends.docker.image in the suite*or --sglang-image*"])



def test_without_needs_gpus_the_image_label_decides(pytester: pytest.Pytester, docker_client: Any,
                                                     test_image: str) -> None:
    # the test image says org.sglang-tune.needs-gpus=false: it runs on this GPU-less host without the setting
    pytester.makefile(".yaml", tune_dk=suite_yaml(needs_gpus=None, grid="schedule-policy: [lpm]"))
    result = pytester.runpytest_subprocess("--backend=docker", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1)
    assert not ours(docker_client)


@pytest.mark.parametrize(("labels", "expected"), [
    ({"org.sglang-tune.needs-gpus": "false"}, False), ({"org.sglang-tune.needs-gpus": "True"}, True),
    ({"org.sglang-tune.needs-gpus": "maybe"}, None), ({}, None), (None, None),
])
def test_needs_gpus_label(labels: dict[str, str] | None, expected: bool | None) -> None:
    from pytest_sglang_tune.backends.docker import _needs_gpus_label

    assert _needs_gpus_label({"Config": {"Labels": labels}}) is expected
