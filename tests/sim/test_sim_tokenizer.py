"""The sim's own tokenizer: shipped BPE, chat template, deterministic outputs."""

from __future__ import annotations

import importlib.resources
import itertools
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from pytest_sglang_tune.sim.tokenizer import SimTokenizer, TokenizerError
from pytest_sglang_tune.sim.tokenizer_build import SPECIAL_TOKENS, VOCAB_SIZE, corpus

SHIPPED = Path(str(importlib.resources.files("pytest_sglang_tune.sim") / "data" / "tokenizer.json"))


@pytest.fixture(scope="module")
def tok() -> SimTokenizer:
    return SimTokenizer.load(None, "Qwen/Qwen3-8B", seed=0)


def test_shipped_tokenizer_is_a_small_byte_level_bpe(tok: SimTokenizer) -> None:
    assert tok.vocab_size == VOCAB_SIZE
    assert tok.path.endswith("(shipped)")
    assert SHIPPED.stat().st_size < 400_000
    assert tok.eos_token == "<|im_end|>" and tok.eos_id == SPECIAL_TOKENS.index("<|im_end|>")
    text = "Ünïcode ☃ and the people of 2024!"
    assert tok._tok.decode(tok.encode(text)) == text  # byte-level: any text round-trips


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        (" the people market money", 4),  # common words are single tokens with their leading space
        ("The", 1),
        (" water", 1),
    ],
)
def test_common_words_are_single_tokens(tok: SimTokenizer, text: str, tokens: int) -> None:
    assert len(tok.encode(text)) == tokens


def test_chat_template_is_chatml_and_counts_add_up(tok: SimTokenizer) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": " the people"}]
    text = tok.apply_chat_template(messages)
    assert (
        text
        == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n the people<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok.encode(text)
    assert ids.count(tok.eos_id) == 2 and ids.count(SPECIAL_TOKENS.index("<|im_start|>")) == 3
    # every extra word of content adds exactly one token
    longer = tok.encode(tok.apply_chat_template([{"role": "user", "content": " the people" + " water" * 50}]))
    base = tok.encode(tok.apply_chat_template([{"role": "user", "content": " the people"}]))
    assert len(longer) == len(base) + 50


def test_chat_content_parts_and_bad_messages(tok: SimTokenizer) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert "user\nab<|im_end|>" in tok.apply_chat_template(parts)
    with pytest.raises(TokenizerError, match=r"messages\[0\].role"):
        tok.apply_chat_template([{"content": "x"}])


def test_outputs_are_deterministic_per_seed_and_prompt(tok: SimTokenizer) -> None:
    prompt = list(range(1000, 1500))
    a = tok.plan_output(prompt, 100, ignore_eos=True)
    assert a == tok.plan_output(prompt, 100, ignore_eos=True)
    assert a.output_ids != tok.plan_output(prompt[:-1], 100, ignore_eos=True).output_ids
    other = SimTokenizer.load(None, seed=1)
    assert a.output_ids != other.plan_output(prompt, 100, ignore_eos=True).output_ids
    assert a.output_ids != tok.plan_output(prompt, 100, ignore_eos=True, request_seed=5).output_ids


@pytest.mark.parametrize("max_new", [1, 17, 250, 2000])
def test_ignore_eos_runs_exactly_to_max_tokens(tok: SimTokenizer, max_new: int) -> None:
    plan = tok.plan_output([5, 6, 7], max_new, ignore_eos=True)
    assert len(plan.output_ids) == max_new and plan.finish_reason == "length"
    assert tok.eos_id not in plan.output_ids


def test_without_ignore_eos_outputs_stop_at_eos_within_max_tokens(tok: SimTokenizer) -> None:
    plans = [tok.plan_output([i, i + 1], 400, ignore_eos=False) for i in range(1000, 1200)]
    stops = [p for p in plans if p.finish_reason == "stop"]
    assert 0.4 < len(stops) / len(plans) < 0.95  # log-normal lengths around 200 tokens, capped at 400
    assert all(p.output_ids[-1] == tok.eos_id and p.matched_stop == tok.eos_id for p in stops)
    assert all(len(p.output_ids) <= 400 for p in plans)
    assert all(len(p.output_ids) == 400 for p in plans if p.finish_reason == "length")
    with_min = tok.plan_output([3, 4], 400, ignore_eos=False, min_new_tokens=399)
    assert len(with_min.output_ids) == 400


def test_generated_text_retokenizes_to_the_completion_length(tok: SimTokenizer) -> None:
    for i in range(20):
        plan = tok.plan_output([i + 2000] * 10, 64, ignore_eos=True)
        text = tok.decode(plan.output_ids)
        assert tok.encode(text) == plan.output_ids
        assert text == "".join(tok.piece(t) for t in plan.output_ids)


def test_tokenizer_path_is_honoured(tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(SHIPPED.read_bytes())
    loaded = SimTokenizer.load(str(folder), "Qwen/Qwen3-8B")
    assert loaded.path == str(folder / "tokenizer.json")
    assert loaded.encode(" the people") == SimTokenizer.load(None).encode(" the people")
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json"):
        SimTokenizer.load(str(tmp_path), None)


def test_a_foreign_llama3_style_tokenizer_gets_the_llama3_template(tmp_path: Path) -> None:
    base = Tokenizer.from_file(str(SHIPPED))
    base.add_special_tokens(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    path = tmp_path / "tokenizer.json"
    base.save(str(path))
    tok = SimTokenizer.load(str(path))
    assert tok.template == "llama3" and tok.eos_token == "<|eot_id|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>")


def test_training_corpus_is_deterministic() -> None:
    first = list(itertools.islice(corpus(), 200))
    assert first == list(itertools.islice(corpus(), 200))
    assert all(line.endswith(".") for line in first)


def test_check_ids_rejects_out_of_range(tok: SimTokenizer) -> None:
    tok.check_ids([0, 1000, 7999])
    with pytest.raises(TokenizerError, match="out of range"):
        tok.check_ids([1, VOCAB_SIZE])
