"""report.json text: strict JSON, NaN/inf as null, plain types only."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.report.json import dumps, dumps_line, to_jsonable


@pytest.mark.parametrize(("value", "expected"), [
    (math.nan, None), (math.inf, None), (-math.inf, None), (1.5, 1.5), (3, 3), (True, True), (None, None),
    ("ünï", "ünï"), ((1, 2), [1, 2]), ({3, 1, 2}, [1, 2, 3]), (Path("/a/b"), "/a/b"),
    (datetime(2026, 11, 27, 13, 5, tzinfo=UTC), "2026-11-27T13:05:00+00:00"),
    ({"m": {"p99": math.nan}, 1: "x"}, {"m": {"p99": None}, "1": "x"}),
])
def test_to_jsonable(value: Any, expected: Any) -> None:
    assert to_jsonable(value) == expected


def test_rejects_objects_with_a_clear_message() -> None:
    with pytest.raises(TypeError, match=r"cannot store object value .* in report\.json; use plain data"):
        to_jsonable({"x": object()})


def test_dumps_is_strict_and_readable() -> None:
    text = dumps({"schema_version": 1, "metrics": {"ttft_ms": {"p99": math.nan}}, "name": "ünï"})
    assert text.endswith("\n")
    assert "NaN" not in text and "ünï" in text
    assert json.loads(text) == {"schema_version": 1, "metrics": {"ttft_ms": {"p99": None}}, "name": "ünï"}
    assert text.splitlines()[1] == '  "schema_version": 1,'


def test_dumps_line_is_one_line() -> None:
    line = dumps_line({"log_tail": "a\nb\r\nc", "x": [1, 2]})
    assert line.count("\n") == 1 and line.endswith("\n")
    assert json.loads(line) == {"log_tail": "a\nb\r\nc", "x": [1, 2]}
