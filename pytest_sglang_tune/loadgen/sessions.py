"""Multi-turn chat sessions (``workload.turns > 1``): plans built up front, bodies built as the replies come.

A session is ``turns`` chat requests sent one after another; request k carries the whole conversation so far:
every earlier user message and the server's streamed reply to it, then the new user message. The new message
of turn 0 is a whole prompt of the workload's input length (template included, as for single requests);
later turns add a message of the input length's *content* (no template overhead), or, with a dataset, the
conversation's next user turns (cycling through its exchanges).

The requested input of turn k > 0 is known only once turn k - 1 has been served: its served input + served
output + the new message's tokens. The chat template adds a few tokens per message on top (the self-check
shows them); the output length is exact (``max_tokens`` with ``ignore_eos``).

Load: ``num_requests`` counts requests, so there are ``ceil(num_requests / turns)`` sessions (the last one may
be shorter). Closed loop: each of ``concurrency`` workers runs whole sessions. Open loop: sessions start at
``request_rate / turns`` per second (so requests are sent at about ``request_rate``), each turn when the
previous reply has ended. A failed turn ends its session; its later turns are not sent.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from pytest_sglang_tune.loadgen.prompts import ChatCalibration, chat_body, words
from pytest_sglang_tune.loadgen.samples import RequestSample
from pytest_sglang_tune.loadgen.workload import FROM_DATASET, Workload


@dataclass(frozen=True)
class Turn:
    content: str         # the user message of this turn
    new_tokens: int      # its estimated tokens (turn 0: the whole prompt, template included)
    output_tokens: int   # requested output length


def build_sessions(workload: Workload, calibration: ChatCalibration | None, *, warmup: bool) -> list[list[Turn]]:
    """The warmup or measured sessions of a multi-turn workload; deterministic for its seed."""
    count = workload.warmup_requests if warmup else workload.num_requests
    stream = "warmup" if warmup else "measure"
    cal = calibration or ChatCalibration()
    turns = workload.turns
    n_sessions = -(-count // turns)
    sizes = [min(turns, count - s * turns) for s in range(n_sessions)]
    rng = random.Random(f"{workload.seed}:{stream}:sessions")
    out: list[list[Turn]] = []
    if workload.dataset is not None:
        from pytest_sglang_tune.loadgen.dataset import estimate_tokens, sample_conversations

        convs = sample_conversations(workload.dataset, n_sessions, workload.seed, stream=stream)
        for conv, size in zip(convs, sizes, strict=True):
            plan = []
            for k in range(size):
                ex = conv[k % len(conv)]
                n_out = ex.reply_tokens if workload.output_len == FROM_DATASET else workload.output_len.sample(rng)
                new = estimate_tokens(ex.prompt) + (round(cal.overhead) if k == 0 else 0)
                plan.append(Turn(ex.prompt, new, max(1, n_out)))
            out.append(plan)
        return out
    for size in sizes:
        plan = []
        for k in range(size):
            n_in = max(1, workload.input_len.sample(rng))
            n_out = max(1, workload.output_len.sample(rng))
            text = " ".join(words(rng, cal.words_for(n_in, with_overhead=k == 0), cal.vocab))
            plan.append(Turn(text, n_in, n_out))
        out.append(plan)
    return out


def session_samples(plan: list[Turn], *, warmup: bool) -> list[RequestSample]:
    """Samples for a session's turns; all but the last collect the reply text for the next turn's history."""
    last = len(plan) - 1
    return [RequestSample(t.new_tokens, t.output_tokens, warmup=warmup, reply=[] if k < last else None)
            for k, t in enumerate(plan)]


def turn_body(model: str, history: list[dict[str, str]], turn: Turn) -> bytes:
    """The body of a turn: ``history`` (user/assistant messages so far) plus the turn's user message."""
    body: dict[str, Any] = chat_body(model, turn.content, turn.output_tokens)
    body["messages"] = [*history, {"role": "user", "content": turn.content}]
    return json.dumps(body, separators=(",", ":")).encode()


def next_requested_input(prev: RequestSample, turn: Turn) -> int:
    """Requested input of the turn after ``prev``: its served input and output plus the new message."""
    served_in = prev.input_tokens if prev.input_tokens is not None else prev.requested_input_tokens
    served_out = prev.output_tokens if prev.output_tokens is not None else prev.requested_output_tokens
    return served_in + served_out + turn.new_tokens
