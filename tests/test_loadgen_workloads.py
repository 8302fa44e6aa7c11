"""New workload kinds and load rules: ShareGPT datasets, multi-turn sessions, gamma arrivals, time windows
and ``max_duration_s`` — pure parts by tables of cases, the rest over real HTTP against the simulated server."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import SIM, serving

from pytest_sglang_tune.backends.base import Endpoint
from pytest_sglang_tune.errors import SuiteError
from pytest_sglang_tune.loadgen.arrivals import arrival_offsets
from pytest_sglang_tune.loadgen.dataset import Exchange, estimate_tokens, exchanges, sample_conversations
from pytest_sglang_tune.loadgen.point import run_point
from pytest_sglang_tune.loadgen.prompts import build_requests
from pytest_sglang_tune.loadgen.samples import PointResult, RequestSample
from pytest_sglang_tune.loadgen.sessions import Turn, build_sessions, turn_body
from pytest_sglang_tune.loadgen.windows import apply_windows, finish_point
from pytest_sglang_tune.loadgen.workload import FROM_DATASET, Load, Workload, parse_scenario
from pytest_sglang_tune.metrics import summarize

SHAREGPT = str(Path(__file__).parent / "fixtures" / "sharegpt_small.json")
MODEL = "Qwen/Qwen3-8B"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with serving(SIM) as url:
        yield url


def wl(scenario: str = "D(32,4)", **kw: object) -> Workload:
    inp, out = parse_scenario(scenario)
    return Workload(name="w", input_len=inp, output_len=out,
                    **{"endpoint": "completions", "num_requests": 6, "warmup_requests": 0, **kw})  # type: ignore[arg-type]


# -- datasets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([("system", "be nice"), ("human", "hi there"), ("gpt", "a b c d e f g h i j")],
         [Exchange("hi there", 13)]),
        ([("user", "q1"), ("assistant", "one"), ("user", "q2"), ("assistant", "two words")],
         [Exchange("q1", 1), Exchange("q2", 3)]),
        ([("human", "unanswered")], []),
        ([("gpt", "reply without a question"), ("human", "  "), ("gpt", "x")], []),
    ],
)
def test_exchanges_pair_user_turns_with_replies(turns: list[tuple[str, str]], expected: list[Exchange]) -> None:
    assert exchanges(turns) == expected


@pytest.mark.parametrize(("text", "tokens"), [("", 1), ("one", 1), ("a b c", 4), ("w " * 100, 130)])
def test_estimate_tokens(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_dataset_sampling_is_deterministic_by_seed_and_cycles() -> None:
    a = sample_conversations(SHAREGPT, 30, seed=1)
    assert a == sample_conversations(SHAREGPT, 30, seed=1)
    assert a != sample_conversations(SHAREGPT, 30, seed=2)
    usable = {c for c in a}
    assert len(usable) == 13  # 14 records, one without a reply; 30 picks cycle through all 13
    assert a[:13] == a[13:26]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "expected a JSON list of ShareGPT records, got dict"),
        ("[1]", "[0]: a record must be an object with 'conversations', got int"),
        ('[{"conversations": [{"from": "human"}]}]', "[0].conversations[0]: needs 'from'/'value'"),
        ('[{"conversations": [{"from": "human", "value": "x"}]}]', "has no record with a user turn followed"),
        ("[not json", "cannot read the dataset"),
    ],
)
def test_bad_datasets_name_the_file_and_record(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SuiteError) as excinfo:
        sample_conversations(str(path), 1, 0)
    assert message in str(excinfo.value) and str(path) in str(excinfo.value)


def test_dataset_requests_carry_the_prompts_and_reference_output_lengths() -> None:
    w = Workload("sg", FROM_DATASET, FROM_DATASET, num_requests=5, endpoint="completions", dataset=SHAREGPT)
    reqs = build_requests(w, MODEL)
    convs = sample_conversations(SHAREGPT, 5, seed=0)
    bodies = [json.loads(r.body) for r in reqs]
    assert [b["prompt"] for b in bodies] == [c[0].prompt for c in convs]
    assert [b["max_tokens"] for b in bodies] == [c[0].reply_tokens for c in convs] == [r.output_tokens for r in reqs]
    fixed = build_requests(Workload("sg", FROM_DATASET, parse_scenario("D(1,7)")[1], num_requests=5,
                                    endpoint="generate", dataset=SHAREGPT), MODEL)
    assert [json.loads(r.body)["sampling_params"]["max_new_tokens"] for r in fixed] == [7] * 5
    assert [json.loads(r.body)["text"] for r in fixed] == [c[0].prompt for c in convs]


@pytest.mark.parametrize("endpoint", ["chat", "completions", "generate"])
def test_dataset_outputs_are_exact_on_the_sim(sim_url: str, endpoint: str) -> None:
    w = Workload("sg", FROM_DATASET, FROM_DATASET, num_requests=8, warmup_requests=1, endpoint=endpoint,  # type: ignore[arg-type]
                 dataset=SHAREGPT, seed=3)
    point = run_point(Endpoint(sim_url, MODEL), w, Load(concurrency=4))
    measured = [s for s in point.samples if not s.warmup]
    assert len(measured) == 8 and all(s.ok for s in measured), [s.error_detail for s in measured]
    assert [s.output_tokens for s in measured] == [s.requested_output_tokens for s in measured]
    assert all(s.input_tokens and s.input_tokens > 0 for s in measured)  # served, recorded next to the estimate


# -- multi-turn sessions ------------------------------------------------------------------------------------


def test_sessions_split_requests_and_are_deterministic() -> None:
    w = wl("U(20,40)/(3,6)", endpoint="chat", num_requests=7, turns=3)
    plans = build_sessions(w, None, warmup=False)
    assert [len(p) for p in plans] == [3, 3, 1] and w.sessions == 3
    assert plans == build_sessions(w, None, warmup=False)
    assert all(3 <= t.output_tokens <= 6 for p in plans for t in p)
    ds = build_sessions(Workload("d", FROM_DATASET, FROM_DATASET, num_requests=4, turns=2, dataset=SHAREGPT),
                        None, warmup=False)
    conv = sample_conversations(SHAREGPT, 2, seed=0)[0]
    assert [t.content for t in ds[0]] == [conv[0].prompt, conv[1 % len(conv)].prompt]


def test_turn_body_carries_the_history() -> None:
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    body = json.loads(turn_body("m", history, Turn("q2", 2, 5)))
    assert body["messages"] == [*history, {"role": "user", "content": "q2"}]
    assert body["max_tokens"] == 5 and body["ignore_eos"] is True and body["stream"] is True


def test_sessions_against_the_sim_grow_by_each_reply(sim_url: str) -> None:
    w = wl("D(40,6)", endpoint="chat", num_requests=8, turns=4, warmup_requests=4)
    point = run_point(Endpoint(sim_url, MODEL), w, Load(concurrency=2))
    measured = [s for s in point.samples if not s.warmup]
    assert len(measured) == 8 and all(s.ok for s in measured), [s.error_detail for s in measured]
    assert [s.output_tokens for s in measured] == [6] * 8
    for session in (measured[:4], measured[4:]):
        assert session[0].input_tokens == 40  # turn 0: a whole prompt of the requested length, exactly
        served = [s.input_tokens or 0 for s in session]
        growth = [b - a for a, b in itertools.pairwise(served)]
        # each turn adds the previous reply (6 tokens), a new 40-token message, and the template's per-turn tokens
        assert len(set(growth)) == 1 and growth[0] > 46, served
        template = [s.input_tokens - s.requested_input_tokens for s in session[1:]]  # type: ignore[operator]
        assert len(set(template)) == 1 and 0 < template[0] < 40, template
    assert all(s.reply is not None and "".join(s.reply) for s in measured[:3])  # the replies that were carried


# -- arrivals, windows, duration -----------------------------------------------------------------------------


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_open_loop_sends_on_the_gamma_schedule(sim_url: str, burstiness: float) -> None:
    w = wl(num_requests=12, burstiness=burstiness, seed=5)
    point = run_point(Endpoint(sim_url, MODEL), w, Load(request_rate=40))
    measured = [s for s in point.samples if not s.warmup]
    expected = arrival_offsets(40, 12, random.Random("5:arrivals"), burstiness=burstiness, exact=True)
    got = [s.intended_send - measured[0].intended_send for s in measured]
    assert got == pytest.approx(expected, abs=1e-9)
    assert max(s.sent - s.intended_send for s in measured) < 0.05


def _sample(sent: float, done: float | None, error: str | None = None) -> RequestSample:
    s = RequestSample(8, 4, intended_send=sent, sent=sent, first_token=sent + 0.01 if done else None, done=done,
                      input_tokens=8, output_tokens=4, error=error)
    return s


@pytest.mark.parametrize(
    ("warmup_s", "cooldown_s", "kept", "window"),
    [
        (0.0, 0.0, [0, 1, 2, 3, 4], (0.0, 10.0)),
        (2.0, 0.0, [2, 3, 4], (2.0, 10.0)),       # sent before 2 s: out
        (0.0, 2.0, [0, 1, 2, 4], (0.0, 8.0)),     # ends after 8 s: out; the failed one counts by its send
        (2.0, 2.0, [2, 4], (2.0, 8.0)),
        (6.0, 6.0, [0, 1, 2, 3, 4], (0.0, 10.0)),  # no window left: kept, with a warning
    ],
)
def test_time_windows(warmup_s: float, cooldown_s: float, kept: list[int], window: tuple[float, float]) -> None:
    samples = [_sample(0.0, 1.0), _sample(1.0, 3.0), _sample(3.0, 5.0), _sample(5.0, 10.0),
               _sample(6.0, None, error="http_500")]
    point = apply_windows(PointResult(samples=samples, started=0.0, finished=10.0), warmup_s, cooldown_s)
    assert [i for i, s in enumerate(point.samples) if not s.warmup] == kept
    assert (point.started, point.finished) == window
    if warmup_s or cooldown_s:
        assert point.warnings
    m = summarize(point, gpus=1)
    assert m["completed"] + m["failed"] == len(kept)


@pytest.mark.parametrize(
    ("cpu_s", "procs", "span", "util", "warned"),
    [
        (0.5, 1, 10.0, 0.05, False),
        (9.5, 1, 10.0, 0.95, True),    # one process busy 95 % of the point: its reads may have lagged
        (9.5, 2, 10.0, 0.475, False),  # the same CPU over two processes: each half busy
        (0.95, 1, 0.5, 1.9, False),    # a point under a second: start-up dominates, no warning
        (0.0, 1, 10.0, None, False),   # not measured
    ],
)
def test_client_cpu_utilisation(cpu_s: float, procs: int, span: float, util: float | None, warned: bool) -> None:
    point = PointResult([_sample(0.0, 1.0)], started=0.0, finished=span, client_cpu_s=cpu_s, client_procs=procs)
    out = finish_point(point, wl(warmup_s=0.1))
    assert out.client_cpu_util == (None if util is None else pytest.approx(util))
    assert any("busy" in w and "--sglang-loadgen-procs" in w for w in out.warnings) is warned
    assert out.started == 0.1  # the windows are applied after the utilisation was taken over the whole point
    assert summarize(out, gpus=1)["client_cpu_util"] == out.client_cpu_util


def test_time_windows_against_the_sim(sim_url: str) -> None:
    w = wl(num_requests=40, warmup_s=0.3, cooldown_s=0.2)
    point = run_point(Endpoint(sim_url, MODEL), w, Load(request_rate=50))
    measured = [s for s in point.samples if not s.warmup]
    assert 0 < len(measured) < 40
    assert all(point.started <= s.sent and (s.done or 0) <= point.finished for s in measured)
    assert "fell outside the measurement window" in " ".join(point.warnings)
    assert point.client_cpu_s > 0 and 0 < (point.client_cpu_util or 0) < 1  # 50 req/s keep the client idle


def test_max_duration_bounds_an_open_loop_point(sim_url: str) -> None:
    w = wl(num_requests=100, max_duration_s=0.5)
    t0 = time.monotonic()
    point = run_point(Endpoint(sim_url, MODEL), w, Load(request_rate=4))  # 100 requests would take 25 s
    took = time.monotonic() - t0
    measured = [s for s in point.samples if not s.warmup]
    assert 1 <= len(measured) <= 4
    assert all(s.intended_send - measured[0].intended_send < 0.5 for s in measured)
    assert took < 5.0  # does not wait for the next arrival (or the unsent ones)
    assert any("were not sent: max_duration_s=0.5" in x for x in point.warnings)
