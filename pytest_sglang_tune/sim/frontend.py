"""SGLang's request path around the scheduler, modelled as a per-request cost of the shared engine.

A request reaches SGLang's scheduler only after the HTTP server has parsed it, the tokenizer manager (one
process, one event loop) has tokenized it, and one ZMQ hop has carried it; its tokens travel back through the
detokenizer and another hop. The sim charges every request, on the virtual clock and on the HTTP server
alike (:class:`~.engine.Engine` applies it, so both paths share it):

* :data:`FRONT_END_FIXED_MS` — a fixed latency per request (HTTP, tokenizer manager bookkeeping, the ZMQ hops,
  detokenizer, SSE write). Source: the SGLang plugin measurement in tenstorrent/tt-inference-server#3560
  (SGLang's full server over a CPU mock device whose forward pass busy-waits 2.632 ms): median TTFT 9.54 ms
  for 128-token chat prompts at concurrency 1, of which 2.63 ms is the mock prefill and 0.31 ms SGLang's
  per-step scheduler overhead (its measured TPOT 2.94 ms minus 2.632 ms), leaving 6.6 ms of request path,
  minus ~0.1 ms of tokenizing 128 tokens (below): 6.5 ms.
* :data:`TOKENIZE_US_PER_TOKEN` — tokenizing cost per input token, paid serially: the tokenizer manager
  tokenizes one request at a time, so a burst of long prompts queues there. Measured on this project's
  machine (AMD EPYC, one core) with Hugging Face ``tokenizers`` (the byte-level BPE SGLang uses through
  ``transformers``' fast tokenizers): 0.7-1.4 µs per token for 200-4,000-token prompts; 1.0 µs is used.
  Requests that arrive as token ids (``input_ids``, a token-id ``prompt``) skip it, as in SGLang.

Not modelled: per-output-token detokenizer/streaming cost (it matters only at very large batches; see
sgl-project/sglang#23393), multiple tokenizer workers (``--tokenizer-worker-num``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FRONT_END_FIXED_MS", "TOKENIZE_US_PER_TOKEN", "FrontEnd"]

FRONT_END_FIXED_MS = 6.5
TOKENIZE_US_PER_TOKEN = 1.0


@dataclass(frozen=True)
class FrontEnd:
    """The per-request cost a request pays before the scheduler sees it."""

    fixed_ms: float = FRONT_END_FIXED_MS
    tokenize_us_per_token: float = TOKENIZE_US_PER_TOKEN

    @classmethod
    def none(cls) -> FrontEnd:
        """No front-end cost (the scheduler alone, for unit tests of scheduling)."""
        return cls(0.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "sources": {
                "fixed_ms": "tenstorrent/tt-inference-server#3560 (SGLang over a CPU mock device: TTFT 9.54 ms "
                "- 2.63 ms mock prefill - 0.31 ms step overhead - 0.13 ms tokenize)",
                "tokenize_us_per_token": "measured: HF tokenizers byte-level BPE, 0.7-1.4 us/token (AMD EPYC core)",
            },
            "tokenizer": "serial (one tokenizer manager)",
        }
