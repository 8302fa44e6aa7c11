"""Report × Report → changes, regressions and a verdict (``sglang-tune diff``), pure.

Results are matched on their slot (``Point.slot``: suite, workload, load, config_id). Two reports are comparable
only when they measured the same thing (:func:`comparability`, also run by the in-pytest baseline gate): same
backend, model, GPUs (the sim's GPU type; for real servers the GPU names and count of ``run.machine`` — never
UUIDs or driver versions — and a side that does not know its GPUs is refused too), sim performance model and
physics version, and, on every slot both measured, the same workload content hash. Otherwise the diff refuses
(``IncomparableReports``) unless ``allow_different`` is set, which turns each difference into a loud warning.

"The best config changed" is said only when the old best is not tied (:mod:`pytest_sglang_tune.stats`) with the
new best *in the new run*; otherwise the diff says "unchanged within noise" and names the tied configs.
Only slots that both runs measured are compared; how many were left unmatched is stated.

Thresholds (``--fail-on``) reuse the metric grammar: ``<metric>:-N%`` fails when the metric falls by more than
N %, ``<metric>:+N%`` when it rises by more than N % (``output_throughput:-5%``, ``ttft_ms.p99:+10%``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_sglang_tune.errors import GrammarError, TuneError
from pytest_sglang_tune.grammar import Metric, parse_metric
from pytest_sglang_tune.ranking import best_entries, group_label
from pytest_sglang_tune.results import Result, as_result, perf_model_of
from pytest_sglang_tune.stats import as_interval

DEFAULT_METRICS = ("output_throughput", "output_throughput_per_gpu", "goodput", "ttft_ms.p99", "itl_ms.p95",
                   "e2e_ms.p99", "error_rate")


class IncomparableReports(TuneError):
    """The two reports did not measure the same thing."""


@dataclass(frozen=True)
class Threshold:
    metric: Metric
    sign: str  # "-" fails on a fall, "+" on a rise
    percent: float

    def __str__(self) -> str:
        return f"{self.metric}:{self.sign}{self.percent:g}%"

    def crossed(self, old: float, new: float) -> bool:
        if old == 0:
            return False
        change = (new - old) / abs(old) * 100.0
        return change < -self.percent if self.sign == "-" else change > self.percent


_THRESHOLD_RE = re.compile(r"^\s*([\w.]+)\s*:\s*([+-])\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_threshold(text: str) -> Threshold:
    m = _THRESHOLD_RE.match(text)
    if not m:
        raise GrammarError(f"{text!r} is not a valid threshold; expected '<metric>:-N%' (fails when the metric "
                           "falls by more than N %) or '<metric>:+N%' (rises by more than N %), "
                           "e.g. 'output_throughput:-5%'")
    return Threshold(parse_metric(m.group(1)), m.group(2), float(m.group(3)))


Key = tuple[Any, ...]


def match_key(result: Mapping[str, Any] | Result) -> Key:
    """Where a result sits (``Point.slot``): what diff and the baseline gate match on."""
    return as_result(result).point.slot


@dataclass
class Change:
    key: Key
    label: str
    metric: str
    old: float
    new: float
    significant: bool
    crossed: list[str] = field(default_factory=list)

    @property
    def percent(self) -> float | None:
        return None if self.old == 0 else (self.new - self.old) / abs(self.old) * 100.0


@dataclass
class DiffResult:
    changes: list[Change] = field(default_factory=list)
    appeared: list[str] = field(default_factory=list)
    disappeared: list[str] = field(default_factory=list)
    started_failing: list[str] = field(default_factory=list)
    best_changed: list[str] = field(default_factory=list)
    best_within_noise: list[str] = field(default_factory=list)
    unmatched: int = 0
    regressions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    matched: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.regressions)


UNKNOWN = "unknown"


def machine_gpus(run: Mapping[str, Any]) -> str | None:
    """``2× NVIDIA H100 80GB HBM3``: names and count of the run's GPUs from ``run.machine``; ``0 GPUs`` for a
    machine without any; None when the run did not know (UUIDs and driver versions are left out on purpose)."""
    gpus = (run.get("machine") or {}).get("gpus")
    if not isinstance(gpus, list):
        return None
    if not gpus:
        return "0 GPUs"
    names: dict[str, int] = {}
    for g in gpus:
        name = str(g.get("name") if isinstance(g, Mapping) else g)
        names[name] = names.get(name, 0) + 1
    return ", ".join(f"{n}× {name}" for name, n in sorted(names.items()))


def fingerprint(run: Mapping[str, Any], results: Sequence[Mapping[str, Any] | Result]) -> dict[str, set[str]]:
    """What must be equal for two runs to be compared: backend, GPUs, model, sim perf model and physics."""
    fp: dict[str, set[str]] = {"backend": set(), "GPU type": set(), "model": set(), "sim performance model": set(),
                               "sim physics version": set()}
    if run.get("backend"):
        fp["backend"].add(str(run["backend"]))
    typed = [as_result(r) for r in results]
    for r in typed:
        if r.model:
            fp["model"].add(r.model)
        sim_block = r.deployment.get("sim")
        sim: Mapping[str, Any] = sim_block if isinstance(sim_block, Mapping) else {}
        pm = r.perf_model or perf_model_of(sim.get("perf_model")) or {}
        if pm.get("name"):
            fp["sim performance model"].add(" ".join(str(x) for x in (pm.get("name"), pm.get("data_version"))
                                                     if x))
        gpu = pm.get("gpu") or sim.get("gpu")
        if gpu:
            fp["GPU type"].add(str(gpu))
        if sim:  # a simulated server; its sim block had no physics_version before version 2 (sim/config.py)
            fp["sim physics version"].add(str(sim.get("physics_version") or 1))
    if run.get("backend") != "sim" and typed:
        fp["GPU type"] = {machine_gpus(run) or UNKNOWN}
    elif not fp["GPU type"] and any(r.measured for r in typed):
        fp["GPU type"] = {UNKNOWN}
    return fp


def comparability(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The reasons the two reports are not comparable (empty when they are)."""
    return comparability_of(old.get("run") or {}, old.get("results") or [],
                            new.get("run") or {}, new.get("results") or [])


def comparability_of(old_run: Mapping[str, Any], old_results: Sequence[Mapping[str, Any] | Result],
                     new_run: Mapping[str, Any], new_results: Sequence[Mapping[str, Any] | Result]) -> list[str]:
    """:func:`comparability` on parts of reports (the baseline gate checks one point at a time)."""
    problems = []
    fo, fn = fingerprint(old_run, old_results), fingerprint(new_run, new_results)
    for what in fo:
        a, b = fo[what], fn[what]
        if not (a and b) or a == b:
            continue
        if UNKNOWN in a or UNKNOWN in b:
            problems.append(f"{what} {UNKNOWN} on one side: {', '.join(sorted(a))} → {', '.join(sorted(b))}")
        else:
            problems.append(f"{what} differs: {', '.join(sorted(a))} → {', '.join(sorted(b))}")
    old_by = {r.point.slot: r.point for r in map(as_result, old_results) if r.full_fidelity}
    differing: dict[str, set[str]] = {}
    for r in map(as_result, new_results):
        o = old_by.get(r.point.slot) if r.full_fidelity else None
        if o is not None and o.content_hash and r.point.content_hash and o.content_hash != r.point.content_hash:
            differing.setdefault(r.point.where, set()).update((o.content_hash, r.point.content_hash))
    for where, hashes in sorted(differing.items()):
        problems.append(f"workload content differs for {where} (content hashes {', '.join(sorted(hashes))})")
    return problems


def change_is_significant(old: Result, new: Result, metric: Metric, a: float, b: float,
                          percent: float) -> bool:
    """With intervals on both sides: they do not overlap; without: the change exceeds ``percent``."""
    io, inew = as_interval(old.confidence.get(str(metric))), as_interval(new.confidence.get(str(metric)))
    if io and inew:
        return io[1] < inew[0] or inew[1] < io[0]
    return a != 0 and abs(b - a) / abs(a) * 100 > percent


def short_name(r: Result) -> str:
    """``mem0.85-lpm``: the config part of a display id (``chat[mem0.85-lpm-c64]``), else the config_id."""
    d = r.display_id or ""
    if "[" in d:
        return d.split("[", 1)[-1].rsplit("-", 1)[0]
    return r.point.config_id


def label(r: Result) -> str:
    if r.display_id:  # e.g. agent[lpm-chunk1024-c32]: readable, and it names workload and load
        return f"{r.point.suite}/{r.display_id}"
    return f"{r.point.where} {r.point.config_id}"


def diff_reports(old: Mapping[str, Any], new: Mapping[str, Any], *, thresholds: Sequence[Threshold] = (),
                 metrics: Sequence[str] = DEFAULT_METRICS, fail_on_best: bool = False,
                 allow_different: bool = False, significance_percent: float = 5.0) -> DiffResult:
    problems = comparability(old, new)
    out = DiffResult()
    if problems and not allow_different:
        raise IncomparableReports("the reports are not comparable: " + "; ".join(problems) +
                                  " (use --allow-different to compare anyway)")
    out.warnings += [f"COMPARING DIFFERENT SETUPS: {p}" for p in problems]
    # only full measurements are matched: a halving rung's or a load search's screening points never are
    old_by = {r.point.slot: r for r in map(as_result, old.get("results") or []) if r.full_fidelity}
    new_by = {r.point.slot: r for r in map(as_result, new.get("results") or []) if r.full_fidelity}
    wanted = list(dict.fromkeys([*metrics, *(str(t.metric) for t in thresholds)]))
    parsed = {m: parse_metric(m) for m in wanted}
    best_old, best_new = best_entries(old.get("ranking") or []), best_entries(new.get("ranking") or [])
    best_new_ids = {str(e.get("config_id")) for es in best_new.values() for e in es}
    names = {r.point.config_id: short_name(r) for r in [*old_by.values(), *new_by.values()]}

    for key in sorted(set(old_by) | set(new_by), key=str):
        o, n = old_by.get(key), new_by.get(key)
        if o is None or n is None:
            (out.appeared if o is None else out.disappeared).append(label(n or o))  # type: ignore[arg-type]
            continue
        if o.status == "passed" and n.status != "passed":
            out.started_failing.append(f"{label(n)}: {n.status} ({n.reason or 'no reason'})")
        om, nm = dict(o.metrics or {}), dict(n.metrics or {})
        if not om or not nm:
            out.unmatched += 1
            continue
        out.matched += 1
        for name, metric in parsed.items():
            a, b = metric.value(om), metric.value(nm)
            if a is None or b is None:
                continue
            change = Change(key, label(n), name, a, b, change_is_significant(o, n, metric, a, b,
                                                                             significance_percent))
            for t in thresholds:
                if str(t.metric) != name:
                    continue
                if fail_on_best and n.point.config_id not in best_new_ids:
                    continue
                if t.crossed(a, b):
                    change.crossed.append(str(t))
                    pct = change.percent
                    out.regressions.append(f"{label(n)}: {name} {a:.4g} → {b:.4g} ({pct:+.1f}%) crosses {t}")
            out.changes.append(change)
    out.unmatched += len(out.appeared) + len(out.disappeared)
    for k in sorted(set(best_old) & set(best_new), key=str):
        old_best = str(best_old[k][0].get("config_id"))
        new_best = [str(e.get("config_id")) for e in best_new[k]]
        where = group_label(k, best_new[k][0].get("load"))
        if old_best not in new_best:  # the new rank 1 (with its ties) does not include the old best
            out.best_changed.append(f"{where}: {names.get(old_best, old_best)} → "
                                    f"{' = '.join(names.get(c, c) for c in new_best)}")
        elif new_best != [old_best]:
            others = [names.get(c, c) for c in new_best if c != old_best]
            out.best_within_noise.append(f"{where}: {names.get(old_best, old_best)} (tied in the new run with "
                                         f"{', '.join(others)})")
    return out


def format_terminal(result: DiffResult, *, color: bool = False) -> list[str]:
    """The terminal table: significant changes highlighted with ``*`` (and colour on a TTY)."""
    lines = [f"matched {result.matched} results"]
    for w in result.warnings:
        lines.append(f"WARNING: {w}")
    if result.unmatched:
        lines.append(f"{result.unmatched} result(s) measured by only one of the runs were not compared")
    if result.best_changed:
        lines.append("THE BEST CONFIG CHANGED:")
        lines += [f"  {b}" for b in result.best_changed]
    if result.best_within_noise:
        lines.append("best config unchanged within noise:")
        lines += [f"  {b}" for b in result.best_within_noise]
    rows = [c for c in result.changes if c.significant or c.crossed]
    if rows:
        width = min(72, max(len(c.label) for c in rows))
        lines.append(f"{'':2}{'result':<{width}} {'metric':<26} {'old':>10} {'new':>10} {'change':>8}")
        for c in rows:
            pct = "n/a" if c.percent is None else f"{c.percent:+.1f}%"
            mark = "!" if c.crossed else "*"
            text = f"{mark} {c.label[:width]:<{width}} {c.metric:<26} {c.old:>10.4g} {c.new:>10.4g} {pct:>8}"
            if color:
                text = ("\x1b[31m" if c.crossed else "\x1b[33m") + text + "\x1b[0m"
            lines.append(text)
    else:
        lines.append("no significant changes")
    for title, items in (("appeared", result.appeared), ("disappeared", result.disappeared),
                         ("started failing", result.started_failing)):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {x}" for x in items]
    if result.regressions:
        lines.append(f"REGRESSIONS ({len(result.regressions)}):")
        lines += [f"  {r}" for r in result.regressions]
    return lines


def render_html(result: DiffResult, old_name: str, new_name: str) -> str:
    from html import escape

    def table(rows: list[Change]) -> str:
        body = "".join(
            f"<tr class='{'bad' if c.crossed else ('sig' if c.significant else '')}'><td>{escape(c.label)}</td>"
            f"<td>{escape(c.metric)}</td><td>{c.old:.4g}</td><td>{c.new:.4g}</td>"
            f"<td>{'n/a' if c.percent is None else f'{c.percent:+.1f}%'}</td></tr>" for c in rows)
        return ("<table><thead><tr><th>result</th><th>metric</th><th>old</th><th>new</th><th>change</th></tr>"
                f"</thead><tbody>{body}</tbody></table>")

    def items(title: str, xs: list[str]) -> str:
        if not xs:
            return ""
        return f"<h2>{escape(title)} ({len(xs)})</h2><ul>" + "".join(f"<li>{escape(x)}</li>" for x in xs) + "</ul>"

    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>sglang-tune diff</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:.2em .5em}tr.sig{background:#fff6d5}tr.bad{background:#fdd}.warn{color:#a00;font-weight:bold}"
        "</style></head><body>"
        f"<h1>sglang-tune diff</h1><p>{escape(old_name)} → {escape(new_name)}; {result.matched} results matched</p>"
        + "".join(f"<p class='warn'>{escape(w)}</p>" for w in result.warnings)
        + items("The best config changed", result.best_changed)
        + items("Best config unchanged within noise", result.best_within_noise)
        + items("Regressions", result.regressions)
        + "<h2>Changes</h2>" + table(result.changes)
        + items("Appeared", result.appeared) + items("Disappeared", result.disappeared)
        + items("Started failing", result.started_failing)
        + "</body></html>"
    )
