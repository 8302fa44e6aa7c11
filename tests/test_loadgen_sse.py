"""SSE decoding and stream interpretation on recorded and adversarial byte streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_sglang_tune.loadgen.samples import RequestSample
from pytest_sglang_tune.loadgen.sse import SSEDecoder, StreamParser


def ev(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def chat_chunk(
    content: str | None, *, finish: str | None = None, usage: dict[str, int] | None = None, role: bool = False
) -> dict[str, Any]:
    delta: dict[str, Any] = {"reasoning_content": None}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    obj: dict[str, Any] = {
        "id": "r1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, "matched_stop": None}],
    }
    if usage is not None:
        obj["usage"] = usage
    return obj


def usage(pt: int, ct: int) -> dict[str, int]:
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


# A chat stream as SGLang sends it (role chunk, content chunks, finish chunk, usage chunk, [DONE]);
# one event per network read, read i arriving at t = i.
RECORDED_CHAT: list[bytes] = [
    ev(chat_chunk("", role=True)),
    ev(chat_chunk("Hello")),
    ev(chat_chunk(" wor")),
    ev(chat_chunk("ld")),
    ev(chat_chunk(None, finish="length")),
    ev(
        {
            "id": "r1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {**usage(12, 3), "prompt_tokens_details": {"cached_tokens": 5}},
        }
    ),
    b"data: [DONE]\n\n",
]
RECORDED_PAYLOADS = [e[len(b"data: ") : -2] for e in RECORDED_CHAT]


def parse(reads: list[tuple[float, bytes]], *, native: bool = False) -> RequestSample:
    """Drive a StreamParser as the client does."""
    sample = RequestSample(requested_input_tokens=12, requested_output_tokens=3, sent=0.0)
    parser = StreamParser(sample, native=native)
    for t, chunk in reads:
        if parser.feed(chunk, t):
            return sample
    parser.eof(99.0)
    return sample


def decode_all(chunks: list[bytes]) -> list[bytes]:
    dec = SSEDecoder()
    out: list[bytes] = []
    for c in chunks:
        out.extend(dec.feed(c))
    out.extend(dec.flush())
    return out


# -- decoder -----------------------------------------------------------------------------------------------


def test_decoder_every_two_way_split_gives_the_same_events() -> None:
    blob = b"".join(RECORDED_CHAT)
    for i in range(len(blob) + 1):
        assert decode_all([blob[:i], blob[i:]]) == RECORDED_PAYLOADS, f"split at byte {i}"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_decoder_byte_by_byte_with_each_line_ending(newline: bytes) -> None:
    blob = b"".join(RECORDED_CHAT).replace(b"\n", newline)
    assert decode_all([blob[i : i + 1] for i in range(len(blob))]) == RECORDED_PAYLOADS


def test_decoder_crlf_split_between_reads_does_not_make_a_blank_line() -> None:
    # "\r" ends one read and "\n" starts the next: one line break, not two (no spurious event boundary).
    assert decode_all([b"data: a\r", b"\ndata: b\r\n\r\n"]) == [b"a\nb"]


def test_decoder_several_events_per_read_comments_fields_and_spacing() -> None:
    blob = (
        b": keep-alive\n\n"
        b'event: message\nid: 7\nretry: 100\ndata:{"x":1}\n\n'
        b"data: first line\ndata:  two spaces\n\n"
        b":ping\n"
        b"data\n\n"
        b"data: [DONE]\n\n"
    )
    assert SSEDecoder().feed(blob) == [b'{"x":1}', b"first line\n two spaces", b"", b"[DONE]"]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"data: [DONE]"], [b"[DONE]"]),  # no trailing newline at all
        ([b"data: [DONE]\n"], [b"[DONE]"]),  # no blank line
        ([b'data: {"a":', b"1}\n"], [b'{"a":1}']),
        ([b": only a comment\n"], []),
        ([b""], []),
    ],
)
def test_decoder_flush_delivers_pending_event(chunks: list[bytes], expected: list[bytes]) -> None:
    assert decode_all(chunks) == expected


# -- OpenAI stream interpretation --------------------------------------------------------------------------


def test_recorded_chat_stream() -> None:
    s = parse([(float(i), c) for i, c in enumerate(RECORDED_CHAT)])
    assert s.ok and s.error is None
    assert s.first_token == 1.0  # the role chunk (empty content) does not count
    assert s.chunk_times == [2.0, 3.0] and s.chunk_tokens == [1, 1]
    assert s.done == 6.0
    assert (s.input_tokens, s.output_tokens, s.cached_tokens) == (12, 3, 5)
    assert s.itl_s() == [1.0, 1.0]


def test_recorded_chat_stream_in_one_read_shares_one_timestamp() -> None:
    s = parse([(5.0, b"".join(RECORDED_CHAT))])
    assert s.ok and s.first_token == 5.0 and s.chunk_times == [5.0, 5.0] and s.done == 5.0


def test_multi_token_chunks_from_continuous_usage() -> None:
    reads = [(0.0, ev(chat_chunk("", role=True, usage=usage(10, 0))))]
    for i in range(1, 5):  # 3 tokens per chunk, one chunk every 0.3 s
        reads.append((0.3 * i, ev(chat_chunk("abc" * i, usage=usage(10, 3 * i)))))
    reads.append((1.3, ev(chat_chunk(None, finish="length", usage=usage(10, 12)))))
    reads.append((1.3, ev({"choices": [], "usage": usage(10, 12)})))
    reads.append((1.3, b"data: [DONE]\n\n"))
    s = parse(reads)
    assert s.ok and s.output_tokens == 12
    assert s.first_token == pytest.approx(0.3)
    assert s.chunk_tokens == [3, 3, 3]
    assert s.itl_s() == pytest.approx([0.1] * 9)
    assert s.tpot_s == pytest.approx((1.3 - 0.3) / 11)


def test_tokens_without_content_are_carried_to_the_next_content_chunk() -> None:
    # usage grows by 1 on an empty chunk (e.g. held-back partial UTF-8), then the next content chunk has 2.
    reads = [
        (1.0, ev(chat_chunk("a", usage=usage(4, 1)))),
        (2.0, ev(chat_chunk("", usage=usage(4, 2)))),
        (3.0, ev(chat_chunk("bc", usage=usage(4, 3)))),
        (3.0, ev(chat_chunk(None, finish="stop", usage=usage(4, 3)))),
        (3.0, b"data: [DONE]\n\n"),
    ]
    s = parse(reads)
    assert s.chunk_times == [3.0] and s.chunk_tokens == [2] and s.output_tokens == 3
    assert s.itl_s() == [1.0, 1.0]


def test_completions_stream_without_usage_counts_one_token_per_content_chunk() -> None:
    def chunk(text: str, finish: str | None = None) -> bytes:
        return ev({"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]})

    s = parse(
        [
            (1.0, chunk("a")),
            (2.0, chunk("b")),
            (2.5, chunk("")),
            (3.0, chunk("c")),
            (3.0, chunk("", "length")),
            (3.1, b"data: [DONE]\n\n"),
        ]
    )
    assert s.ok and s.output_tokens == 3 and s.input_tokens is None
    assert s.chunk_tokens == [1, 1] and s.e2e_s == 3.1


@pytest.mark.parametrize(
    ("reads", "error", "detail"),
    [
        pytest.param(
            [
                ev(chat_chunk("a")),
                ev({"error": {"message": "KV cache exhausted", "code": 500}}),
                b"data: [DONE]\n\n",
            ],
            "stream_error",
            "KV cache exhausted",
            id="error-object",
        ),
        pytest.param(
            [ev(chat_chunk("a")), ev({"error": "plain string"})],
            "stream_error",
            "plain string",
            id="error-string",
        ),
        pytest.param(
            [ev(chat_chunk("a")), b"data: {not json}\n\n", ev(chat_chunk("b"))],
            "stream_error",
            "undecodable",
            id="bad-json",
        ),
        pytest.param([ev(chat_chunk("a")), b"data: [1, 2]\n\n"], "stream_error", "not a JSON object", id="not-object"),
        pytest.param([ev(chat_chunk("a")), ev(chat_chunk("b"))], "truncated", "without [DONE]", id="no-done"),
        pytest.param(
            [ev(chat_chunk("a")), b'data: {"choices": [{"delta": {"content": "b'],
            "truncated",
            "inside an event",
            id="cut-mid-json",
        ),
        pytest.param([], "truncated", "without [DONE]", id="empty-body"),
        pytest.param(
            [ev(chat_chunk("a")), ev(chat_chunk(None, finish="abort")), b"data: [DONE]\n\n"],
            "aborted",
            "aborted",
            id="abort",
        ),
    ],
)
def test_stream_errors(reads: list[bytes], error: str, detail: str) -> None:
    s = parse([(float(i), r) for i, r in enumerate(reads)])
    assert s.error == error
    assert detail in s.error_detail
    assert not s.ok


def test_finish_reason_without_done_is_complete() -> None:
    s = parse([(1.0, ev(chat_chunk("a"))), (2.0, ev(chat_chunk("b", finish="length")))])
    assert s.ok and s.done == 99.0 and s.output_tokens == 2


def test_feed_stops_at_done_and_ignores_what_follows() -> None:
    sample = RequestSample(1, 1)
    parser = StreamParser(sample)
    assert parser.feed(ev(chat_chunk("a")) + b"data: [DONE]\n\n" + ev({"error": "late"}), 1.0) is True
    assert sample.ok and sample.error is None


# -- native /generate --------------------------------------------------------------------------------------


def gen_event(text: str, ct: int, finish: dict[str, Any] | None = None) -> bytes:
    return ev(
        {
            "text": text,
            "output_ids": list(range(ct)),
            "meta_info": {
                "id": "g",
                "prompt_tokens": 7,
                "completion_tokens": ct,
                "cached_tokens": 2,
                "finish_reason": finish,
            },
        }
    )


@pytest.mark.parametrize("cumulative", [True, False])
def test_generate_counts_tokens_from_completion_tokens(cumulative: bool) -> None:
    texts = ["a", "ab", "abcd", "abcde"] if cumulative else ["a", "b", "cd", "e"]
    counts = [1, 2, 4, 5]
    reads = [
        (float(i + 1), gen_event(t, c, {"type": "length", "length": 5} if c == 5 else None))
        for i, (t, c) in enumerate(zip(texts, counts, strict=True))
    ]
    reads.append((4.5, b"data: [DONE]\n\n"))
    s = parse(reads, native=True)
    assert s.ok and s.first_token == 1.0
    assert s.chunk_tokens == [1, 2, 1] and s.chunk_times == [2.0, 3.0, 4.0]
    assert (s.input_tokens, s.output_tokens, s.cached_tokens) == (7, 5, 2)
    assert s.itl_s() == [1.0, 0.5, 0.5, 1.0]


def test_generate_abort() -> None:
    s = parse(
        [(1.0, gen_event("a", 1)), (2.0, gen_event("a", 1, {"type": "abort", "message": "too long"}))],
        native=True,
    )
    assert s.error == "aborted" and "too long" in s.error_detail
