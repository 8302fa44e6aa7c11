"""Deterministic request bodies for a workload.

* ``completions`` / ``generate``: prompts are token ids (``prompt`` / ``input_ids``), so the served input
  length is exactly the requested one. Ids are drawn from ``TOKEN_ID_RANGE`` (1000..7999): every tokenizer
  with at least 8k entries has them, and it stays clear of the low ids where tokenizers keep special, byte and
  unused tokens.
* ``chat``: text made of common English words, most of which are one token in any BPE vocabulary. The server's
  own count is learnt by probe requests (non-streamed, one output token): ``"the"`` once and 33 times give the
  chat template's overhead, then each candidate word repeated 32 times shows whether the server counts it as
  exactly one token; prompts drawn from the verified words land on the requested length exactly. When fewer
  than 8 words verify (an unusual tokenizer), a least-squares line through two probes (``ChatCalibration.fit``)
  brings the served ``prompt_tokens`` within a few tokens.
* Shared prefix: request ``i`` belongs to group ``i % groups`` (round robin); its prompt is the group's prefix
  (``prefix_len`` tokens, the same for every request of the group) followed by a unique suffix up to the
  requested input length. An input length at or below ``prefix_len`` is raised to ``prefix_len + 1``.
* Every request asks for exactly its output length: ``max_tokens`` (``max_new_tokens`` for ``/generate``) with
  ``ignore_eos: true``, greedy sampling, and a stream with running usage.

Randomness is ``random.Random`` seeded with strings derived from ``workload.seed``; warmup requests use their
own stream so the measured requests do not depend on the warmup count.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_sglang_tune.loadgen.workload import Workload

PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "generate": "/generate",
}
TOKEN_ID_RANGE: tuple[int, int] = (1000, 7999)  # inclusive
STREAM_OPTIONS: dict[str, bool] = {"include_usage": True, "continuous_usage_stats": True}

WORDS: tuple[str, ...] = tuple(
    """
the of and to in is was for on that with as by at from his her they have are this which be or had not but
one all were when we there can an who their has more been if would she will about out so up them time into
than only some other its then could two these may first any new like our over also did after most where way
made many people years just well back me work year day good use very him make because such through those
each much before must long three right down even still should here how life same between own world part last
never under while might great old state school off found home small city hand high place without house
during end group since again head word water side look name set number public line left general point give
women free night less open case power keep game order real second body change run book form play late light
love live field river story land team music often feel tell list early best market money plan sea road art
food ask fire want air song need find south north west east green red blue black white
""".split()
)


@dataclass(frozen=True)
class PreparedRequest:
    """One request ready to send: its path, its JSON body (bytes), and the lengths it asks for."""

    path: str
    body: bytes
    input_tokens: int  # requested input length
    output_tokens: int  # requested output length
    warmup: bool = False


@dataclass(frozen=True)
class ChatCalibration:
    """How the server counts a chat prompt of ``w`` words: ``overhead + tokens_per_word * w`` tokens."""

    tokens_per_word: float = 1.0
    overhead: float = 0.0
    vocab: tuple[str, ...] = ()  # words the server counts as exactly one token each (``exact``); else WORDS

    @property
    def exact(self) -> bool:
        """Whether lengths are exact: a one-token-per-word vocabulary verified against the server."""
        return bool(self.vocab) and self.tokens_per_word == 1.0 and float(self.overhead).is_integer()

    @classmethod
    def fit(cls, probes: Sequence[tuple[int, int]]) -> ChatCalibration:
        """Least-squares line through ``(words, served prompt_tokens)``; one probe assumes 1 token/word."""
        pts = [(float(w), float(p)) for w, p in probes]
        if not pts:
            return cls()
        if len(pts) == 1 or len({w for w, _ in pts}) == 1:
            w, p = pts[0]
            return cls(1.0, p - w)
        n = len(pts)
        mw = sum(w for w, _ in pts) / n
        mp = sum(p for _, p in pts) / n
        sww = sum((w - mw) ** 2 for w, _ in pts)
        slope = sum((w - mw) * (p - mp) for w, p in pts) / sww
        if not slope > 0:  # nonsense: keep the shortest probe's overhead at 1 token per word
            w, p = min(pts)
            return cls(1.0, p - w)
        return cls(slope, mp - slope * mw)

    def words_for(self, tokens: int, *, with_overhead: bool = True) -> int:
        """Words of content making ``tokens`` tokens (a whole prompt, or without overhead a part of one)."""
        body = tokens - (self.overhead if with_overhead else 0.0)
        return max(1, round(body / self.tokens_per_word))


def token_ids(rng: random.Random, n: int) -> list[int]:
    """``n`` pseudo-random token ids from ``TOKEN_ID_RANGE``."""
    lo, hi = TOKEN_ID_RANGE
    span = hi - lo + 1
    return [lo + int(rng.random() * span) for _ in range(n)]


def words(rng: random.Random, n: int, vocab: Sequence[str] = WORDS) -> list[str]:
    """``n`` pseudo-random words from ``vocab`` (default ``WORDS``)."""
    vocab = vocab or WORDS
    k = len(vocab)
    return [vocab[int(rng.random() * k)] for _ in range(n)]


PROBE_WORDS_SHORT = 16  # the short probe of a fitted calibration
VOCAB_PROBE_WORDS = 32  # repetitions of a candidate word in its probe
VOCAB_CANDIDATES: tuple[str, ...] = WORDS[:48]


def repeated(word: str, n: int) -> str:
    """``word`` ``n`` times, space separated: a probe that counts the word's tokens."""
    return " ".join([word] * n)


def probe_text(n_words: int) -> str:
    """The text of a calibration probe of ``n_words`` words (same vocabulary as the workload's prompts)."""
    return " ".join(words(random.Random("chat-calibration-probe"), n_words))


def chat_body(model: str, content: str, max_tokens: int, *, stream: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = STREAM_OPTIONS
    return body


def completions_body(model: str, ids: list[int], max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": ids,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": STREAM_OPTIONS,
    }


def generate_body(ids: list[int], max_new_tokens: int) -> dict[str, Any]:
    return {
        "input_ids": ids,
        "stream": True,
        "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True, "temperature": 0.0},
    }


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def text_body(endpoint: str, model: str, text: str, n_out: int) -> dict[str, Any]:
    """A streaming body carrying ``text`` as the prompt (dataset prompts, which are text, not ids)."""
    if endpoint == "chat":
        return chat_body(model, text, n_out)
    if endpoint == "completions":
        body = completions_body(model, [], n_out)
        body["prompt"] = text
        return body
    body = generate_body([], n_out)
    del body["input_ids"]
    return {"text": text, **body}


def _dataset_requests(workload: Workload, model: str, count: int, stream: str, warmup: bool,
                      cal: ChatCalibration) -> list[PreparedRequest]:
    from pytest_sglang_tune.loadgen.dataset import estimate_tokens, sample_conversations
    from pytest_sglang_tune.loadgen.workload import FROM_DATASET

    assert workload.dataset is not None
    rng = random.Random(f"{workload.seed}:{stream}:output")
    out: list[PreparedRequest] = []
    for conv in sample_conversations(workload.dataset, count, workload.seed, stream=stream):
        first = conv[0]
        n_out = first.reply_tokens if workload.output_len == FROM_DATASET else max(1, workload.output_len.sample(rng))
        n_in = estimate_tokens(first.prompt) + (round(cal.overhead) if workload.endpoint == "chat" else 0)
        body = text_body(workload.endpoint, model, first.prompt, n_out)
        out.append(PreparedRequest(PATHS[workload.endpoint], _dumps(body), n_in, n_out, warmup))
    return out


def build_requests(
    workload: Workload, model: str, *, warmup: bool = False, calibration: ChatCalibration | None = None
) -> list[PreparedRequest]:
    """The workload's warmup (``warmup=True``) or measured requests in send order; deterministic."""
    count = workload.warmup_requests if warmup else workload.num_requests
    stream = "warmup" if warmup else "measure"
    rng = random.Random(f"{workload.seed}:{stream}")
    endpoint = workload.endpoint
    if endpoint not in PATHS:
        raise ValueError(f"workload {workload.name!r}: endpoint {endpoint!r} is not one of {', '.join(PATHS)}")
    cal = calibration or ChatCalibration()
    if workload.trace is not None:
        raise ValueError(f"workload {workload.name!r} replays a trace: its requests come from loadgen.trace")
    if workload.dataset is not None:
        return _dataset_requests(workload, model, count, stream, warmup, cal)
    sp = workload.shared_prefix
    prefixes: list[Any] = []
    if sp is not None and sp.groups > 0 and sp.prefix_len > 0:
        for g in range(sp.groups):
            grng = random.Random(f"{workload.seed}:prefix:{g}")
            if endpoint == "chat":
                prefixes.append(words(grng, cal.words_for(sp.prefix_len, with_overhead=False), cal.vocab))
            else:
                prefixes.append(token_ids(grng, sp.prefix_len))
    out: list[PreparedRequest] = []
    for i in range(count):
        n_in = max(1, workload.input_len.sample(rng))
        n_out = max(1, workload.output_len.sample(rng))
        prefix = prefixes[i % len(prefixes)] if prefixes else None
        if prefix is not None and sp is not None:
            n_in = max(n_in, sp.prefix_len + 1)
        if endpoint == "chat":
            total = cal.words_for(n_in)
            head: list[str] = list(prefix) if prefix is not None else []
            text = " ".join(head + words(rng, max(1, total - len(head)), cal.vocab))
            body = chat_body(model, text, n_out)
        else:
            head_ids: list[int] = list(prefix) if prefix is not None else []
            ids = head_ids + token_ids(rng, n_in - len(head_ids))
            body = completions_body(model, ids, n_out) if endpoint == "completions" else generate_body(ids, n_out)
        out.append(PreparedRequest(PATHS[endpoint], _dumps(body), n_in, n_out, warmup))
    return out


async def calibrate_chat(count: Callable[[str], Awaitable[int]],
                         input_mean: float) -> tuple[ChatCalibration, str | None]:
    """How a server counts chat prompts, from ``count(text)`` = the prompt tokens it serves for ``text`` as one user
    message: exact when enough one-token words are verified, else a line fitted through two probes (with a
    warning). The load generator asks a live server; ``sglang-tune predict`` asks the sim's tokenizer."""
    one = await count("the")
    many = await count(repeated("the", 33))
    if many - one == 32:  # "the" is one token: the overhead is exact
        overhead = one - 1
        counts = await asyncio.gather(*(count(repeated(w, VOCAB_PROBE_WORDS)) for w in VOCAB_CANDIDATES))
        vocab = tuple(w for w, c in zip(VOCAB_CANDIDATES, counts, strict=True) if c == overhead + VOCAB_PROBE_WORDS)
        if len(vocab) >= 8:
            return ChatCalibration(1.0, float(overhead), vocab), None
    long = int(min(max(input_mean, 128), 4096))
    probes = [(n, await count(probe_text(n))) for n in (PROBE_WORDS_SHORT, long)]
    return (ChatCalibration.fit(probes),
            "chat lengths are approximate: too few one-token words verified on this server")
