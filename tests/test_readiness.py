"""Classifying why a server died: the config's own fault (infeasible) vs anything else."""

from __future__ import annotations

import pytest

from pytest_sglang_tune.errors import FlagsNotApplied
from pytest_sglang_tune.readiness import check_flags_applied, classify_failure


@pytest.mark.parametrize(
    ("tail", "cause"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out of GPU memory"),
        ("Not enough memory. Please try to increase --mem-fraction-static. Current value: 0.1",
         "not enough memory for the KV cache"),
        ("Total number of attention heads (32) must be divisible by tensor parallel size (3).",
         "invalid parallelism for this model"),
        ("ValueError: --enable-dp-attention is not supported with pp-size > 1", "invalid flag combination"),
        ("OSError: Qwen/Qwen9 is not a local folder and is not a valid model identifier", None),
        ("ConnectionResetError: [Errno 104]", None),
    ],
)
def test_classify_failure(tail: str, cause: str | None) -> None:
    got = classify_failure("INFO starting\n" + tail + "\n")
    if cause is None:
        assert got is None
    else:
        assert got is not None and got.startswith(cause + ": ")


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"schedule_policy": "fcfs", "tp_size": 2},
         "flags not applied: --schedule-policy='lpm' (the server runs with 'fcfs')"),
        ({"tp_size": 2}, "flags not applied: --schedule-policy='lpm' (the server reports no 'schedule_policy')"),
        ({"schedule_policy": "lpm", "tp_size": 1}, "flags not applied: --tp-size=2 (the server runs with 1)"),
        ({}, "cannot verify"),
    ],
)
def test_flags_not_applied(info: dict[str, object], message: str) -> None:
    args = {"--schedule-policy": "lpm", "--tp-size": 2}
    dests = {"--schedule-policy": "schedule_policy", "--tp-size": "tp_size"}
    with pytest.raises(FlagsNotApplied, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_flags_applied(info, args, dests)
    check_flags_applied({"schedule_policy": "lpm", "tp_size": 2.0}, args, dests)  # equal values pass
