"""YAML loading that remembers where each value came from, so errors can say ``file:line``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pytest_sglang_tune.errors import SuiteError

Pos = dict[tuple[str | int, ...], int]


def load_yaml_with_lines(path: Path, text: str | None = None) -> tuple[Any, Pos]:
    """Parse YAML with ``yaml.safe_load`` semantics; return the data and {field path: 1-based line}."""
    if text is None:
        text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        raise SuiteError(f"YAML syntax error: {problem}", path=str(path), line=line) from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"YAML error: {exc}", path=str(path)) from None
    pos: Pos = {}
    if node is not None:
        _walk(node, (), pos)
    return data, pos


def _walk(node: yaml.Node, prefix: tuple[str | int, ...], pos: Pos) -> None:
    pos[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            pos[(*prefix, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*prefix, key), pos)
            pos[(*prefix, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _walk(child, (*prefix, i), pos)


def line_of(pos: Pos, field: tuple[str | int, ...]) -> int | None:
    """The line of ``field``, or of its nearest parent that has one."""
    f = field
    while True:
        if f in pos:
            return pos[f]
        if not f:
            return None
        f = f[:-1]
