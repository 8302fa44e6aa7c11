"""Pure pieces of the docker backend: exit descriptions, log classification, image names, digests, ulimits, owners."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from pytest_sglang_tune.backends.docker_ops import (
    classify,
    describe_exit,
    owner_alive,
    owner_of_this_process,
    parse_ulimits,
    repo_digest,
    split_image,
)

pytestmark = pytest.mark.docker


@pytest.mark.parametrize(("tail", "cause"), [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "CUDA out of memory"),
    ("launch_server.py: error: unrecognized arguments: --bogus", "invalid argument"),
    ("launch_server.py: error: argument --schedule-policy: invalid choice: 'x'", "invalid argument"),
    ("OSError: You are trying to access a gated repo.", "model not found or gated"),
    ("huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error", "model not found or gated"),
    ("error: model 'nope/x' is unknown to the simulated server", "model not found or gated"),
    ("Segmentation fault", "other"),
])
def test_classify_last_log_lines(tail: str, cause: str) -> None:
    assert classify(tail) == cause


@pytest.mark.parametrize(("state", "tail", "expected"), [
    ({"Status": "exited", "ExitCode": 137, "OOMKilled": True}, "",
     "the container exited with code 137; OOMKilled (the container hit its memory limit); "
     "cause: out of host memory (OOMKilled)"),
    ({"Status": "exited", "ExitCode": 1, "OOMKilled": False}, "loading\nRuntimeError: CUDA out of memory\n",
     "the container exited with code 1; cause: CUDA out of memory; "
     "last error line: RuntimeError: CUDA out of memory"),
    ({"Status": "dead", "ExitCode": 255, "Error": "driver failed"}, "",
     "the container is dead with code 255; daemon: driver failed; cause: other"),
])
def test_describe_exit(state: dict[str, object], tail: str, expected: str) -> None:
    assert describe_exit(state, tail) == expected


@pytest.mark.parametrize(("image", "expected"), [
    ("lmsysorg/sglang:v0.5.5.post3-cu129-amd64", ("lmsysorg/sglang", "v0.5.5.post3-cu129-amd64")),
    ("127.0.0.1:5000/sglang-tune-sim", ("127.0.0.1:5000/sglang-tune-sim", "latest")),
    ("127.0.0.1:5000/sim:v1", ("127.0.0.1:5000/sim", "v1")),
    ("repo/x@sha256:abc", ("repo/x", "sha256:abc")),
])
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    assert split_image(image) == expected


def test_repo_digest_prefers_the_image_repository() -> None:
    attrs = {"RepoDigests": ["other/x@sha256:1", "127.0.0.1:5000/sim@sha256:2"]}
    assert repo_digest(attrs, "127.0.0.1:5000/sim:latest") == "127.0.0.1:5000/sim@sha256:2"
    assert repo_digest(attrs, "third/y:1") == "other/x@sha256:1"
    assert repo_digest({}, "a/b") is None


@pytest.mark.parametrize(("value", "expected"), [
    (None, []),
    ({"memlock": -1}, [("memlock", -1, -1)]),
    ({"stack": {"soft": 1024, "hard": 2048}, "nofile": 65535}, [("stack", 1024, 2048), ("nofile", 65535, 65535)]),
])
def test_parse_ulimits(value: object, expected: list[tuple[str, int, int]]) -> None:
    assert parse_ulimits(value) == expected


def test_parse_ulimits_rejects_a_list() -> None:
    with pytest.raises(ValueError, match="ulimits must be a mapping"):
        parse_ulimits(["memlock=-1"])


def test_owner_alive_tells_live_dead_recycled_and_foreign_owners() -> None:
    me = owner_of_this_process()
    assert owner_alive(me)
    host, pid, start = me.split(":")
    assert not owner_alive(f"{host}:{pid}:{int(start) + 1}")  # same pid, another process (recycled pid)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not owner_alive(f"{socket.gethostname()}:{child.pid}:")
    assert owner_alive(f"another-host-{os.getpid()}:1:1")  # cannot tell on another host: keep it


def test_docker_run_command_for_the_winner() -> None:
    import shlex

    from pytest_sglang_tune.backends.docker_ops import docker_run_command

    line = docker_run_command(image="lmsysorg/sglang:v0.5.5.post3-cu129-amd64", model_path="Qwen/Qwen3-8B",
                              served_model_name="qwen3-8b", gpus=2,
                              argv=["--tp-size", "2", "--api-key", "sk-live-123", "--schedule-policy", "lpm"],
                              settings={"env": {"HF_TOKEN": "hf_abc", "NCCL_DEBUG": "INFO"}, "shm_size": "16g",
                                        "ulimits": {"memlock": -1}})
    assert "sk-live-123" not in line and "hf_abc" not in line
    words = shlex.split(line)
    assert words[:2] == ["docker", "run"]
    assert ["--gpus", "2"] == words[words.index("--gpus"):words.index("--gpus") + 2]
    assert "--shm-size=16g" in words and "--ipc=host" not in words and "--ulimit=memlock=-1:-1" in words
    assert "HF_TOKEN" in words and "NCCL_DEBUG=INFO" in words            # -e HF_TOKEN: passed from the shell
    cmd = words[words.index("lmsysorg/sglang:v0.5.5.post3-cu129-amd64") + 1:]
    assert cmd[:7] == ["python3", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen3-8B", "--host", "0.0.0.0"]
    assert cmd[-8:] == ["--tp-size", "2", "--api-key", "$API_KEY", "--schedule-policy", "lpm",
                        "--served-model-name", "qwen3-8b"]
    assert '--api-key "$API_KEY"' in line   # the shell fills it in when the line runs
    plain = docker_run_command(image="i", model_path="m", served_model_name="m", gpus=0, argv=[])
    assert "--gpus" not in plain and "--ipc=host" in plain and "-p 30000:30000" in plain
