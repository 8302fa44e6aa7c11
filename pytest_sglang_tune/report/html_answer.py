"""The top of report.html: the best config per suite × workload (and per load level), ready to copy as a
``sglang.launch_server`` command line and as YAML for a suite's ``server.fixed``."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

import yaml

from pytest_sglang_tune.ranking import load_key, load_label
from pytest_sglang_tune.report import fmt, objective_text, slo_texts, suite_names
from pytest_sglang_tune.report.html_model import (
    Best,
    best_per_load,
    headline,
    max_sustained,
    short_label,
    suite_results,
    workloads,
)
from pytest_sglang_tune.report.html_svg import esc

LAUNCHER = "python -m sglang.launch_server"


def model_path(report: Mapping[str, Any], suite: str, result: Mapping[str, Any]) -> str:
    info = (report.get("suites") or {}).get(suite) or {}
    for v in (info.get("model"), result.get("model")):
        if isinstance(v, str) and v:
            return v
        if isinstance(v, Mapping) and v.get("path"):
            return str(v["path"])
    m = re.search(r"--model-path[ =](\S+)", str(result.get("launch_command") or ""))
    return m.group(1) if m else "<model>"


def flag_args(server_args: Mapping[str, Any]) -> list[str]:
    """``{flag: value}`` → argv words as SGLang takes them (``True`` → bare flag; ``False``/``None`` left out)."""
    out: list[str] = []
    for flag, value in server_args.items():
        name = flag if str(flag).startswith("-") else "--" + str(flag).replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(name)
        elif isinstance(value, (list, tuple)):
            out += [name, *(str(v) for v in value)]
        elif isinstance(value, Mapping):
            out += [name, yaml.safe_dump(dict(value), default_flow_style=True).strip()]
        else:
            out += [name, str(value)]
    return out


def launch_line(model: str, server_args: Mapping[str, Any]) -> str:
    return f"{LAUNCHER} --model-path {shlex.quote(model)} " + shlex.join(flag_args(server_args))


def fixed_yaml(server_args: Mapping[str, Any]) -> str:
    return str(yaml.safe_dump({"server": {"fixed": dict(server_args)}}, sort_keys=False, default_flow_style=False))


def _copy_block(cls: str, text: str, label: str) -> str:
    return (f'<div class="copyable"><button type="button" class="copy" title="copy to the clipboard">'
            f'copy {esc(label)}</button><pre class="{cls}">{esc(text)}</pre></div>')


def _slo_badge(ok: bool | None) -> str:
    if ok is None:
        return '<span class="muted">–</span>'
    return '<span class="pass">meets SLOs</span>' if ok else '<span class="fail">misses SLOs</span>'


def _per_load_table(report: Mapping[str, Any], bests: list[Best], sustained: list[dict[str, Any]]) -> str:
    labels = {b.config_id: short_label(b.result) for b in bests}
    results = {str(r.get("config_id")): r for r in report.get("results") or []}
    rows = []
    for b in bests:
        tied = ", ".join(f'<code title="{esc(x)}">{esc(short_label(results.get(x, {"config_id": x})))}</code>'
                         for x in b.tied_with)
        rows.append(f'<tr data-config-id="{esc(b.config_id)}" data-load="{esc(load_label(b.load))}">'
                    f"<td>{esc(load_label(b.load))}</td><td><code>{esc(labels[b.config_id])}</code></td>"
                    f'<td class="num">{esc(fmt(b.score))}</td><td>{_slo_badge(b.slo_pass)}</td>'
                    f'<td class="small">{tied or "–"}</td></tr>')
    out = ['<table class="per-load"><thead><tr><th>load</th><th>best config</th><th>score</th><th>SLOs</th>'
           "<th>tied with</th></tr></thead><tbody>", *rows, "</tbody></table>"]
    if sustained:
        out.append('<table class="sustained"><thead><tr><th>config</th><th>highest load within the SLOs</th>'
                   "</tr></thead><tbody>")
        order = sorted(sustained, key=lambda m: load_key(m.get("load")) if m.get("load") else ((False, -1.0),),
                       reverse=True)
        for m in order:
            cid = str(m.get("config_id"))
            label = short_label(results.get(cid, {"config_id": cid}))
            load = m.get("load")
            out.append(f'<tr data-config-id="{esc(cid)}"><td><code>{esc(label)}</code></td>'
                       f'<td>{esc(load_label(load)) if load else "none"}</td></tr>')
        out.append("</tbody></table>")
    return "".join(out)


def _card(report: Mapping[str, Any], suite: str, workload: str, bests: list[Best]) -> str:
    best = headline(bests)
    if best is None:
        return ""
    r = best.result
    args = dict(r.get("server_args") or {})
    objective = objective_text(report, suite) or "objective"
    tied = (f' <span class="tied">tied with {len(best.tied_with)} other config(s)</span>'
            if best.tied_with else "")
    out = [f'<div class="answer-card" data-suite="{esc(suite)}" data-workload="{esc(workload)}" '
           f'data-config-id="{esc(best.config_id)}" data-load="{esc(load_label(best.load))}">',
           f"<h3>{esc(workload)} <span class='muted'>({esc(suite)})</span>: "
           f"<code>{esc(short_label(r))}</code></h3>",
           f'<p>at load <b>{esc(load_label(best.load))}</b> · {esc(objective)} = <b>{esc(fmt(best.score))}</b> · '
           f"{_slo_badge(best.slo_pass)}{tied}"]
    slos = slo_texts(report, suite)
    if slos:
        out.append(f' <span class="muted">(SLOs: {esc("; ".join(slos))})</span>')
    out.append("</p>")
    if not best.slo_pass:
        out.append('<p class="warn">No config meets the SLOs at any load level: this is the best score, '
                   "not a recommendation.</p>")
    export = ((report.get("exports") or {}).get(suite) or {}).get(workload) or {}
    out.append('<div class="card-body"><div class="how">')
    command = export.get("launch_command") or launch_line(model_path(report, suite, r), args)
    out.append(_copy_block("cmd", str(command), "command"))
    out.append(_copy_block("yaml", fixed_yaml(args), "YAML"))
    out.append(f'<p class="small muted">config id <code>{esc(best.config_id)}</code></p>')
    out.append(_export_blocks(suite, workload, export))
    out.append('</div><div class="levels">')
    out.append(_per_load_table(report, bests, max_sustained(report, suite, workload)))
    out.append("</div></div></div>")
    return "".join(out)


def _export_blocks(suite: str, workload: str, export: Mapping[str, Any]) -> str:
    """Deploy the winner where it runs: the ``docker run`` line and the OME InferenceService of
    ``report["exports"]`` (absent: nothing), with what was left out and why."""
    if not export:
        return ""
    from pytest_sglang_tune.report.export import export_name

    out = [f'<div class="export" id="export-{esc(export_name(suite, workload))}" '
           f'data-config-id="{esc(export.get("config_id"))}"><h4>Deploy the winner</h4>']
    if export.get("error"):
        out.append(f'<p class="warn">{esc(export["error"])}</p>')
    if export.get("docker_run"):
        out.append(_copy_block("docker-run", str(export["docker_run"]), "docker run"))
    if export.get("inference_service_yaml"):
        file = export.get("inference_service_file")
        out.append(f'<p class="small">OME InferenceService{f" (also in <code>{esc(file)}</code>)" if file else ""}'
                   "; secret values come from the Secret named in it</p>")
        out.append(_copy_block("inference-service", str(export["inference_service_yaml"]), "manifest"))
    if export.get("tied_with"):
        out.append(f'<p class="small muted">tied with {len(export["tied_with"])} other config(s): '
                   + ", ".join(f"<code>{esc(c)}</code>" for c in export["tied_with"]) + "</p>")
    out += [f'<p class="small muted">{esc(n)}</p>' for n in export.get("notes") or []]
    out.append("</div>")
    return "".join(out)


def answer_section(report: Mapping[str, Any]) -> list[str]:
    cards = []
    summary = []
    for suite in suite_names(report):
        for workload in workloads(suite_results(report, suite)):
            bests = best_per_load(report, suite, workload)
            best = headline(bests)
            if best is None:
                summary.append(f"<tr><td>{esc(suite)}</td><td>{esc(workload)}</td>"
                               '<td colspan="4" class="fail">no ranked result</td></tr>')
                continue
            summary.append(f'<tr data-config-id="{esc(best.config_id)}"><td>{esc(suite)}</td>'
                           f"<td>{esc(workload)}</td><td><code>{esc(short_label(best.result))}</code></td>"
                           f"<td>{esc(load_label(best.load))}</td><td class=\"num\">{esc(fmt(best.score))}</td>"
                           f"<td>{_slo_badge(best.slo_pass)}</td></tr>")
            cards.append(_card(report, suite, workload, bests))
    if not summary:
        return []
    return ['<section id="answer"><h2>The answer: best config per workload</h2>',
            '<p class="sub">Per workload, the best config at the highest load level where one meets the SLOs '
            "(the table under each shows the best per load level).</p>",
            '<table class="answer"><thead><tr><th>suite</th><th>workload</th><th>best config</th><th>load</th>'
            "<th>score</th><th>SLOs</th></tr></thead><tbody>", *summary, "</tbody></table>",
            '<div class="cards">', *cards, "</div></section>"]
