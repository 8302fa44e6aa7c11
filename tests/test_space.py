"""Server space expansion: grid × paired × fixed, constraints, config ids and display ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_sglang_tune.errors import SuiteError
from pytest_sglang_tune.space import abbreviate, expand, make_config_id
from pytest_sglang_tune.suite import load_suite

SUITE = """\
model: Qwen/Qwen3-8B
server:
  fixed: {enable-metrics: true}
  grid:
    mem-frac: [0.8, 0.85]
  paired:
    tp-size: [1, 2, 4]
    dp-size: [4, 2, 1]
  constraints: ["tp-size * dp-size <= 4", "tp-size != 4 or mem-fraction-static > 0.8"]
workloads: [{scenario: 'D(10,10)', concurrency: [1]}]
"""


def expand_text(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "tune_s.yaml"
    p.write_text(text)
    return expand(load_suite(p))


def test_grid_times_paired_with_constraints(tmp_path: Path) -> None:
    exp = expand_text(tmp_path, SUITE)
    pairs = sorted((c.args["--mem-fraction-static"], c.args["--tp-size"], c.args["--dp-size"]) for c in exp.configs)
    assert pairs == [(0.8, 1, 4), (0.8, 2, 2), (0.85, 1, 4), (0.85, 2, 2), (0.85, 4, 1)]
    (ex,) = exp.excluded
    assert ex.server_args["--tp-size"] == 4 and ex.server_args["--mem-fraction-static"] == 0.8
    assert "tp-size != 4 or mem-fraction-static > 0.8" in ex.reason
    assert {c.gpus for c in exp.configs} == {4}
    # the abbreviation --mem-frac resolves to the canonical flag everywhere
    assert all("--mem-frac" not in c.args for c in exp.configs)


def test_display_ids_and_config_ids(tmp_path: Path) -> None:
    exp = expand_text(tmp_path, SUITE)
    displays = [c.display for c in exp.configs]
    assert "mem0.8-tp1-dp4" in displays
    assert len(set(displays)) == len(displays)
    cfg = exp.configs[0]
    # non-default flags, sorted, plus a short hash; fixed flags included, defaults left out
    assert cfg.config_id.startswith("dp-size=4,enable-metrics=true,mem-fraction-static=0.8~")
    assert "tp-size" not in cfg.config_id  # tp-size=1 is SGLang's default
    again = expand_text(tmp_path, SUITE.replace("mem-frac:", "mem-fraction-static:"))
    assert [c.config_id for c in again.configs] == [c.config_id for c in exp.configs]


def test_collisions_get_hash_suffix() -> None:
    from pytest_sglang_tune.space import TuneConfig, _with_display_ids

    def cfg(value: object, cid: str) -> TuneConfig:
        return TuneConfig("s", (("--json-model-override-args", value),), (), 1, cid)

    # two different values that render alike ("a+b") must still get distinct, stable ids
    out = _with_display_ids([cfg(["a", "b"], "x~111111"), cfg("a+b", "y~222222"), cfg("c", "z~333333")],
                            ["--json-model-override-args"])
    assert [c.display for c in out] == ["jmoaa+b~1111", "jmoaa+b~2222", "jmoac"]


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--tp-size", 2, "tp2"),
        ("--mem-fraction-static", 0.85, "mem0.85"),
        ("--schedule-policy", "lpm", "lpm"),
        ("--chunked-prefill-size", 4096, "chunk4096"),
        ("--enable-mixed-chunk", True, "emc"),
        ("--enable-mixed-chunk", False, "no-emc"),
        ("--cuda-graph-max-bs-decode", 64, "cg64"),
    ],
)
def test_abbreviations(flag: str, value: object, expected: str) -> None:
    assert abbreviate(flag, value) == expected


def test_config_id_is_order_independent() -> None:
    a = make_config_id({"--a": 1, "--b": 2}, {"--b": 2, "--a": 1})
    b = make_config_id({"--b": 2, "--a": 1}, {"--a": 1, "--b": 2})
    assert a == b and a.startswith("a=1,b=2~")


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ("tp-size <=", "is not a valid expression"),
        ("__import__('os')", "is not allowed"),
        ("tp-sise <= 2", "--tp-sise"),
    ],
)
def test_bad_constraints(tmp_path: Path, constraint: str, message: str) -> None:
    text = f"model: m\nserver:\n  grid: {{tp-size: [1]}}\n  constraints: [\"{constraint}\"]\n" \
           "workloads: [{scenario: 'D(1,2)', concurrency: [1]}]\n"
    with pytest.raises(SuiteError) as excinfo:
        expand_text(tmp_path, text)
    assert message in str(excinfo.value)
    assert "tune_s.yaml:4" in str(excinfo.value)


def test_secret_flag_values_never_reach_ids(tmp_path: Path) -> None:
    text = ("model: m\nserver:\n  fixed: {api-key: sk-live-123456}\n  grid: {admin-api-key: [adm-999999, adm-888888]}\n"
            "workloads: [{scenario: 'D(1,2)', concurrency: [1]}]\n")
    exp = expand_text(tmp_path, text)
    for cfg in exp.configs:
        assert "sk-live" not in cfg.config_id and "adm-" not in cfg.config_id
        assert "sk-live" not in cfg.display and "adm-" not in cfg.display
        assert cfg.args["--api-key"] == "sk-live-123456"  # the server still gets the real value
