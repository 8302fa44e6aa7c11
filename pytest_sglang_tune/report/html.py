"""report.html: one self-contained page (inline CSS, inline SVG charts, one inline script; nothing fetched).

Order: the answer (best config per workload, as a command line and as YAML), then per suite the Pareto
charts, the per-flag effect charts, the latency percentile charts, the results table (sortable, filterable),
failures with their log tails and the excluded configs; the run's manifest last. Every value from the report
passes through :func:`html.escape`; the only markup is ours. The DOM contract of the charts and tables is in
``html_charts`` and ``html_tables``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pytest_sglang_tune.ranking import load_key, load_label, workload_name
from pytest_sglang_tune.report import objective_text, slo_texts, status_counts, suite_names
from pytest_sglang_tune.report.html_answer import answer_section
from pytest_sglang_tune.report.html_charts import flag_effect_chart, latency_charts, pareto_chart
from pytest_sglang_tune.report.html_model import best_per_load, loads, suite_results, workloads
from pytest_sglang_tune.report.html_search import search_section
from pytest_sglang_tune.report.html_svg import esc
from pytest_sglang_tune.report.html_tables import (
    command_text,
    excluded_table,
    failures_table,
    results_table,
    suite_flags,
)
from pytest_sglang_tune.report.html_telemetry import CSS as TELEMETRY_CSS
from pytest_sglang_tune.report.html_telemetry import load_section
from pytest_sglang_tune.report.terminal import gpu_hours_text
from pytest_sglang_tune.results import perf_model_text

__all__ = ["esc", "render_html"]

_CSS = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg2:#f6f8fa;--blue:#0969da}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;
 max-width:1480px;padding:0 1.5em 3em;color:var(--fg);background:#fff}
h1{font-size:1.5em;margin:1em 0 .2em}h2{margin-top:1.8em;border-bottom:1px solid var(--line);padding-bottom:.2em}
h3{margin:1.2em 0 .4em;font-size:1.05em}h4{margin:.8em 0 .2em}.sub,.muted{color:var(--muted)}.sub{margin:0 0 1em}
nav a{margin-right:1em;color:var(--blue);text-decoration:none}.small{font-size:12px}
table{border-collapse:collapse;margin:.3em 0 1em;font-size:13px}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--bg2);white-space:nowrap}table.sortable th{cursor:pointer;user-select:none}
table.sortable th[data-dir=asc]::after{content:" \\25B2"}table.sortable th[data-dir=desc]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.ci{display:block;font-size:11px;
 color:var(--muted)}tr.slo-miss td{color:#6e7781}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;
 font-weight:600}.status-error,.status-failed{color:#cf222e}.status-infeasible{color:#9a6700}
.status-skipped,.status-excluded{color:var(--muted)}.tied{background:#ddf4ff;color:#0550ae;border-radius:8px;
 padding:0 6px;font-size:11px;font-weight:600}
code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}code.cid{color:var(--muted);
 font-size:11px}pre{background:var(--bg2);padding:.5em;max-height:24em;overflow:auto;white-space:pre-wrap;
 word-break:break-all;margin:.3em 0}.flags code{display:inline-block;margin:0 .4em 0 0}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:.4em .8em;margin:.5em 0}
details summary{cursor:pointer;color:var(--blue)}table.kv th{text-align:right}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(620px,1fr));gap:1em}
.card-body{display:flex;flex-wrap:wrap;gap:0 1.5em}.card-body .how{flex:1 1 480px;min-width:0}
.answer-card{border:1px solid var(--line);border-left:4px solid #1a7f37;border-radius:6px;padding:.2em 1em .6em}
.answer-card h3{margin-top:.6em}.copyable{display:flex;gap:.5em;align-items:flex-start}.copyable pre{flex:1}
button.copy{order:2;margin-top:.3em;font-size:11px;cursor:pointer;border:1px solid var(--line);
 background:#fff;border-radius:4px;padding:2px 6px;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:.8em}figure.chart-box{margin:0;border:1px solid var(--line);
 border-radius:6px;padding:6px;background:#fff}figcaption{font-size:12px;color:var(--muted);max-width:420px}
svg.chart{display:block;font-family:inherit}svg .plot{fill:#fff;stroke:#8c959f}svg .grid{stroke:#eaeef2}
svg .tick{font-size:10px;fill:var(--muted)}svg .axis{font-size:11px;fill:var(--fg)}
svg .slo{stroke:#cf222e;stroke-dasharray:4 3}svg .slo-label{font-size:10px;fill:#cf222e}
svg .err{stroke-width:1.2;opacity:.6}svg circle.pt{stroke-width:1.6;opacity:.9}svg circle.front{stroke:#1b1f24}
.legend{font-size:12px;margin:.3em 0;color:var(--muted)}.legend .key{margin-right:.9em;white-space:nowrap;
 color:var(--fg)}.legend i{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px}
.filters{display:flex;flex-wrap:wrap;gap:1em;align-items:center;margin:.6em 0 .2em;font-size:13px}
.filters .count{color:var(--muted)}.scroll{overflow-x:auto;max-width:100%}
table.results th{white-space:normal;min-width:4em}table.results .flags code{display:block;white-space:nowrap}
td.config details{max-width:32em;font-size:12px}td.config code{white-space:nowrap}
.latency-set{margin-bottom:1em}
"""

# Sorting: click a header (numbers via data-sort; a cell without data-sort sorts last both ways; the first
# click sorts best-first, data-first="desc" on the th where higher is better; click again to flip).
# Filtering: the bar above a results table. Copy buttons: the clipboard, or a text selection.
_JS = r"""
(function(){
function cellVal(r,i){var c=r.cells[i];return c&&c.hasAttribute("data-sort")?c.getAttribute("data-sort"):null}
document.querySelectorAll("table.sortable").forEach(function(t){
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){th.addEventListener("click",function(){
  var cur=th.getAttribute("data-dir"),asc=cur?cur!=="asc":th.getAttribute("data-first")!=="desc",
   b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
  Array.prototype.forEach.call(t.tHead.rows[0].cells,function(h){h.removeAttribute("data-dir")});
  th.setAttribute("data-dir",asc?"asc":"desc");
  var txt=rows.every(function(r){return r.cells[i]&&!r.cells[i].hasAttribute("data-sort")});
  rows.sort(function(x,y){
   var a=txt?x.cells[i].textContent:cellVal(x,i),c=txt?y.cells[i].textContent:cellVal(y,i);
   if(a===null||c===null){return a===c?0:(a===null?1:-1)}
   var na=Number(a),nc=Number(c),d=(a!==""&&c!==""&&!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);
   return asc?d:-d});
  rows.forEach(function(r){b.appendChild(r)});});});});
document.querySelectorAll(".filters").forEach(function(bar){
 var t=document.getElementById(bar.getAttribute("data-table"));if(!t){return}
 function apply(){var q=bar.querySelector("[data-filter=text]").value.toLowerCase(),shown=0,
  w=bar.querySelector("[data-filter=workload]").value,l=bar.querySelector("[data-filter=load]").value,
  s=bar.querySelector("[data-filter=status]").value,o=bar.querySelector("[data-filter=slo]").checked;
  Array.prototype.forEach.call(t.tBodies[0].rows,function(r){
   var ok=(!q||r.textContent.toLowerCase().indexOf(q)>=0)&&(!w||r.getAttribute("data-workload")===w)&&
    (!l||r.getAttribute("data-load")===l)&&(!s||r.getAttribute("data-status")===s)&&
    (!o||r.getAttribute("data-slo-pass")==="true");
   r.hidden=!ok;if(ok){shown++}});
  bar.querySelector("[data-count]").textContent=shown+" of "+t.tBodies[0].rows.length+" rows";}
 bar.querySelectorAll("input,select").forEach(function(e){e.addEventListener("input",apply);
  e.addEventListener("change",apply)});apply();});
document.querySelectorAll("button.copy").forEach(function(btn){btn.addEventListener("click",function(){
 var pre=btn.parentNode.querySelector("pre"),text=pre.textContent;
 function done(){btn.textContent="copied";setTimeout(function(){btn.textContent="copy"},1500)}
 function select(){var rg=document.createRange();rg.selectNodeContents(pre);var s=window.getSelection();
  s.removeAllRanges();s.addRange(rg);try{document.execCommand("copy")}catch(e){}done()}
 if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(text).then(done,select)}
 else{select()}});});
})();
"""


def _kv(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows if v not in (None, "", []))
    return f'<table class="kv">{body}</table>'


def _distinct(report: Mapping[str, Any], key: str, text: Callable[[Any], str] = str) -> str:
    vals: list[str] = []
    for r in report.get("results") or []:
        v = r.get(key)
        if v not in (None, "") and text(v) and text(v) not in vals:
            vals.append(text(v))
    return ", ".join(vals)


def _manifest(report: Mapping[str, Any]) -> list[str]:
    run = report.get("run") or {}
    tool = report.get("tool") or {}
    machine = run.get("machine") or {}
    cpu = machine.get("cpu")
    if isinstance(cpu, Mapping):
        cpu = f"{cpu.get('model') or '?'} × {cpu.get('count') or '?'}"
    sglang = [str(i.get("sglang_version")) for i in (report.get("suites") or {}).values()
              if isinstance(i, Mapping) and i.get("sglang_version")]
    for v in _distinct(report, "sglang_version").split(", "):
        if v and v not in sglang:
            sglang.append(v)
    repeats = sorted({f"{r['repeats'].get('n')}" + (" (redeployed)" if r["repeats"].get("redeploy") else "")
                      for r in report.get("results") or [] if isinstance(r.get("repeats"), Mapping)})
    methods = ", ".join(sorted({str(r["confidence_method"].get("method")) for r in report.get("results") or []
                                if isinstance(r.get("confidence_method"), Mapping)}))
    margin = run.get("tie_margin")
    ties = (f"tied when the scores differ by less than {margin:.1%} or the 95% interval of their difference "
            "holds 0" if isinstance(margin, int | float) else None)
    counts = status_counts(report)
    gpus = run.get("gpus")
    if run.get("gpus_source"):
        gpus = f"{gpus} ({run['gpus_source']})"
    rows: list[tuple[str, Any]] = [
        ("Run", run.get("id")), ("Tool", f"{tool.get('name', '')} {tool.get('version', '')}".strip()),
        ("SGLang", ", ".join(sglang)), ("Image", _distinct(report, "image")),
        ("Image digest", _distinct(report, "image_digest")),
        ("Perf model", _distinct(report, "perf_model", perf_model_text)),
        ("Model", _distinct(report, "model")), ("Backend", run.get("backend")), ("GPUs", gpus),
        ("Started", run.get("started_at")), ("Finished", run.get("finished_at")),
        ("Exit status", run.get("exit_status")), ("Interrupted", run.get("interrupted") or None),
        ("Host", machine.get("host")), ("Platform", machine.get("platform")), ("Python", machine.get("python")),
        ("CPU", cpu), ("Machine GPUs", machine["gpus"] if isinstance(machine.get("gpus"), str) else
                         ", ".join(str(g) for g in machine.get("gpus") or []) or "none found"),
        ("Command", command_text(run.get("argv"))),
        ("Repeats", ", ".join(repeats)), ("Confidence", methods or None), ("Ties", ties),
        ("Results", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"),
        ("GPU time", gpu_hours_text(run.get("gpu_hours"))),
        ("report.json schema", report.get("schema_version")),
    ]
    known = {"id", "started_at", "finished_at", "backend", "gpus", "gpus_source", "argv", "machine",
             "exit_status", "interrupted", "tie_margin", "gpu_hours", "search"}
    rows += [(k, v if isinstance(v, (str, int, float)) else repr(v)) for k, v in run.items() if k not in known]
    out = ['<section id="manifest"><h2>Run manifest</h2>', _kv(rows)]
    out += [f'<div class="warn">{esc(w)}</div>' for w in report.get("warnings") or []]
    out.append("</section>")
    return out


def _suite_section(report: Mapping[str, Any], suite: str, n: int) -> list[str]:
    info = (report.get("suites") or {}).get(suite) or {}
    results = suite_results(report, suite)
    flags = suite_flags(report, suite, results)
    slos = slo_texts(report, suite)
    out = [f'<section class="suite" id="suite-{n}" data-suite="{esc(suite)}"><h2>Suite {esc(suite)}</h2>',
           f'<p class="sub">objective <b>{esc(objective_text(report, suite) or "default")}</b> · '
           f"SLOs: {esc('; '.join(slos)) if slos else 'none'}"]
    if info.get("model"):
        out.append(f" · model {esc(info['model'])}")
    if info.get("sglang_version"):
        out.append(f" · SGLang {esc(info['sglang_version'])}")
    out.append(f" · {len(results)} results</p>")
    if info.get("error"):
        out.append(f'<div class="warn">{esc(info["error"])}</div>')
    names = workloads(results)
    pareto = [c for c in (pareto_chart(report, suite, w) for w in names) if c]
    if pareto:
        out += ["<h3>Pareto: throughput per GPU against latency</h3>", '<div class="charts">', *pareto, "</div>"]
    effects = [c for w in names for f in flags if (c := flag_effect_chart(report, suite, w, f))]
    if effects:
        out += ["<h3>How each flag moves the objective</h3>", '<div class="charts">', *effects, "</div>"]
    lat = []
    for w in names:
        best = {load_key(b.load): b.config_id for b in best_per_load(report, suite, w)}
        for load in loads([r for r in results if workload_name(r) == w]):
            lat.append(latency_charts(report, suite, w, load, best.get(load_key(load))))
    lat = [x for x in lat if x]
    if lat:
        out += ["<h3>Latency percentiles per config</h3>", *lat]
    per_point = load_section([{**r, "_load_label": load_label(r.get("load"))} for r in results],
                             lambda r: r.get("display_id") or f"{workload_name(r)}@{load_label(r.get('load'))}")
    if per_point:
        out += ["<h3>Server load and GPU telemetry per point</h3>", per_point]
    if results:
        out += ["<h3>All results</h3>", results_table(report, suite, results, flags)]
    out.append(failures_table(results))
    if info.get("excluded"):
        out.append(excluded_table(list(info["excluded"])))
    out.append("</section>")
    return out


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report as one HTML document (no external resources)."""
    run = report.get("run") or {}
    tool = report.get("tool") or {}
    title = f"SGLang tuning report {run.get('id') or ''}".strip()
    names = suite_names(report)
    nav = "".join(f'<a href="#suite-{i}">{esc(s)}</a>' for i, s in enumerate(names))
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{_CSS}{TELEMETRY_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f'<p class="sub">backend {esc(run.get("backend") or "?")} · GPUs {esc(run.get("gpus"))} · '
             f"{esc(run.get('started_at'))} → {esc(run.get('finished_at'))}</p>",
             f'<nav><a href="#answer">answer</a>{nav}<a href="#manifest">manifest</a></nav>']
    parts += answer_section(report)
    parts += search_section(report)
    if not names:
        parts.append("<p>No results.</p>")
    for i, suite in enumerate(names):
        parts += _suite_section(report, suite, i)
    parts += _manifest(report)
    parts.append(f'<footer class="sub">{esc(tool.get("name"))} {esc(tool.get("version"))} · '
                 f"report.json schema_version {esc(report.get('schema_version'))}</footer>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"
