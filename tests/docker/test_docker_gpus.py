"""Issue 14 done-when (docker backend): with CUDA_VISIBLE_DEVICES=3,5 on a host whose NVML (fake) reports 8 GPUs,
a ``-n 2`` run requests only GPUs 3 and 5, by UUID, in each container's ``HostConfig.DeviceRequests``.

This host's daemon has no GPU runtime, so a GPU container cannot start; the run's conftest replaces the backend's
create-and-start step with a real ``docker create``, ``docker inspect`` (recorded) and removal, and then fails the
deploy on purpose. Everything before it (the mask, the leases across workers, the request) is the real code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from dockerkit import ours, suite_yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
from gpukit import install_fake_nvml, uuid_of, write_gpu_host

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.docker

CREATE_ONLY = """
import json, os, time
from pytest_sglang_tune.backends.docker import DockerBackend
from pytest_sglang_tune.errors import DeployError

def create_only(self, client, image, kwargs, spec):
    run = {k: v for k, v in kwargs.items() if k != "detach"}
    container = client.containers.create(image, **run)
    try:
        container.reload()
        with open(os.environ["CREATED_LOG"], "a") as fh:
            fh.write(json.dumps({"tp": spec.server_args.get("--tp-size", 1),
                                 "DeviceRequests": container.attrs["HostConfig"].get("DeviceRequests"),
                                 "label": container.labels.get("org.sglang-tune.gpus")}) + "\\n")
        time.sleep(1.0)  # hold the lease a moment: the other worker must take another GPU meanwhile
    finally:
        container.remove(force=True)
    raise DeployError("created, inspected and removed (this daemon cannot start GPU containers)",
                      config_id=spec.config_id)

DockerBackend._create_and_start = create_only
"""


def test_xdist_run_requests_only_the_masked_gpus_by_uuid(pytester: pytest.Pytester, docker_client: Any,
                                                         test_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_gpu_host(monkeypatch, pytester.path, 8)
    install_fake_nvml(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    log = pytester.path / "created.jsonl"
    monkeypatch.setenv("CREATED_LOG", str(log))
    pytester.makeconftest(CREATE_ONLY)
    pytester.makefile(".yaml", tune_dk=suite_yaml(needs_gpus=True, grid="tp-size: [1, 2], schedule-policy: "
                                                                          "[lpm, fcfs]"))
    result = pytester.runpytest_subprocess("--backend=docker", "-n", "2", "-p", "no:cacheprovider", "--tb=line")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*DeployError: created, inspected and removed*"])
    created = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(created) == 4
    allowed = {uuid_of(3), uuid_of(5)}
    for c in created:
        (req,) = c["DeviceRequests"]
        assert req["Driver"] == "" and req["Capabilities"] == [["gpu"]] and req["Count"] == 0
        assert set(req["DeviceIDs"]) <= allowed and len(req["DeviceIDs"]) == c["tp"]
        assert c["label"] == ",".join(req["DeviceIDs"])  # what busy_devices reads back
        if c["tp"] == 2:
            assert req["DeviceIDs"] == [uuid_of(3), uuid_of(5)]  # the mask's order
    assert {u for c in created for u in c["DeviceRequests"][0]["DeviceIDs"]} == allowed
    assert not ours(docker_client)
