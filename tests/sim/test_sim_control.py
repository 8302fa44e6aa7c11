"""Issue 11, item 9 and the HTTP side of item 2: the cheap control endpoints of SGLang 0.5.x, reasoning_tokens,
and the front-end cost a client sees (shapes from the SGLang wheels, see ``sim/control.py``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from test_sim_http import MODEL, SimProc, running

from pytest_sglang_tune.sim.frontend import FRONT_END_FIXED_MS

ROOFLINE = {"SGLANG_SIM_PERF_MODEL": "roofline"}


@pytest.fixture(scope="module")
def new(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProc]:
    with running(tmp_path_factory.mktemp("ctl"), "new", ["--dp-size", "2"], ROOFLINE) as proc:
        yield proc


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProc]:
    env = {**ROOFLINE, "SGLANG_SIM_SGLANG_VERSION": "0.5.5.post3"}
    with running(tmp_path_factory.mktemp("ctl_old"), "old", [], env) as proc:
        yield proc


def test_v1_loads_reports_each_dp_rank(new: SimProc) -> None:
    body = requests.get(new.url("/v1/loads")).json()
    assert set(body) == {"timestamp", "version", "accelerator", "num_accelerators", "loads"}
    assert body["version"] == "0.5.23" and body["accelerator"] == "NVIDIA H100 80GB HBM3"
    assert [x["dp_rank"] for x in body["loads"]] == [0, 1]
    first = body["loads"][0]
    for key in ("num_running_reqs", "num_waiting_reqs", "num_used_tokens", "max_total_num_tokens", "token_usage",
                "max_running_requests", "cache_hit_rate", "memory"):
        assert key in first
    assert set(first["memory"]) == {"weight_gb", "kv_cache_gb", "graph_gb", "token_capacity"}
    only = requests.get(new.url("/v1/loads"), params={"dp_rank": 1, "include": "core"}).json()["loads"]
    assert [x["dp_rank"] for x in only] == [1] and "memory" not in only[0]
    bad = requests.get(new.url("/v1/loads"), params={"include": "gpu"})
    assert bad.status_code == 400 and "Invalid include sections" in bad.json()["message"]
    assert requests.get(new.url("/get_load")).status_code == 404  # 0.5.23 has /v1/loads instead


def test_get_load_in_0_5_5(old: SimProc) -> None:
    loads = requests.get(old.url("/get_load")).json()
    assert loads == [
        {"rid": None, "http_worker_ipc": None, "dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0,
         "num_tokens": loads[0]["num_tokens"]}
    ]
    assert requests.get(old.url("/v1/loads")).status_code == 404


def test_tokenize_and_detokenize_round_trip(new: SimProc) -> None:
    tok = requests.post(new.url("/v1/tokenize"), json={"model": MODEL, "prompt": "hello simulated world"}).json()
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] == 40960
    text = requests.post(new.url("/v1/detokenize"), json={"model": MODEL, "tokens": tok["tokens"]}).json()["text"]
    assert text == "hello simulated world"
    many = requests.post(new.url("/tokenize"), json={"prompt": ["a b", "c"]}).json()
    assert isinstance(many["count"], list) and len(many["tokens"]) == 2
    back = requests.post(new.url("/detokenize"), json={"tokens": many["tokens"]}).json()["text"]
    assert back == ["a b", "c"]
    bad = requests.post(new.url("/v1/tokenize"), json={"prompt": 5})
    assert bad.status_code == 400 and "Invalid prompt type" in bad.json()["message"]


def test_abort_request_ends_a_running_stream(new: SimProc) -> None:
    body = {"input_ids": [1000] * 50, "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True},
            "stream": True, "rid": "to-abort"}
    with requests.post(new.url("/generate"), json=body, stream=True) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith(b"data: ")
        assert requests.post(new.url("/abort_request"), json={"rid": "to-abort"}).status_code == 200
        events = [json.loads(x[6:]) for x in lines if x.startswith(b"data: {")]
    assert events[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert events[-1]["meta_info"]["completion_tokens"] < 3000
    assert requests.post(new.url("/abort_request"), json={"rid": "nobody"}).status_code == 200


def test_abort_all(new: SimProc) -> None:
    body = {"model": MODEL, "prompt": [1200] * 20, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with requests.post(new.url("/v1/completions"), json=body, stream=True) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith(b"data: ")
        requests.post(new.url("/abort_request"), json={"abort_all": True})
        events = [json.loads(x[6:]) for x in lines if x.startswith(b"data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "abort"


@pytest.mark.parametrize(("which", "present"), [("new", True), ("old", False)])
def test_generate_meta_info_reasoning_tokens(which: str, present: bool, request: pytest.FixtureRequest) -> None:
    proc: SimProc = request.getfixturevalue(which)
    out = requests.post(proc.url("/generate"), json={"text": "hi", "sampling_params": {"max_new_tokens": 2}}).json()
    assert ("reasoning_tokens" in out["meta_info"]) is present
    if present:
        assert out["meta_info"]["reasoning_tokens"] == 0


def test_a_client_sees_the_front_end_cost_at_low_load(new: SimProc) -> None:
    body = {"model": MODEL, "prompt": "tell me a story", "max_tokens": 3, "stream": True}
    ttfts = []
    for _ in range(5):
        start = time.perf_counter()
        with requests.post(new.url("/v1/completions"), json=body, stream=True) as resp:
            next(x for x in resp.iter_lines() if x.startswith(b"data: {"))
            ttfts.append((time.perf_counter() - start) * 1e3)
            list(resp.iter_lines())
    assert min(ttfts) >= FRONT_END_FIXED_MS  # never faster than SGLang's request path

