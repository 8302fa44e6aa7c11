"""The simulated server's own tokenizer, chat template and deterministic output tokens.

By default it loads the byte-level BPE shipped in ``sim/data/tokenizer.json`` (built by
:mod:`pytest_sglang_tune.sim.tokenizer_build`); ``--tokenizer-path`` (a ``tokenizer.json`` file or a folder
holding one) or a local ``--model-path`` folder with a ``tokenizer.json`` replaces it, as in SGLang.

Chat requests are rendered with a ChatML template (Qwen's): ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per
message, then the generation prompt ``<|im_start|>assistant\\n``; tokenizers with Llama-3 header tokens get the
Llama-3 template. Output tokens are whole words (tokens that decode to `` word`` and encode back to themselves),
so the generated text re-tokenizes to exactly ``completion_tokens`` tokens. They come from a fixed stream drawn
from the seed, at an offset given by the prompt, so the same prompt and seed give the same text.
"""

from __future__ import annotations

import importlib.resources
import math
import random
import re
import zlib
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["OutputPlan", "SimTokenizer", "TokenizerError"]

_WORD_RE = re.compile(r"^ [a-z]{2,}$")
_EOS_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<|end_of_text|>")
_STREAM_LEN = 1 << 16
NATURAL_MEDIAN_TOKENS = 200  # without ignore_eos, output lengths are log-normal around this median
NATURAL_SIGMA = 0.8


class TokenizerError(Exception):
    """The tokenizer cannot be loaded or a request cannot be tokenized."""


@dataclass(frozen=True)
class OutputPlan:
    """What a request will generate: its token ids and why it stops."""

    output_ids: list[int]
    finish_reason: str  # "length" | "stop"
    matched_stop: int | None


class SimTokenizer:
    """A ``tokenizers`` BPE plus the chat template and the deterministic output-token stream."""

    def __init__(self, tokenizer: Any, path: str, *, seed: int = 0) -> None:
        self._tok = tokenizer
        self.path = path
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.template = "llama3" if "<|start_header_id|>" in vocab else "chatml"
        order = ("<|eot_id|>", *_EOS_CANDIDATES) if self.template == "llama3" else _EOS_CANDIDATES
        eos = next((t for t in order if t in vocab), None)
        if eos is None:
            raise TokenizerError(f"{path}: no end-of-sequence token among {', '.join(_EOS_CANDIDATES)}")
        self.eos_token = eos
        self.eos_id: int = vocab[eos]
        self.special_ids = frozenset(
            i for t, i in vocab.items() if (t.startswith("<|") and t.endswith("|>")) or t in ("<s>", "</s>")
        )
        self.word_ids, self._pieces = self._find_words()
        if len(self.word_ids) < 16:
            raise TokenizerError(f"{path}: too few whole-word tokens to generate text from")
        rng = random.Random(f"sglang-sim-output-{seed}")
        self._stream = array("i", (rng.choice(self.word_ids) for _ in range(_STREAM_LEN)))
        self.seed = seed

    @classmethod
    def load(cls, tokenizer_path: str | None, model_path: str | None = None, *, seed: int = 0) -> SimTokenizer:
        from tokenizers import Tokenizer

        candidates = [p for p in (tokenizer_path, model_path) if p]
        for cand in candidates:
            path = Path(cand)
            file = path / "tokenizer.json" if path.is_dir() else path
            if file.is_file() and file.suffix == ".json":
                try:
                    return cls(Tokenizer.from_file(str(file)), str(file), seed=seed)
                except Exception as exc:
                    raise TokenizerError(f"cannot load tokenizer {file}: {exc}") from exc
            if cand == tokenizer_path and (path.is_dir() or path.suffix == ".json" or path.exists()):
                raise TokenizerError(f"--tokenizer-path {cand!r}: no tokenizer.json there")
        shipped = importlib.resources.files("pytest_sglang_tune.sim") / "data" / "tokenizer.json"
        return cls(Tokenizer.from_str(shipped.read_text("utf-8")), "sim/data/tokenizer.json (shipped)", seed=seed)

    def _find_words(self) -> tuple[tuple[int, ...], dict[int, str]]:
        limit = min(self.vocab_size, 60_000)
        ids = [i for i in range(limit) if i not in self._special_or_none()]
        texts = self._tok.decode_batch([[i] for i in ids], skip_special_tokens=False)
        cands = [(i, t) for i, t in zip(ids, texts, strict=True) if _WORD_RE.match(t)]
        encoded = self._tok.encode_batch([t for _, t in cands], add_special_tokens=False)
        words = tuple(i for (i, _), e in zip(cands, encoded, strict=True) if e.ids == [i])
        pieces = {i: t for i, t in cands}
        return words[:8192], {i: pieces[i] for i in words[:8192]}

    def _special_or_none(self) -> frozenset[int]:
        return getattr(self, "special_ids", frozenset())

    # -- text <-> ids ------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens; fast path for the whole-word tokens the sim generates."""
        pieces = self._pieces
        try:
            return "".join([pieces[i] for i in ids if i != self.eos_id])
        except KeyError:
            text: str = self._tok.decode(list(ids), skip_special_tokens=True)
            return text

    def piece(self, token_id: int) -> str:
        """Text of one generated token (empty for the end-of-sequence token)."""
        return self._pieces.get(token_id, "")

    def check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token id {bad[0]!r} is out of range [0, {self.vocab_size})")

    # -- chat -------------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """Render OpenAI chat messages and the assistant generation prompt."""
        parts: list[str] = []
        if self.template == "llama3":
            parts.append("<|begin_of_text|>")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise TokenizerError(f"messages[{i}] is not an object")
            role = m.get("role")
            if not isinstance(role, str):
                raise TokenizerError(f"messages[{i}].role is missing")
            content = _content_text(m.get("content"), i)
            if self.template == "llama3":
                parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>")
            else:
                parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        parts.append(
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            if self.template == "llama3"
            else "<|im_start|>assistant\n"
        )
        return "".join(parts)

    # -- outputs ----------------------------------------------------------------------------------------------
    def plan_output(
        self,
        input_ids: Sequence[int],
        max_new_tokens: int,
        *,
        ignore_eos: bool,
        min_new_tokens: int = 0,
        request_seed: int | None = None,
    ) -> OutputPlan:
        """The deterministic output of a request (same prompt, seed and limits -> same tokens)."""
        key = zlib.crc32(array("i", input_ids[-4096:]).tobytes()) ^ (len(input_ids) << 1)
        key = (key * 1_000_003 + (request_seed or 0) * 7919 + self.seed) & 0xFFFFFFFF
        n = max(0, max_new_tokens)
        reason, matched = "length", None
        if not ignore_eos:
            rng = random.Random(key)
            natural = max(1, int(NATURAL_MEDIAN_TOKENS * math.exp(rng.gauss(0.0, NATURAL_SIGMA))))
            natural = max(natural, min_new_tokens + 1)
            if natural <= n:
                n, reason, matched = natural, "stop", self.eos_id
        start = key % _STREAM_LEN
        stream = self._stream
        if start + n <= _STREAM_LEN:
            ids = stream[start : start + n].tolist()
        else:
            ids = [stream[(start + i) % _STREAM_LEN] for i in range(n)]
        if reason == "stop":
            ids[-1] = self.eos_id
        return OutputPlan(ids, reason, matched)


def _content_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
        return "".join(texts)
    raise TokenizerError(f"messages[{index}].content must be a string or a list of text parts")
