"""Request bodies: exact token-id lengths, determinism, shared prefixes, chat calibration."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from pytest_sglang_tune.loadgen.prompts import (
    TOKEN_ID_RANGE,
    WORDS,
    ChatCalibration,
    PreparedRequest,
    build_requests,
)
from pytest_sglang_tune.loadgen.workload import LengthDist, SharedPrefix, Workload, parse_scenario


def workload(scenario: str = "D(100,20)", **kw: Any) -> Workload:
    inp, out = parse_scenario(scenario)
    return Workload(name="w", input_len=inp, output_len=out, **{"num_requests": 40, **kw})


def body(r: PreparedRequest) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(r.body)
    return out


@pytest.mark.parametrize("scenario", ["D(100,20)", "N(300,80)/(50,20)", "U(1,700)/(1,64)"])
def test_completions_prompts_have_the_exact_requested_length(scenario: str) -> None:
    reqs = build_requests(workload(scenario, endpoint="completions"), "my-model")
    assert len(reqs) == 40
    lo, hi = TOKEN_ID_RANGE
    for r in reqs:
        b = body(r)
        assert r.path == "/v1/completions"
        assert len(b["prompt"]) == r.input_tokens >= 1
        assert all(isinstance(i, int) and lo <= i <= hi for i in b["prompt"])
        assert b["max_tokens"] == r.output_tokens >= 1
        assert b["model"] == "my-model" and b["ignore_eos"] is True and b["stream"] is True
        assert b["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    if scenario.startswith("D"):
        assert {(r.input_tokens, r.output_tokens) for r in reqs} == {(100, 20)}
    else:
        assert len({r.input_tokens for r in reqs}) > 10  # lengths really vary


def test_generate_bodies_use_the_native_api() -> None:
    (r,) = build_requests(workload("D(64,9)", endpoint="generate", num_requests=1), "m")
    b = body(r)
    assert r.path == "/generate"
    assert set(b) == {"input_ids", "sampling_params", "stream"}
    assert len(b["input_ids"]) == 64 and b["stream"] is True
    assert b["sampling_params"] == {"max_new_tokens": 9, "ignore_eos": True, "temperature": 0.0}


def test_requests_are_deterministic_for_the_seed_and_independent_of_warmup() -> None:
    w = workload("N(200,50)/(30,10)", endpoint="completions")
    a = build_requests(w, "m")
    assert a == build_requests(w, "m")
    assert a == build_requests(replace(w, warmup_requests=7), "m")
    assert a != build_requests(replace(w, seed=1), "m")
    warm = build_requests(replace(w, warmup_requests=3), "m", warmup=True)
    assert len(warm) == 3 and all(r.warmup for r in warm)
    assert not any(r.warmup for r in a)
    assert len({r.body for r in a}) == len(a)  # every prompt unique


@pytest.mark.parametrize("endpoint", ["completions", "generate"])
def test_shared_prefix_groups_round_robin(endpoint: str) -> None:
    w = workload("U(80,120)/(5,5)", endpoint=endpoint, num_requests=12, shared_prefix=SharedPrefix(3, 50))
    key = "prompt" if endpoint == "completions" else "input_ids"
    ids = [body(r)[key] for r in build_requests(w, "m")]
    for i, p in enumerate(ids):
        assert ids[i % 3][:50] == p[:50]  # same group: same prefix
        assert len(p) == build_requests(w, "m")[i].input_tokens
    assert len({tuple(p[:50]) for p in ids}) == 3  # groups differ
    assert len({tuple(p[50:]) for p in ids}) == 12  # suffixes unique


def test_inputs_shorter_than_the_prefix_are_raised_past_it() -> None:
    w = workload("D(10,5)", endpoint="completions", num_requests=2, shared_prefix=SharedPrefix(1, 32))
    reqs = build_requests(w, "m")
    assert [r.input_tokens for r in reqs] == [33, 33]
    assert body(reqs[0])["prompt"][:32] == body(reqs[1])["prompt"][:32]


def test_chat_prompts_follow_the_calibration() -> None:
    cal = ChatCalibration(tokens_per_word=1.25, overhead=20.0)
    reqs = build_requests(workload("U(50,400)/(8,8)", endpoint="chat"), "m", calibration=cal)
    for r in reqs:
        b = body(r)
        assert r.path == "/v1/chat/completions"
        (msg,) = b["messages"]
        assert msg["role"] == "user"
        words = msg["content"].split(" ")
        assert set(words) <= set(WORDS)
        assert len(words) == cal.words_for(r.input_tokens)
        assert abs(20 + 1.25 * len(words) - r.input_tokens) <= 1.25 / 2 + 1e-9
        assert b["max_tokens"] == 8 and b["ignore_eos"] is True and b["stream"] is True


def test_chat_shared_prefix_words() -> None:
    cal = ChatCalibration(1.0, 10.0)
    w = workload("D(200,4)", endpoint="chat", num_requests=4, shared_prefix=SharedPrefix(2, 100))
    texts = [body(r)["messages"][0]["content"].split(" ") for r in build_requests(w, "m", calibration=cal)]
    assert texts[0][:100] == texts[2][:100] and texts[1][:100] == texts[3][:100]
    assert texts[0][:100] != texts[1][:100]
    assert all(len(t) == 190 for t in texts)


@pytest.mark.parametrize(
    ("probes", "tpw", "overhead"),
    [
        ([(16, 25), (256, 265)], 1.0, 9.0),
        ([(16, 44), (256, 404)], 1.5, 20.0),
        ([(10, 30), (20, 40), (30, 50)], 1.0, 20.0),
        ([(16, 30)], 1.0, 14.0),  # one probe: assume 1 token per word
        ([], 1.0, 0.0),
        ([(16, 30), (16, 30)], 1.0, 14.0),
        ([(256, 20), (16, 30)], 1.0, 14.0),  # nonsense slope: shortest probe at 1 token per word
    ],
)
def test_calibration_fit(probes: list[tuple[int, int]], tpw: float, overhead: float) -> None:
    cal = ChatCalibration.fit(probes)
    assert cal.tokens_per_word == pytest.approx(tpw)
    assert cal.overhead == pytest.approx(overhead)


@pytest.mark.parametrize(
    ("cal", "tokens", "words"),
    [
        (ChatCalibration(1.0, 9.0), 100, 91),
        (ChatCalibration(1.5, 20.0), 320, 200),
        (ChatCalibration(1.0, 50.0), 10, 1),  # never fewer than one word
    ],
)
def test_words_for(cal: ChatCalibration, tokens: int, words: int) -> None:
    assert cal.words_for(tokens) == words


def test_unknown_endpoint_is_named() -> None:
    w = Workload("odd", LengthDist("D", 4), LengthDist("D", 4), endpoint="embeddings")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'embeddings' is not one of chat, completions, generate"):
        build_requests(w, "m")
