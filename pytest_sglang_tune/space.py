"""Server space → frozen ``TuneConfig`` values with a canonical ``config_id`` and a readable display id.

``config_id`` is the config's non-default flags, sorted, plus a short hash of all its flags, e.g.
``mem-fraction-static=0.85,schedule-policy=lpm,tp-size=2~1a2b3c``. It never depends on display abbreviations.

Display ids (pytest node ids) show only the flags that vary within the suite, abbreviated:

    tp-size → tp2      dp-size → dp2      pp-size → pp2     mem-fraction-static → mem0.85
    chunked-prefill-size → chunk4096      max-running-requests → mrr128   max-total-tokens → mtt200000
    cuda-graph-max-bs(-decode) → cg64     page-size → page16    schedule-policy → its value (lpm, fcfs, ...)
    any other flag → the initials of its words (enable-mixed-chunk → emc); booleans → emc / no-emc

When two configs would get the same display id, each gets ``~`` and the first 4 characters of its config hash.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_sglang_tune.errors import FlagError, SuiteError
from pytest_sglang_tune.suite import Suite, load_suite

ABBREVIATIONS: dict[str, str] = {
    "--tp-size": "tp",
    "--tensor-parallel-size": "tp",
    "--dp-size": "dp",
    "--data-parallel-size": "dp",
    "--pp-size": "pp",
    "--pipeline-parallel-size": "pp",
    "--ep-size": "ep",
    "--mem-fraction-static": "mem",
    "--chunked-prefill-size": "chunk",
    "--max-running-requests": "mrr",
    "--max-total-tokens": "mtt",
    "--cuda-graph-max-bs": "cg",
    "--cuda-graph-max-bs-decode": "cg",
    "--cuda-graph-max-bs-prefill": "cgp",
    "--page-size": "page",
    "--max-prefill-tokens": "mpt",
    "--stream-interval": "si",
    "--schedule-conservativeness": "sc",
}
VALUE_ONLY = {"--schedule-policy", "--attention-backend", "--sampling-backend", "--kv-cache-dtype", "--quantization"}
PARALLEL_FIELDS = ("tp_size", "dp_size", "pp_size")  # ServerArgs fields: GPUs = tp × dp × pp


@dataclass(frozen=True)
class TuneConfig:
    """One point of the server space: every flag the suite sets (canonical names), as a sorted tuple."""

    suite: str
    server_args: tuple[tuple[str, Any], ...]
    non_default: tuple[tuple[str, Any], ...]
    gpus: int
    config_id: str
    display: str = ""

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.server_args)

    @property
    def short_hash(self) -> str:
        return self.config_id.rsplit("~", 1)[-1]


@dataclass(frozen=True)
class Excluded:
    config_id: str
    server_args: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Expansion:
    configs: tuple[TuneConfig, ...]
    excluded: tuple[Excluded, ...]
    flags: Any  # flags.FlagTable
    varying: tuple[str, ...]


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(v)
    if isinstance(v, list | tuple):
        return "+".join(_fmt_value(x) for x in v)
    return str(v)


_SECRET_WORDS = ("key", "token", "secret", "password")


def is_secret_flag(flag: str) -> bool:
    """Flags whose values are never shown in ids (``--api-key``, ``--admin-api-key``, ...)."""
    return any(w in flag.lower() for w in _SECRET_WORDS) and not flag.endswith(("-path", "-file", "-dir"))


def _public(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("***" if is_secret_flag(k) else v) for k, v in args.items()}


def make_config_id(args: Mapping[str, Any], non_default: Mapping[str, Any]) -> str:
    args, non_default = _public(args), _public(non_default)
    blob = json.dumps(sorted((k, args[k]) for k in args), separators=(",", ":"), default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:6]
    body = ",".join(f"{k.lstrip('-')}={_fmt_value(v)}" for k, v in sorted(non_default.items()))
    return f"{body or 'defaults'}~{digest}"


def abbreviate(flag: str, value: Any) -> str:
    """The display fragment of one flag=value (see the module docstring)."""
    if is_secret_flag(flag):
        value = "***"
    if flag in VALUE_ONLY:
        return _fmt_value(value)
    abbr = ABBREVIATIONS.get(flag) or "".join(w[0] for w in flag.lstrip("-").split("-") if w)
    if isinstance(value, bool):
        return abbr if value else f"no-{abbr}"
    return f"{abbr}{_fmt_value(value)}"


# --- constraints -------------------------------------------------------------------------------------------

_FLAG_TOKEN = re.compile(r"(?<![\w.])-{0,2}([a-z][a-z0-9]*(?:[-_][a-z0-9]+)+|[a-z][a-z0-9]*)(?![\w(])")
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null", "none", "True", "False", "None"}


class Constraint:
    """``tp-size * dp-size <= 4``: flag names (hyphenated), numbers, strings, + - * / // % **, comparisons,
    and/or/not, ``in [..]``. A flag the config does not set takes its SGLang default. Binary minus needs spaces."""

    def __init__(self, text: str, resolve: Callable[[str], str]) -> None:
        self.text = text
        self.names: dict[str, str] = {}  # python identifier -> canonical flag

        def sub(m: re.Match[str]) -> str:
            word = m.group(1)
            if word in _KEYWORDS:
                return {"true": "True", "false": "False", "null": "None", "none": "None"}.get(word, word)
            canonical = resolve(word)
            ident = "f_" + canonical.lstrip("-").replace("-", "_")
            self.names[ident] = canonical
            return ident

        # protect quoted strings from substitution
        parts = re.split(r"('[^']*'|\"[^\"]*\")", text)
        py = "".join(p if i % 2 else _FLAG_TOKEN.sub(sub, p) for i, p in enumerate(parts))
        try:
            self.tree = ast.parse(py, mode="eval")
        except SyntaxError as exc:
            raise SuiteError(f"constraint {text!r} is not a valid expression ({exc.msg})") from None
        self._check(self.tree.body)

    def _check(self, node: ast.AST) -> None:
        allowed = (ast.BinOp, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.Constant, ast.Name, ast.List, ast.Tuple,
                   ast.Load, ast.operator, ast.cmpop, ast.boolop, ast.unaryop)
        for sub in ast.walk(node):
            if not isinstance(sub, allowed):
                raise SuiteError(f"constraint {self.text!r}: {type(sub).__name__} is not allowed; use flag names, "
                                 "numbers, arithmetic, comparisons, and/or/not")

    def holds(self, values: Mapping[str, Any]) -> bool:
        env = {ident: values.get(flag) for ident, flag in self.names.items()}
        return bool(self._eval(self.tree.body, env))

    def _eval(self, node: ast.AST, env: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.List | ast.Tuple):
            return [self._eval(e, env) for e in node.elts]
        if isinstance(node, ast.UnaryOp):
            v = self._eval(node.operand, env)
            return (not v) if isinstance(node.op, ast.Not) else (-v if isinstance(node.op, ast.USub) else +v)
        if isinstance(node, ast.BoolOp):
            vals = (self._eval(v, env) for v in node.values)
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](self._eval(node.left, env), self._eval(node.right, env))
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, env)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comp, env)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        raise SuiteError(f"constraint {self.text!r}: cannot evaluate {type(node).__name__}")


# --- expansion -----------------------------------------------------------------------------------------------

def _combinations(suite: Suite, table: Any) -> tuple[list[dict[str, Any]], tuple[str, ...], dict[str, str]]:
    """All raw combinations as canonical-flag dicts, the varying flags, and the source location of every flag."""
    where: dict[str, str] = {}

    def canon(section: str, raw: Mapping[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for flag, values in raw.items():
            loc = suite.where("server", section, flag)
            spec = table.resolve(str(flag), where=loc)
            if spec.name in out or spec.name in where:
                raise SuiteError(f"flag {flag!r} resolves to {spec.name}, which is already set",
                                 path=str(suite.path), field=f"server.{section}.{flag}")
            vals = values if section != "fixed" else [values]
            out[spec.name] = [table.coerce(spec, v, where=loc) for v in vals]
            where[spec.name] = loc
        return out

    fixed = canon("fixed", suite.fixed)
    grid = canon("grid", suite.grid)
    paired = canon("paired", suite.paired)
    varying = tuple(list(grid) + list(paired))
    grid_items = list(grid.items())
    paired_rows: list[dict[str, Any]] = [{}]
    if paired:
        n = len(next(iter(paired.values())))
        paired_rows = [{k: v[i] for k, v in paired.items()} for i in range(n)]
    combos = []
    for prod in itertools.product(*(vals for _, vals in grid_items)):
        for prow in paired_rows:
            args = {k: v[0] for k, v in fixed.items()}
            args.update({k: v for (k, _), v in zip(grid_items, prod, strict=True)})
            args.update(prow)
            combos.append(args)
    return combos, varying, where


def _resolver(table: Any, where: str) -> Callable[[str], str]:
    def resolve(word: str) -> str:
        return str(table.resolve(word, where=where).name)

    return resolve


def expand(suite: Suite, table: Any = None) -> Expansion:
    """Expand ``suite``'s server space, validating every flag against the SGLang version that will run."""
    from pytest_sglang_tune.flags import load_flag_table

    if table is None:
        try:
            table = load_flag_table(suite.sglang_version)
        except FlagError as exc:
            raise suite.error(exc.bare_message, "sglang_version") from None
    combos, varying, _ = _combinations(suite, table)
    defaults = table.defaults()

    constraints = []
    for i, text in enumerate(suite.constraints):
        try:
            loc = suite.where("server", "constraints", i)
            constraints.append(Constraint(text, _resolver(table, loc)))
        except FlagError:
            raise
        except SuiteError as exc:
            raise suite.error(exc.bare_message, "server", "constraints", i) from None

    configs: list[TuneConfig] = []
    excluded: list[Excluded] = []
    seen: set[str] = set()
    for args in combos:
        non_default = {k: v for k, v in args.items() if not table.is_default(k, v)}
        cid = make_config_id(args, non_default)
        if cid in seen:
            continue
        seen.add(cid)
        values = dict(defaults)
        values.update(args)
        failed = []
        for con in constraints:
            try:
                ok = con.holds(values)
            except Exception as exc:  # e.g. None * int when a flag has no default
                raise suite.error(f"constraint {con.text!r} cannot be evaluated for {cid}: {exc}",
                                  "server", "constraints") from None
            if not ok:
                failed.append(con.text)
        if failed:
            excluded.append(Excluded(cid, dict(args), "excluded by constraint: " + "; ".join(failed)))
            continue
        gpus = 1
        for flag, v in values.items():
            if isinstance(v, int) and v > 0 and table.resolve(flag).field in PARALLEL_FIELDS:
                gpus *= v
        configs.append(TuneConfig(suite=suite.name, server_args=tuple(sorted(args.items())),
                                  non_default=tuple(sorted(non_default.items())), gpus=gpus, config_id=cid))
    if not configs and not excluded:
        raise suite.error("the server space is empty", "server")
    return Expansion(tuple(_with_display_ids(configs, varying)), tuple(excluded), table, varying)


def _with_display_ids(configs: Sequence[TuneConfig], varying: Sequence[str]) -> list[TuneConfig]:
    labels = []
    for cfg in configs:
        args = cfg.args
        parts = [abbreviate(f, args[f]) for f in varying if f in args]
        labels.append("-".join(parts) or "default")
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    out = []
    for cfg, label in zip(configs, labels, strict=True):
        if counts[label] > 1:
            label = f"{label}~{cfg.short_hash[:4]}"
        out.append(TuneConfig(cfg.suite, cfg.server_args, cfg.non_default, cfg.gpus, cfg.config_id, label))
    return out


def validate_suite_file(path: Path | str) -> str:
    """Check a suite and its flags without deploying; return a one-line summary (used by ``sglang-tune validate``)."""
    suite = load_suite(path)
    expansion = expand(suite)
    points = sum(len(w.loads) for w in suite.workloads)
    return (f"{path}: ok — suite {suite.name!r}, SGLang {expansion.flags.version} ({expansion.flags.source}), "
            f"{len(expansion.configs)} configs ({len(expansion.excluded)} excluded by constraints), "
            f"{len(suite.workloads)} workloads, {len(expansion.configs) * points} tests")
