"""Suite parsing: good suites, and every kind of bad input with the exact message users read."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_sglang_tune.errors import FlagError, SuiteError
from pytest_sglang_tune.loadgen.workload import LengthDist, Load, parse_scenario
from pytest_sglang_tune.space import expand, validate_suite_file
from pytest_sglang_tune.suite import load_suite

GOOD = """\
model: {path: Qwen/Qwen3-8B, served_name: qwen}
server:
  fixed: {enable-metrics: true}
  grid:
    mem-fraction-static: [0.8, 0.9]
    schedule-policy: [lpm, fcfs]
  paired:
    tp-size: [1, 2, 4]
    dp-size: [4, 2, 1]
  constraints: ["tp-size * dp-size <= 4"]
workloads:
  - name: chat
    scenario: D(1000,250)
    num_requests: 8
    concurrency: [1, 16]
slos: ["ttft_ms.p99 <= 2000", "itl_ms.p95 <= 50"]
objective: {maximize: output_throughput_per_gpu}
"""


def write(tmp_path: Path, text: str, name: str = "tune_x.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_suite_parses(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, GOOD))
    assert suite.name == "x"
    assert suite.model_path == "Qwen/Qwen3-8B" and suite.served_name == "qwen"
    (wl,) = suite.workloads
    assert wl.input_len == LengthDist("D", 1000) and wl.output_len == LengthDist("D", 250)
    assert wl.loads == (Load(concurrency=1), Load(concurrency=16))
    assert [str(s) for s in suite.slos] == ["ttft_ms.p99 <= 2000", "itl_ms.p95 <= 50"]
    assert str(suite.objective) == "maximize: output_throughput_per_gpu"
    summary = validate_suite_file(tmp_path / "tune_x.yaml")
    assert "12 configs" in summary and "24 tests" in summary


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("model: [unclosed\n", "tune_x.yaml:2: YAML syntax error"),
        ("model: m\nworkloads: []\nbogus: 1\n", "tune_x.yaml:3: bogus: unknown field 'bogus'; allowed fields: name,"),
        ("model: m\nserver: {grid: {tp-size: []}}\nworkloads: [{concurrency: [1], scenario: 'D(1,1)'}]\n",
         "server.grid.tp-size: empty grid: the list of values is empty; give at least one value"),
        ("model: m\nworkloads:\n  - name: w\n    scenario: D(10,10)\n",
         "tune_x.yaml:3: workloads.0: a workload needs concurrency (a list of levels) or request_rate (req/s), "
         "or both"),
        ("model: m\nworkloads:\n  - {scenario: 'X(1,2)', concurrency: [1]}\n",
         "workloads.0.scenario: 'X(1,2)' is not a valid scenario; expected D(in,out), "
         "N(mean_in,std_in)/(mean_out,std_out) or U(min_in,max_in)/(min_out,max_out)"),
        ("model: m\nworkloads:\n  - {scenario: 'D(1,2)', concurrency: [0]}\n",
         "workloads.0.concurrency: expected an integer >= 1, got 0"),
        ("model: m\nworkloads:\n  - {scenario: 'D(1,2)', concurrency: [1], endpoint: grpc}\n",
         "endpoint 'grpc' is not valid; choose one of chat, completions, generate"),
        ("model: m\nworkloads:\n  - {scenario: 'D(1,2)', concurrency: [1]}\nslos: ['ttft_ms.p42 <= 3']\n",
         "slos.0: unknown stat 'p42' in metric 'ttft_ms.p42'; valid stats: mean, p50, p90, p95, p99"),
        ("model: m\nworkloads:\n  - {scenario: 'D(1,2)', concurrency: [1]}\nslos: ['latency <= 3']\n",
         "slos.0: unknown metric 'latency'; valid metrics: ttft_ms.<stat>"),
        ("model: m\nworkloads:\n  - {scenario: 'D(1,2)', concurrency: [1]}\nobjective: {maximise: goodput}\n",
         "objective: objective direction 'maximise' is not valid; use maximize or minimize"),
        ("workloads:\n  - {scenario: 'D(1,2)', concurrency: [1]}\n", "missing field 'model'"),
        ("model: m\nserver: {paired: {tp-size: [1, 2], dp-size: [1]}}\n"
         "workloads: [{scenario: 'D(1,2)', concurrency: [1]}]\n",
         "paired lists must all have the same length (they vary together); got tp-size: 2, dp-size: 1"),
        ("", "the suite file is empty"),
        ("model: m\nbackends: {sim: {gpu: tpu_v9}}\nworkloads: [{scenario: 'D(1,2)', concurrency: [1]}]\n",
         "backends.sim.gpu: backends.sim.gpu 'tpu_v9' is not a simulated GPU; choose one of: a100_sxm, h100_sxm, "
         "h200_sxm, b200_sxm, b300_sxm, gb200, gb300, l40s, rtx_pro_6000_server"),
    ],
)
def test_bad_suites(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(SuiteError) as excinfo:
        load_suite(path)
    assert message in str(excinfo.value)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("{mem-fraction-statik: [0.8]}", "--mem-fraction-statik"),
        ("{cuda-graph-max-bs: [8]}", "ambiguous"),
        ("{schedule-policy: [fastest]}", "lpm"),
        ("{tp-size: [two]}", "tp-size"),
    ],
)
def test_bad_flags_name_file_line_and_flag(tmp_path: Path, grid: str, message: str) -> None:
    path = write(tmp_path, f"model: m\nserver:\n  grid: {grid}\nworkloads: [{{scenario: 'D(1,2)', "
                           "concurrency: [1]}]\n")
    with pytest.raises(FlagError) as excinfo:
        expand(load_suite(path))
    text = str(excinfo.value)
    assert message in text
    assert f"{path}:3" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("D(100,20)", (LengthDist("D", 100), LengthDist("D", 20))),
        ("N(1000,100)/(250,20)", (LengthDist("N", 1000, 100), LengthDist("N", 250, 20))),
        ("U(10,20)/(5,6)", (LengthDist("U", 10, 20), LengthDist("U", 5, 6))),
    ],
)
def test_scenarios(text: str, expected: tuple[LengthDist, LengthDist]) -> None:
    assert parse_scenario(text) == expected


def test_num_requests_per_load_level(tmp_path: Path) -> None:
    path = write(tmp_path, "model: m\nworkloads:\n  - {scenario: 'D(1,2)', concurrency: [1, 8], "
                           "num_requests: [2, 16]}\n")
    (wl,) = load_suite(path).workloads
    assert [wl.at_load(i).num_requests for i in range(2)] == [2, 16]
    bad = write(tmp_path, "model: m\nworkloads:\n  - {scenario: 'D(1,2)', concurrency: [1, 8], "
                          "num_requests: [2]}\n", name="tune_y.yaml")
    with pytest.raises(SuiteError, match="num_requests has 1 values but there are 2 load levels"):
        load_suite(bad)


def test_shipped_suites_are_valid() -> None:
    suites = sorted((Path(__file__).parents[1] / "suites").glob("tune_*.yaml"))
    assert len(suites) >= 2
    for path in suites:
        exp = expand(load_suite(path))
        # the trace suite is kept to two configs: a replay takes the trace's own time
        assert len(exp.configs) >= (2 if path.name == "tune_qwen8b_trace.yaml" else 8), path


SHAREGPT = Path(__file__).parent / "fixtures" / "sharegpt_small.json"


def test_new_workload_fields_parse(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sg.json").write_bytes(SHAREGPT.read_bytes())
    path = write(tmp_path, """\
        model: m
        workloads:
          - {name: sg, dataset: data/sg.json, endpoint: completions, concurrency: [2], warmup_s: 1.5,
             cooldown_s: 0.5, burstiness: 0.5, max_duration_s: 30}
          - {name: mt, scenario: 'D(64,8)', turns: 3, request_rate: [4]}
          - {name: plain, scenario: 'D(64,8)', concurrency: [2]}
        """)
    sg, mt, plain = load_suite(path).workloads
    assert sg.dataset == str(tmp_path / "data" / "sg.json")  # relative to the suite file
    assert (sg.warmup_s, sg.cooldown_s, sg.burstiness, sg.max_duration_s) == (1.5, 0.5, 0.5, 30.0)
    assert str(sg.input_len) == "0" and str(sg.output_len) == "0"  # lengths from the dataset
    assert "sharegpt" not in sg.content_dict()["dataset"] and sg.content_dict()["dataset"].startswith("sg.json@")
    assert mt.turns == 3 and mt.sessions == 22  # 64 requests in sessions of 3
    assert plain.turns == 1 and plain.burstiness == 1.0 and plain.warmup_s == 0.0
    # workloads that do not use the new fields keep their content hash
    assert set(plain.content_dict()) == {"input_len", "output_len", "num_requests", "warmup_requests", "endpoint",
                                         "shared_prefix", "seed", "max_duration_s"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("{dataset: nowhere.json, concurrency: [1]}", "workloads.0.dataset: dataset 'nowhere.json' not found"),
        ("{dataset: 3, concurrency: [1]}", "workloads.0.dataset: dataset 3 must be the path of a ShareGPT"),
        ("{dataset: SG, scenario: 'D(1,2)', concurrency: [1]}",
         "workloads.0.scenario: scenario cannot be given with dataset"),
        ("{scenario: 'D(8,2)', turns: 0, concurrency: [1]}", "workloads.0.turns: expected an integer >= 1, got 0"),
        ("{scenario: 'D(8,2)', turns: 2, endpoint: completions, concurrency: [1]}",
         "workloads.0.turns: turns 2 needs endpoint 'chat'"),
        ("{scenario: 'D(8,2)', burstiness: 0, request_rate: [1]}",
         "workloads.0.burstiness: expected a positive number, got 0"),
        ("{scenario: 'D(8,2)', warmup_s: -1, concurrency: [1]}",
         "workloads.0.warmup_s: expected a number of seconds >= 0, got -1"),
        ("{scenario: 'D(8,2)', cooldown_s: soon, concurrency: [1]}",
         "workloads.0.cooldown_s: expected a number of seconds >= 0, got 'soon'"),
    ],
)
def test_bad_new_workload_fields(tmp_path: Path, fields: str, message: str) -> None:
    path = write(tmp_path, f"model: m\nworkloads:\n  - {fields.replace('SG', str(SHAREGPT))}\n")
    with pytest.raises(SuiteError) as excinfo:
        load_suite(path)
    assert message in str(excinfo.value)
    assert f"{path}:3" in str(excinfo.value)


# -- trace workloads ------------------------------------------------------------------------------------------

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "traces"


def test_trace_workloads_parse_with_time_scale_as_the_load_ladder(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    for name in ("mooncake_synthetic_real20.jsonl", "azure_conv_real20.csv"):
        (tmp_path / "traces" / name).write_bytes((TRACES / name).read_bytes())
    path = write(tmp_path, """\
        model: m
        workloads:
          - {name: moon, trace: traces/mooncake_synthetic_real20.jsonl, time_scale: [1, 0.5], window: [1, null],
             max_requests: 10, endpoint: generate}
          - {name: az, trace: traces/azure_conv_real20.csv, concurrency: [2, 8]}
        """)
    moon, az = load_suite(path).workloads
    assert moon.trace == str(tmp_path / "traces" / "mooncake_synthetic_real20.jsonl")  # relative to the suite
    assert (moon.trace_window, moon.max_requests, moon.num_requests) == ((1.0, None), 10, 10)
    assert [ld.label() for ld in moon.loads] == ["ts1", "ts0.5"]
    r1, r2 = (ld.request_rate for ld in moon.loads)
    assert r1 is not None and r2 == pytest.approx(2 * r1, rel=1e-5)  # each level records its mean rate
    levels = [moon.at_load(k) for k in range(2)]
    assert [w.time_scale for w in levels] == [1.0, 0.5] and levels[0].content_hash != levels[1].content_hash
    assert [ld.label() for ld in az.loads] == ["ts1-c2", "ts1-c8"] and az.num_requests == 20
    assert az.at_load(0).content_hash == az.at_load(1).content_hash  # caps are load levels, not content


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("{trace: nowhere.jsonl}", "workloads.0.trace: trace 'nowhere.jsonl' not found (looked for DIR/nowhere.jsonl; "
         "a relative path is relative to the suite file's directory)"),
        ("{trace: MOON, scenario: 'D(1,2)'}", "workloads.0.scenario: scenario cannot be given with trace: lengths come "
         "from the trace"),
        ("{trace: MOON, request_rate: [2]}", "workloads.0.request_rate: request_rate cannot be given with trace: "
         "arrivals come from the trace; scale them with time_scale"),
        ("{trace: MOON, num_requests: 5}", "workloads.0.num_requests: num_requests cannot be given with trace"),
        ("{time_scale: 2, scenario: 'D(1,2)', concurrency: [1]}", "workloads.0.time_scale: time_scale needs trace"),
        ("{trace: MOON, time_scale: [1, 0]}", "workloads.0.time_scale: expected a positive number, got 0"),
        ("{trace: MOON, time_scale: [1, 2], concurrency: [1, 2]}", "workloads.0: with both time_scale and "
         "concurrency, one of them must be a single value"),
        ("{trace: MOON, window: [5, 2]}", "workloads.0.window: window [5, 2] must be [start_s, end_s]"),
        ("{trace: MOON, window: [100, 200]}", "workloads.0.window: the window [100, 200) s holds no request; the "
         "trace's requests lie between 0 and 4.608 s (in MOON)"),
        ("{trace: MOON, max_requests: 0}", "workloads.0.max_requests: expected an integer >= 1, got 0"),
        ("{trace: MOON, turns: 2}", "workloads.0.turns: turns cannot be given with trace"),
        ("{trace: BAD}", "workloads.0.trace: BAD:2: timestamp: timestamp 1 is earlier than the line before (line 1)"),
    ],
)
def test_bad_trace_workloads(tmp_path: Path, fields: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 5, "input_length": 3, "output_length": 1}\n'
                   '{"timestamp": 1, "input_length": 3, "output_length": 1}\n')
    names = {"MOON": str(TRACES / "mooncake_synthetic_real20.jsonl"), "BAD": str(bad), "DIR": str(tmp_path)}
    for key, value in names.items():
        fields, message = fields.replace(key, value), message.replace(key, value)
    path = write(tmp_path, f"model: m\nworkloads:\n  - {fields}\n")
    with pytest.raises(SuiteError) as excinfo:
        load_suite(path)
    assert message in str(excinfo.value)
    assert f"{path}:3" in str(excinfo.value)
