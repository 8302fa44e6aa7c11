"""ShareGPT-format datasets: conversations → prompts with reference output lengths, sampled by seed.

The format (SGLang's and vLLM's ``--dataset-name sharegpt``): a JSON list of records, each with
``conversations`` (or ``messages``), a list of turns ``{"from": "human" | "gpt" | "system", "value": text}``
(or ``{"role": "user" | "assistant" | "system", "content": text}``). A record is usable when it has at least
one user turn followed by an assistant turn; system turns are skipped.

Lengths: there is no tokenizer on the client, so a text's token count is estimated as ``TOKENS_PER_WORD`` per
whitespace-separated word (English averages about 1.3 with BPE vocabularies). The *output* length is still
exact: it is requested with ``max_tokens`` and ``ignore_eos``; the *input* is what the server counts (the
report records it as served; the self-check shows the estimate next to it).

Sampling: the usable records are shuffled with ``random.Random(f"{seed}:dataset")`` and taken in that order,
cycling when more prompts are asked for than there are records.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pytest_sglang_tune.errors import SuiteError

TOKENS_PER_WORD = 1.3
_USER = frozenset({"human", "user"})
_ASSISTANT = frozenset({"gpt", "assistant", "chatgpt", "bard", "model"})


@dataclass(frozen=True)
class Exchange:
    """One user message and the reference reply's estimated length in tokens."""

    prompt: str
    reply_tokens: int


def estimate_tokens(text: str) -> int:
    """Estimated token count of ``text`` (at least 1)."""
    return max(1, round(len(text.split()) * TOKENS_PER_WORD))


def _turns(record: object, where: str) -> list[tuple[str, str]]:
    if not isinstance(record, dict):
        raise SuiteError(f"{where}: a record must be an object with 'conversations', got {type(record).__name__}",
                         field="dataset")
    conv = record.get("conversations", record.get("messages"))
    if not isinstance(conv, list):
        raise SuiteError(f"{where}: 'conversations' (or 'messages') must be a list of turns", field="dataset")
    out: list[tuple[str, str]] = []
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise SuiteError(f"{where}.conversations[{j}]: a turn must be an object", field="dataset")
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if not isinstance(role, str) or not isinstance(text, str):
            raise SuiteError(f"{where}.conversations[{j}]: needs 'from'/'value' (or 'role'/'content') strings",
                             field="dataset")
        out.append((role.lower(), text))
    return out


def exchanges(turns: list[tuple[str, str]]) -> list[Exchange]:
    """The (user, assistant) pairs of one conversation, in order; system turns and unpaired turns skipped."""
    out: list[Exchange] = []
    pending: str | None = None
    for role, text in turns:
        if role in _USER:
            pending = text if text.strip() else None
        elif role in _ASSISTANT and pending is not None:
            out.append(Exchange(pending, estimate_tokens(text)))
            pending = None
    return out


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> tuple[tuple[Exchange, ...], ...]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SuiteError(f"cannot read the dataset {path!r}: {exc}", field="dataset") from None
    if not isinstance(data, list):
        raise SuiteError(f"dataset {path!r}: expected a JSON list of ShareGPT records, got {type(data).__name__}",
                         field="dataset")
    convs = [tuple(exchanges(_turns(rec, f"{path}[{i}]"))) for i, rec in enumerate(data)]
    usable = tuple(c for c in convs if c)
    if not usable:
        raise SuiteError(f"dataset {path!r} has no record with a user turn followed by an assistant turn",
                         field="dataset")
    return usable


def load_conversations(path: str) -> tuple[tuple[Exchange, ...], ...]:
    """The usable conversations of a ShareGPT file (each a non-empty tuple of exchanges), cached by mtime."""
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError as exc:
        raise SuiteError(f"cannot read the dataset {path!r}: {exc.strerror or exc}", field="dataset") from None
    return _load(str(path), mtime)


def sample_conversations(path: str, n: int, seed: int, *, stream: str = "measure"
                         ) -> list[tuple[Exchange, ...]]:
    """``n`` conversations in a deterministic order for ``seed`` (cycling through a shuffled list);
    ``stream`` separates warmup from measured picks."""
    convs = load_conversations(path)
    order = list(range(len(convs)))
    random.Random(f"{seed}:dataset").shuffle(order)
    offset = 0 if stream == "measure" else len(order) // 2
    return [convs[order[(offset + i) % len(order)]] for i in range(n)]
