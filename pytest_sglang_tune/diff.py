"""Report × Report → changes, regressions and a verdict (``sglang-tune diff``), pure.

Results are matched on (suite, workload content hash, load, config_id). Two reports are comparable only when
they measured the same thing: same backend, GPU type, model, sim performance model and workload content;
otherwise the diff refuses (``IncomparableReports``) unless ``allow_different`` is set, which turns each
difference into a loud warning.

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
from pytest_sglang_tune.ranking import load_key, load_label, workload_name

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


Key = tuple[str, str, Any, str]


def match_key(result: Mapping[str, Any]) -> Key:
    w = result.get("workload") or {}
    content = w.get("content_hash") if isinstance(w, Mapping) else None
    return (str(result.get("suite", "")), str(content or workload_name(result)), load_key(result.get("load")),
            str(result.get("config_id", "")))


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
    regressions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    matched: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.regressions)


def _fingerprint(report: Mapping[str, Any]) -> dict[str, set[str]]:
    fp: dict[str, set[str]] = {"backend": set(), "GPU type": set(), "model": set(), "sim performance model": set()}
    run = report.get("run") or {}
    if run.get("backend"):
        fp["backend"].add(str(run["backend"]))
    for r in report.get("results") or []:
        if r.get("model"):
            fp["model"].add(str(r["model"]))
        sim = r.get("sim") or {}
        if sim.get("gpu"):
            fp["GPU type"].add(str(sim["gpu"]))
        if r.get("perf_model"):
            fp["sim performance model"].add(str(r["perf_model"]))
    return fp


def comparability(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The reasons the two reports are not comparable (empty when they are)."""
    problems = []
    fo, fn = _fingerprint(old), _fingerprint(new)
    for what in fo:
        if fo[what] and fn[what] and fo[what] != fn[what]:
            problems.append(f"{what} differs: {', '.join(sorted(fo[what]))} → {', '.join(sorted(fn[what]))}")
    contents: dict[tuple[str, str, str], set[str]] = {}
    for rep in (old, new):
        for r in rep.get("results") or []:
            w = r.get("workload") or {}
            if isinstance(w, Mapping) and w.get("content_hash"):  # per load level: a level may have its own
                key = (str(r.get("suite")), str(w.get("name")), load_label(r.get("load")))  # (time_scale, counts)
                contents.setdefault(key, set()).add(str(w["content_hash"]))
    for (suite, wname, _), hashes in sorted(contents.items()):
        if len(hashes) > 1:
            problems.append(f"workload content differs for {suite}/{wname} "
                            f"(content hashes {', '.join(sorted(hashes))})")
    return problems


def _interval(result: Mapping[str, Any], metric: Metric) -> tuple[float, float] | None:
    """A confidence interval for the metric when the result has one (repeats)."""
    ci = (result.get("confidence") or {}).get(str(metric))
    if isinstance(ci, Sequence) and len(ci) == 2 and all(isinstance(x, int | float) for x in ci):
        return float(ci[0]), float(ci[1])
    return None


def _best(ranking: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, ...], tuple[str, str]]:
    """(suite, workload, load) → (config_id of rank 1, readable label of the point)."""
    best: dict[tuple[Any, ...], tuple[str, str]] = {}
    for entry in ranking:
        if entry.get("rank") == 1:
            where = f"{entry.get('suite')}/{entry.get('workload')}@{load_label(entry.get('load'))}"
            best[(entry.get("suite"), entry.get("workload"), load_key(entry.get("load")))] = (
                str(entry["config_id"]), where)
    return best


def diff_reports(old: Mapping[str, Any], new: Mapping[str, Any], *, thresholds: Sequence[Threshold] = (),
                 metrics: Sequence[str] = DEFAULT_METRICS, fail_on_best: bool = False,
                 allow_different: bool = False, significance_percent: float = 5.0) -> DiffResult:
    problems = comparability(old, new)
    out = DiffResult()
    if problems and not allow_different:
        raise IncomparableReports("the reports are not comparable: " + "; ".join(problems) +
                                  " (use --allow-different to compare anyway)")
    out.warnings += [f"COMPARING DIFFERENT SETUPS: {p}" for p in problems]
    old_by = {match_key(r): r for r in old.get("results") or []}
    new_by = {match_key(r): r for r in new.get("results") or []}
    wanted = list(dict.fromkeys([*metrics, *(str(t.metric) for t in thresholds)]))
    parsed = {m: parse_metric(m) for m in wanted}
    best_old, best_new = _best(old.get("ranking") or []), _best(new.get("ranking") or [])
    best_new_ids = {cid for cid, _ in best_new.values()}

    def label(r: Mapping[str, Any]) -> str:
        if r.get("display_id"):  # e.g. agent[lpm-chunk1024-c32]: readable, and it names workload and load
            return f"{r.get('suite')}/{r['display_id']}"
        return f"{r.get('suite')}/{workload_name(r)}@{load_label(r.get('load'))} {r.get('config_id')}"

    names = {str(r.get("config_id")): str(r["display_id"]).split("[", 1)[-1].rsplit("-", 1)[0]
             for r in [*old_by.values(), *new_by.values()] if r.get("display_id") and "[" in str(r["display_id"])}

    for key in sorted(set(old_by) | set(new_by), key=str):
        o, n = old_by.get(key), new_by.get(key)
        if o is None and n is not None:
            out.appeared.append(label(n))
            continue
        if n is None and o is not None:
            out.disappeared.append(label(o))
            continue
        assert o is not None and n is not None
        if o.get("status") == "passed" and n.get("status") != "passed":
            out.started_failing.append(f"{label(n)}: {n.get('status')} ({n.get('reason') or 'no reason'})")
        om, nm = o.get("metrics") or {}, n.get("metrics") or {}
        if not om or not nm:
            continue
        out.matched += 1
        for name, metric in parsed.items():
            a, b = metric.value(om), metric.value(nm)
            if a is None or b is None:
                continue
            io, inew = _interval(o, metric), _interval(n, metric)
            if io and inew:
                significant = io[1] < inew[0] or inew[1] < io[0]
            else:
                significant = a != 0 and abs(b - a) / abs(a) * 100 > significance_percent
            change = Change(key, label(n), name, a, b, significant)
            for t in thresholds:
                if str(t.metric) != name:
                    continue
                if fail_on_best and str(n.get("config_id")) not in best_new_ids:
                    continue
                if t.crossed(a, b):
                    change.crossed.append(str(t))
                    pct = change.percent
                    out.regressions.append(f"{label(n)}: {name} {a:.4g} → {b:.4g} ({pct:+.1f}%) crosses {t}")
            out.changes.append(change)
    for k in sorted(set(best_old) & set(best_new), key=str):
        (old_id, where), (new_id, _) = best_old[k], best_new[k]
        if old_id != new_id:
            out.best_changed.append(f"{where}: {names.get(old_id, old_id)} → {names.get(new_id, new_id)}")
    return out


def format_terminal(result: DiffResult, *, color: bool = False) -> list[str]:
    """The terminal table: significant changes highlighted with ``*`` (and colour on a TTY)."""
    lines = [f"matched {result.matched} results"]
    for w in result.warnings:
        lines.append(f"WARNING: {w}")
    if result.best_changed:
        lines.append("THE BEST CONFIG CHANGED:")
        lines += [f"  {b}" for b in result.best_changed]
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
        + items("Regressions", result.regressions)
        + "<h2>Changes</h2>" + table(result.changes)
        + items("Appeared", result.appeared) + items("Disappeared", result.disappeared)
        + items("Started failing", result.started_failing)
        + "</body></html>"
    )
