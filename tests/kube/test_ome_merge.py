"""OME's merge of the engine runner over the runtime's, and Kubernetes' $(VAR) expansion (pinned by tables)."""

from __future__ import annotations

from typing import Any

import pytest
from fakecluster import test_runtime

from pytest_sglang_tune.backends.ome_merge import effective_argv, expand, merge_engine, strategic_merge
from pytest_sglang_tune.flags import load_flag_table

pytestmark = pytest.mark.kube


@pytest.mark.parametrize(("base", "patch", "expected"), [
    ({"command": ["a", "b"]}, {"command": ["c"]}, {"command": ["c"]}),                    # lists replace
    ({"args": ["--x"]}, {"args": ["--y"]}, {"args": ["--y"]}),
    ({"image": "a"}, {"args": ["--y"]}, {"image": "a", "args": ["--y"]}),
    ({"resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "1"}}},
     {"resources": {"limits": {"nvidia.com/gpu": "2"}}},
     {"resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "2"}}}),                     # maps merge by key
    ({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
     {"env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
     {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}),
    ({"ports": [{"containerPort": 8080, "name": "http1"}]}, {"ports": [{"containerPort": 9090}]},
     {"ports": [{"containerPort": 8080, "name": "http1"}, {"containerPort": 9090}]}),
    ({"tolerations": [{"key": "a"}]}, {"tolerations": [{"key": "b"}]}, {"tolerations": [{"key": "b"}]}),
    ({"nodeSelector": {"a": "1"}}, {"nodeSelector": {"a": None}}, {"nodeSelector": {}}),  # null deletes
])
def test_strategic_merge(base: dict[str, Any], patch: dict[str, Any], expected: dict[str, Any]) -> None:
    assert strategic_merge(base, patch) == expected


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("$(MODEL_PATH)", {"MODEL_PATH": "/mnt/models"}, "/mnt/models"),
    ("--x=$(A)/$(B)", {"A": "1", "B": "2"}, "--x=1/2"),
    ("$(UNDEFINED)", {}, "$(UNDEFINED)"),
    ("$$(MODEL_PATH)", {"MODEL_PATH": "/m"}, "$(MODEL_PATH)"),
    ("plain", {"A": "1"}, "plain"),
])
def test_var_expansion(text: str, env: dict[str, str], expected: str) -> None:
    assert expand(text, env) == expected


def test_none_engine_and_none_runtime_engine() -> None:
    assert merge_engine({"runner": {"image": "x"}}, None) is None
    assert merge_engine(None, {"runner": {"args": ["--a"]}}) == {"runner": {"args": ["--a"]}}


def test_runner_args_are_appended_to_the_runtime_command_and_win() -> None:
    """Why the flags go to ``args``: the runtime's line stays whole and argparse keeps the last value."""
    runtime_engine = test_runtime()["spec"]["engineConfig"]
    isvc_engine = {"runner": {"name": "ome-container", "args": ["--tp-size", "2", "--mem-fraction-static", "0.7"],
                              "resources": {"limits": {"nvidia.com/gpu": "2"}}}}
    merged = merge_engine(runtime_engine, isvc_engine)
    assert merged is not None
    runner = merged["runner"]
    argv = effective_argv({**runner, "env": [{"name": "MODEL_PATH", "value": "/mnt/models/qwen"}]})
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    assert argv[-4:] == ["--tp-size", "2", "--mem-fraction-static", "0.7"]
    assert "/mnt/models/qwen" in argv
    assert runner["resources"]["limits"] == {"cpu": 10, "memory": "30Gi", "nvidia.com/gpu": "2"}
    assert runner["ports"] == runtime_engine["runner"]["ports"]
    parsed = vars(load_flag_table("0.5.5.post3").build_parser("x").parse_args(argv[3:]))
    assert parsed["tp_size"] == 2 and parsed["mem_fraction_static"] == 0.7  # the runtime's --mem-frac 0.9 lost
    assert parsed["model_path"] == "/mnt/models/qwen"


def test_replacing_the_command_would_lose_the_runtime_launch_line() -> None:
    runtime_engine = test_runtime()["spec"]["engineConfig"]
    merged = merge_engine(runtime_engine, {"runner": {"command": ["python3", "-m", "sglang.launch_server",
                                                                  "--tp-size", "2"]}})
    assert merged is not None
    argv = effective_argv(merged["runner"])
    assert "--model-path" not in argv and "--port" not in argv
