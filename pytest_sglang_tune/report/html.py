"""report.html: one self-contained page (inline CSS and a few lines of inline JS; nothing fetched).

Every value from the report passes through :func:`html.escape`; the only markup is ours.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from pytest_sglang_tune.errors import GrammarError
from pytest_sglang_tune.grammar import SLO, parse_slo
from pytest_sglang_tune.ranking import load_label, workload_name
from pytest_sglang_tune.report import (
    Group,
    flag_text,
    fmt,
    groups,
    metric_columns,
    objective_text,
    slo_texts,
    status_counts,
    suite_names,
    varying_flags,
)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;
 padding:0 1.5em 3em;color:#1b1f24;background:#fff}
h1{font-size:1.5em;margin:1em 0 .2em}h2{margin-top:1.8em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
h3{margin:1.4em 0 .4em;font-size:1.05em}.sub{color:#57606a;margin:0 0 1em}
table{border-collapse:collapse;margin:.3em 0 1em;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}table.sortable th{cursor:pointer}
table.sortable th[data-dir=asc]::after{content:" ▲"}table.sortable th[data-dir=desc]::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.slo-miss td{color:#6e7781}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.status-error,.status-failed{color:#cf222e}.status-infeasible{color:#9a6700}.status-skipped,.status-excluded{color:#57606a}
code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:.5em;max-height:24em;overflow:auto;white-space:pre-wrap;margin:.3em 0}
.flags code{display:inline-block;margin:0 .4em 0 0}.warn{background:#fff8c5;border:1px solid #d4a72c;
 padding:.4em .8em;margin:.5em 0}details summary{cursor:pointer;color:#0969da}table.kv th{text-align:right}
"""

# Click a header to sort by its column (numbers via data-sort, text otherwise); click again to flip.
_JS = """
document.querySelectorAll("table.sortable").forEach(function(t){
 t.querySelectorAll("th").forEach(function(th,i){th.addEventListener("click",function(){
  var asc=th.dataset.dir!=="asc",b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
  t.querySelectorAll("th").forEach(function(h){delete h.dataset.dir});th.dataset.dir=asc?"asc":"desc";
  function v(r){var c=r.cells[i];return c.hasAttribute("data-sort")?c.getAttribute("data-sort"):c.textContent}
  rows.sort(function(x,y){var a=v(x),c=v(y),na=parseFloat(a),nc=parseFloat(c);
   var d=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);return asc?d:-d});
  rows.forEach(function(r){b.appendChild(r)});});});});
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num_cell(value: Any, slos: Iterable[SLO] = ()) -> str:
    """A right-aligned number; red when it breaks one of ``slos`` (the SLOs on this column's metric)."""
    sort = "" if value is None else f' data-sort="{esc(value)}"'
    bad = value is not None and any(not slo.check_value(float(value)) for slo in slos)
    cls = "num fail" if bad else "num"
    return f'<td class="{cls}"{sort}>{esc(fmt(value))}</td>'


def _parsed_slos(report: Mapping[str, Any], suite: str) -> dict[str, list[SLO]]:
    out: dict[str, list[SLO]] = {}
    for text in slo_texts(report, suite):
        try:
            slo = parse_slo(text)
        except GrammarError:
            continue
        out.setdefault(str(slo.metric), []).append(slo)
    return out


def _command_text(cmd: Any) -> str:
    if isinstance(cmd, (list, tuple)):
        return shlex.join(str(c) for c in cmd)
    return "" if cmd is None else str(cmd)


def _run_section(report: Mapping[str, Any]) -> list[str]:
    run = report.get("run") or {}
    tool = report.get("tool") or {}
    machine = run.get("machine") or {}
    cpu = machine.get("cpu")
    if isinstance(cpu, Mapping):
        cpu = f"{cpu.get('model') or '?'} × {cpu.get('count') or '?'}"
    counts = status_counts(report)
    rows = [
        ("Run", run.get("id")),
        ("Tool", f"{tool.get('name', '')} {tool.get('version', '')}".strip()),
        ("Started", run.get("started_at")),
        ("Finished", run.get("finished_at")),
        ("Backend", run.get("backend")),
        ("GPUs", run.get("gpus")),
        ("Host", machine.get("host")),
        ("CPU", cpu),
        ("Machine GPUs", ", ".join(str(g) for g in machine.get("gpus") or []) or "none found"),
        ("Command", _command_text(run.get("argv"))),
        ("Results", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"),
    ]
    out = ['<section id="run"><h2>Run settings</h2><table class="kv">']
    out += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows]
    out.append("</table>")
    for w in report.get("warnings") or []:
        out.append(f'<div class="warn">{esc(w)}</div>')
    out.append("</section>")
    return out


def _notes(result: Mapping[str, Any]) -> str:
    notes = [str(w) for w in result.get("warnings") or []]
    sim = result.get("sim") or {}
    if isinstance(sim, Mapping):
        if sim.get("not_modelled"):
            notes.append("sim does not model: " + ", ".join(str(x) for x in sim["not_modelled"]))
        lag = sim.get("lag_warning") or sim.get("lag")
        if isinstance(lag, Mapping):
            lag = lag.get("warning")
        if isinstance(lag, str) and lag:
            notes.append(lag)
    return "<br>".join(esc(n) for n in notes)


def _config_cell(result: Mapping[str, Any], config_id: Any) -> str:
    display = result.get("display_id")
    label = f"<code>{esc(config_id)}</code>"
    if display and display != config_id:
        label = f"{esc(display)}<br>{label}"
    cmd = _command_text(result.get("launch_command"))
    if cmd:
        label += f"<details><summary>launch command</summary><pre>{esc(cmd)}</pre></details>"
    return f'<td data-sort="{esc(config_id)}">{label}</td>'


def _group_table(report: Mapping[str, Any], g: Group, flags: list[str]) -> list[str]:
    objective = objective_text(report, g.suite) or "score"
    objective_metric = objective.partition(":")[2].strip()
    cols = [m for m in metric_columns(report, g.suite) if str(m) != objective_metric]
    slos = _parsed_slos(report, g.suite)
    head = ["#", "config", "key flags", f"score ({objective})", *(str(m) for m in cols), "SLOs", "notes"]
    out = [f"<h3>{esc(g.title)}</h3>", '<table class="rank sortable"><thead><tr>']
    out += [f"<th>{esc(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for entry, res in g.ranked:
        metrics = res.get("metrics") or {}
        args = res.get("server_args") or {}
        flag_html = " ".join(f"<code>{esc(flag_text(f, args[f]))}</code>" for f in flags if f in args)
        ok = bool(entry.get("slo_pass"))
        slo = '<span class="pass">pass</span>' if ok else '<span class="fail">fail</span>'
        if res.get("status") == "failed":
            slo += f' <span class="status-failed">(test failed: {esc(res.get("reason"))})</span>'
        out.append(f'<tr class="{"slo-ok" if ok else "slo-miss"}">')
        out.append(_num_cell(entry.get("rank")))
        out.append(_config_cell(res, entry.get("config_id")))
        out.append(f'<td class="flags">{flag_html}</td>')
        out.append(_num_cell(entry.get("score")))
        out += [_num_cell(m.value(metrics), slos.get(str(m), ())) for m in cols]
        out.append(f'<td data-sort="{int(ok)}">{slo}</td><td>{_notes(res)}</td></tr>')
    out.append("</tbody></table>")
    return out


def _unranked_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ['<table class="sortable"><thead><tr><th>config</th><th>workload</th><th>load</th><th>status</th>'
           "<th>reason</th></tr></thead><tbody>"]
    for r in rows:
        status = str(r.get("status"))
        reason = esc(r.get("reason"))
        if r.get("log_tail"):
            reason += f"<details><summary>server log</summary><pre>{esc(r['log_tail'])}</pre></details>"
        out.append(f"<tr>{_config_cell(r, r.get('config_id'))}<td>{esc(workload_name(r))}</td>"
                   f"<td>{esc(load_label(r.get('load')))}</td>"
                   f'<td class="status-{esc(status)}">{esc(status)}</td><td>{reason}</td></tr>')
    out.append("</tbody></table>")
    return out


def _excluded_table(excluded: list[Mapping[str, Any]]) -> list[str]:
    out = ['<table class="sortable"><thead><tr><th>config</th><th>server args</th><th>reason</th></tr>'
           "</thead><tbody>"]
    for e in excluded:
        args = e.get("server_args") or {}
        flags = " ".join(f"<code>{esc(flag_text(k, v))}</code>" for k, v in args.items())
        out.append(f"<tr><td><code>{esc(e.get('config_id'))}</code></td><td class=\"flags\">{flags}</td>"
                   f"<td>{esc(e.get('reason'))}</td></tr>")
    out.append("</tbody></table>")
    return out


def _suite_section(report: Mapping[str, Any], suite: str) -> list[str]:
    info = (report.get("suites") or {}).get(suite) or {}
    results = [r for r in report.get("results") or [] if r.get("suite") == suite]
    flags = [str(f) for f in info.get("varying_flags") or []] or varying_flags(results)
    slos = slo_texts(report, suite)
    out = [f'<section class="suite"><h2>Suite {esc(suite)}</h2><p class="sub">',
           f"objective <b>{esc(objective_text(report, suite) or 'default')}</b> · "
           f"SLOs: {esc('; '.join(slos)) if slos else 'none'}"]
    if info.get("model"):
        out.append(f" · model {esc(info['model'])}")
    if info.get("sglang_version"):
        out.append(f" · SGLang {esc(info['sglang_version'])}")
    out.append(f" · {len(results)} results</p>")
    if info.get("error"):
        out.append(f'<div class="warn">{esc(info["error"])}</div>')
    unranked: list[dict[str, Any]] = []
    for g in groups(report, suite):
        if g.ranked:
            out += _group_table(report, g, flags)
        unranked += g.unranked
    if unranked:
        out.append(f"<h3>Not ranked ({len(unranked)}): failed, errors, infeasible, skipped</h3>")
        out += _unranked_table(unranked)
    if info.get("excluded"):
        out.append(f"<h3>Excluded by the suite's constraints ({len(info['excluded'])})</h3>")
        out += _excluded_table(list(info["excluded"]))
    out.append("</section>")
    return out


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report as one HTML document (no external resources)."""
    run = report.get("run") or {}
    tool = report.get("tool") or {}
    title = f"SGLang tuning report {run.get('id') or ''}".strip()
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f'<p class="sub">backend {esc(run.get("backend") or "?")} · GPUs {esc(run.get("gpus"))} · '
             f"{esc(run.get('started_at'))} → {esc(run.get('finished_at'))}</p>"]
    parts += _run_section(report)
    names = suite_names(report)
    if not names:
        parts.append("<p>No results.</p>")
    for suite in names:
        parts += _suite_section(report, suite)
    parts.append(f'<footer class="sub">{esc(tool.get("name"))} {esc(tool.get("version"))} · '
                 f"report.json schema_version {esc(report.get('schema_version'))}</footer>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"
