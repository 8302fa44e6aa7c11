"""The tables of report.html: every result of a suite (sortable, filterable), failures with their log tails,
and the configs the suite's constraints excluded.

DOM contract: ``<table class="results sortable" data-suite=...>``; each ``<th data-key=...>`` names its column
(``rank``, ``score``, a metric such as ``ttft_ms.p99``, ...); each ``<tr>`` of the body carries
``data-config-id``, ``data-workload``, ``data-load``, ``data-status``, ``data-slo-pass``; each numeric cell its
value in ``data-sort`` (no ``data-sort`` when the value is missing: such rows sort last either way).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from pytest_sglang_tune.errors import GrammarError
from pytest_sglang_tune.grammar import SLO, parse_metric, parse_slo
from pytest_sglang_tune.ranking import is_ranked, load_key, load_label, workload_name
from pytest_sglang_tune.report import flag_text, fmt, metric_columns, slo_texts, varying_flags
from pytest_sglang_tune.report.html_model import confidence, loads, objective_metric, short_label, workloads
from pytest_sglang_tune.report.html_svg import esc


def command_text(cmd: Any) -> str:
    if isinstance(cmd, (list, tuple)):
        return shlex.join(str(c) for c in cmd)
    return "" if cmd is None else str(cmd)


def _parsed_slos(report: Mapping[str, Any], suite: str) -> dict[str, list[SLO]]:
    out: dict[str, list[SLO]] = {}
    for text in slo_texts(report, suite):
        try:
            slo = parse_slo(text)
        except GrammarError:
            continue
        out.setdefault(str(slo.metric), []).append(slo)
    return out


def num_cell(value: Any, slos: Iterable[SLO] = (), ci: tuple[float, float] | None = None) -> str:
    """A right-aligned number; red when it breaks one of ``slos``; the confidence interval under it."""
    sort = "" if value is None else f' data-sort="{esc(value)}"'
    bad = value is not None and any(not slo.check_value(float(value)) for slo in slos)
    cls = "num fail" if bad else "num"
    extra = f'<span class="ci">[{esc(fmt(ci[0]))} – {esc(fmt(ci[1]))}]</span>' if ci else ""
    return f'<td class="{cls}"{sort}>{esc(fmt(value))}{extra}</td>'


def notes(result: Mapping[str, Any]) -> str:
    out = [str(w) for w in result.get("warnings") or []]
    rep = result.get("repeats")
    if isinstance(rep, Mapping) and rep.get("n"):
        out.append(f"{rep['n']} repeats" + (", redeployed each time" if rep.get("redeploy") else
                                            " in one deployment"))
    sim = result.get("sim") or {}
    if isinstance(sim, Mapping):
        if sim.get("not_modelled"):
            out.append("sim does not model: " + ", ".join(str(x) for x in sim["not_modelled"]))
        lag = sim.get("lag_warning") or sim.get("lag")
        if isinstance(lag, Mapping):
            lag = lag.get("warning")
        if isinstance(lag, str) and lag:
            out.append(lag)
    return "<br>".join(esc(n) for n in out)


def config_cell(result: Mapping[str, Any]) -> str:
    cid = result.get("config_id")
    label = f'<code title="{esc(cid)}">{esc(short_label(result))}</code>'
    cmd = command_text(result.get("launch_command"))
    more = f"config id <code>{esc(cid)}</code>" + (f"<pre>{esc(cmd)}</pre>" if cmd else "")
    label += f"<details><summary>{'launch command' if cmd else 'config id'}</summary>{more}</details>"
    return f'<td class="config" data-sort="{esc(short_label(result))}">{label}</td>'


def _load_sort(load: Mapping[str, Any] | None) -> str:
    (_, c), (_, r) = load_key(load)
    return f"{c * 1e6 + r:.6f}"


def _filters(table_id: str, results: list[dict[str, Any]]) -> str:
    def select(name: str, options: list[str]) -> str:
        opts = "".join(f'<option value="{esc(o)}">{esc(o)}</option>' for o in options)
        return (f'<label>{esc(name)} <select data-filter="{esc(name)}"><option value="">all</option>{opts}'
                "</select></label>")

    statuses = sorted({str(r.get("status")) for r in results})
    return (f'<div class="filters" data-table="{esc(table_id)}">'
            '<label>filter <input type="search" data-filter="text" placeholder="config, flag, reason…"></label>'
            + select("workload", workloads(results)) + select("load", [load_label(x) for x in loads(results)])
            + select("status", statuses)
            + '<label><input type="checkbox" data-filter="slo"> meets SLOs only</label>'
            '<span class="count" data-count></span></div>')


def _first(key: str, maximize: bool) -> str:
    """A column's first sort direction is best-first: descending for the score of a maximised objective, for
    metrics where higher is better and for the SLO column (passing first); ascending otherwise."""
    if key == "score":
        best_high = maximize
    elif key == "slo":
        best_high = True
    else:
        try:
            best_high = parse_metric(key).higher_is_better
        except GrammarError:  # not a metric column (config, flags, status, ...)
            best_high = False
    return ' data-first="desc"' if best_high else ""


def results_table(report: Mapping[str, Any], suite: str, results: list[dict[str, Any]], flags: list[str]) -> str:
    metric, maximize = objective_metric(report, suite)
    cols = [str(m) for m in metric_columns(report, suite) if str(m) != metric]
    slos = _parsed_slos(report, suite)
    entries = {(str(e.get("workload")), load_key(e.get("load")), str(e.get("config_id"))): e
               for e in report.get("ranking") or [] if e.get("suite") == suite}
    table_id = "results-" + "".join(c if c.isalnum() else "-" for c in suite)
    head = [("workload", "workload"), ("load", "load"), ("rank", "#"), ("config", "config"),
            ("flags", "key flags"), ("score", f"score ({metric})"), *((c, c) for c in cols),
            ("slo", "SLOs"), ("status", "status"), ("notes", "notes")]
    out = [_filters(table_id, results),
           f'<div class="scroll"><table id="{esc(table_id)}" class="results sortable" data-suite="{esc(suite)}">'
           "<thead><tr>",
           *(f'<th data-key="{esc(k)}"{_first(k, maximize)}>{_breakable(label)}</th>' for k, label in head),
           "</tr></thead><tbody>"]

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        e = entries.get((workload_name(r), load_key(r.get("load")), str(r.get("config_id"))))
        return (workloads(results).index(workload_name(r)), load_key(r.get("load")), e is None,
                (e or {}).get("rank") or 0, str(r.get("config_id")))

    for r in sorted(results, key=order):
        e = entries.get((workload_name(r), load_key(r.get("load")), str(r.get("config_id")))) or {}
        m = r.get("metrics") or {}
        args = r.get("server_args") or {}
        status = str(r.get("status"))
        ok = e.get("slo_pass") if e else r.get("slo_pass") if is_ranked(r) else None
        rank = e.get("rank")
        tied = (' <span class="tied" title="tied: the scores differ by less than the noise (tie rule in '
                'docs/report-schema.md); equal ranks make no claim of order">=</span>' if e.get("tied") else "")
        slo_html = ('<span class="pass">pass</span>' if ok else '<span class="fail">fail</span>' if ok is False
                    else "–")
        rank_sort = "" if rank is None else f' data-sort="{esc(rank)}"'
        slo_sort = "" if ok is None else f' data-sort="{int(bool(ok))}"'
        flag_html = " ".join(f"<code>{esc(flag_text(f, args[f]))}</code>" for f in flags if f in args)
        reason = f"<br>{esc(r.get('reason'))}" if r.get("reason") else ""
        cells = [f'<td data-sort="{esc(workload_name(r))}">{esc(workload_name(r))}</td>',
                 f'<td data-sort="{_load_sort(r.get("load"))}">{esc(load_label(r.get("load")))}</td>',
                 f'<td class="num"{rank_sort}>{esc(fmt(rank))}{tied}</td>',
                 config_cell(r), f'<td class="flags">{flag_html}</td>',
                 num_cell(e.get("score") if e else None, ci=confidence(r, metric)),
                 *(num_cell(_value(m, c), slos.get(c, ()), confidence(r, c)) for c in cols),
                 f"<td{slo_sort}>{slo_html}</td>",
                 f'<td data-sort="{esc(status)}" class="status-{esc(status)}">{esc(status)}{reason}</td>',
                 f'<td class="small">{notes(r)}</td>']
        out.append(f'<tr data-config-id="{esc(r.get("config_id"))}" data-workload="{esc(workload_name(r))}" '
                   f'data-load="{esc(load_label(r.get("load")))}" data-status="{esc(status)}" '
                   f'data-slo-pass="{esc(str(ok).lower())}" class="{"slo-miss" if ok is False else ""}">'
                   + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _breakable(label: str) -> str:
    """Escaped, with a line-break opportunity after each ``_`` and ``.`` (long metric names in headers)."""
    return esc(label).replace("_", "_<wbr>").replace(".", ".<wbr>")


def _value(metrics: Mapping[str, Any], metric: str) -> float | None:
    name, _, stat = metric.partition(".")
    v = metrics.get(name)
    if stat:
        v = v.get(stat) if isinstance(v, Mapping) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def failures_table(results: list[dict[str, Any]]) -> str:
    """Results that did not produce a valid measurement: status, reason and the server's last log lines."""
    rows = [r for r in results if r.get("status") != "passed"]
    if not rows:
        return ""
    out = [f'<h3>Failures and unranked results ({len(rows)})</h3>',
           '<table class="failures sortable"><thead><tr><th>config</th><th>workload</th><th>load</th>'
           "<th>status</th><th>reason</th></tr></thead><tbody>"]
    for r in rows:
        status = str(r.get("status"))
        reason = esc(r.get("reason"))
        if r.get("log_tail"):
            reason += f"<details open><summary>server log tail</summary><pre>{esc(r['log_tail'])}</pre></details>"
        out.append(f'<tr data-config-id="{esc(r.get("config_id"))}" data-status="{esc(status)}">'
                   f"{config_cell(r)}<td>{esc(workload_name(r))}</td><td>{esc(load_label(r.get('load')))}</td>"
                   f'<td class="status-{esc(status)}">{esc(status)}</td><td>{reason}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def excluded_table(excluded: list[Mapping[str, Any]]) -> str:
    out = [f"<h3>Excluded by the suite's constraints ({len(excluded)})</h3>",
           '<table class="excluded sortable"><thead><tr><th>config</th><th>server args</th><th>reason</th></tr>'
           "</thead><tbody>"]
    for e in excluded:
        args = e.get("server_args") or {}
        flags = " ".join(f"<code>{esc(flag_text(k, v))}</code>" for k, v in args.items())
        out.append(f"<tr><td><code>{esc(e.get('config_id'))}</code></td><td class=\"flags\">{flags}</td>"
                   f"<td>{esc(e.get('reason'))}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def suite_flags(report: Mapping[str, Any], suite: str, results: list[dict[str, Any]]) -> list[str]:
    info = (report.get("suites") or {}).get(suite) or {}
    return [str(f) for f in info.get("varying_flags") or []] or varying_flags(results)
