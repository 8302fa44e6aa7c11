"""report.json text: strict JSON (no NaN/Infinity), stable layout, UTF-8."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import PurePath
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data: NaN/±inf become ``null``, tuples and sets lists, paths and dates strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    raise TypeError(f"cannot store {type(obj).__name__} value {obj!r} in report.json; use plain data")


def dumps(report: Mapping[str, Any], *, indent: int | None = 2) -> str:
    """The text of report.json (ends with a newline)."""
    return json.dumps(to_jsonable(report), indent=indent, ensure_ascii=False, allow_nan=False) + "\n"


def dumps_line(record: Mapping[str, Any]) -> str:
    """One compact JSON line (for results.jsonl), newline included."""
    return json.dumps(to_jsonable(record), ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
