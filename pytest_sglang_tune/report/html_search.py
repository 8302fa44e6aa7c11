"""report.html's search section (``run.search``): per suite the budget used and left, why the search stopped,
predicted against measured for every measured config (with their rank correlation), and the configs not
measured with their predicted figures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_sglang_tune.report import fmt
from pytest_sglang_tune.report.html_svg import esc
from pytest_sglang_tune.search.summary import search_lines


def search_section(report: Mapping[str, Any]) -> list[str]:
    search = (report.get("run") or {}).get("search")
    if not isinstance(search, Mapping) or not search:
        return []
    out = ['<section id="search"><h2>Search</h2>']
    for suite, s in search.items():
        out.append(f'<div class="search" data-suite="{esc(suite)}">')
        out += [f"<p>{esc(line.strip())}</p>" for line in search_lines({suite: s})]
        rows = "".join(
            f'<tr data-config-id="{esc(m["config_id"])}"><td>{esc(m["display"])}</td>'
            f'<td class="num">{fmt(m.get("predicted"))}</td><td class="num">{fmt(m.get("measured"))}</td>'
            f'<td>{"pass" if m.get("slo_pass") else "miss"}</td><td>{esc(", ".join(map(str, m["trials"])))}</td></tr>'
            for m in s.get("measured") or [])
        out.append(f"<h3>Measured at {esc(s.get('target'))}: predicted vs measured</h3>"
                   '<table class="search-measured"><thead><tr><th>config</th><th>predicted</th><th>measured</th>'
                   f"<th>SLOs</th><th>trials</th></tr></thead><tbody>{rows}</tbody></table>")
        nm = s.get("not_measured") or []
        if nm:
            rows = "".join(
                f'<tr data-config-id="{esc(c["config_id"])}"><td><code>{esc(c["config_id"])}</code></td>'
                f'<td class="num">{fmt(c.get("predicted"))}</td><td>{_verdict(c)}</td></tr>' for c in nm)
            out.append(f"<h3>Not measured ({len(nm)})</h3><table class=\"search-not-measured\"><thead><tr>"
                       "<th>config</th><th>predicted</th><th>predicted SLOs</th></tr></thead>"
                       f"<tbody>{rows}</tbody></table>")
        out.append("</div>")
    out.append("</section>")
    return out


def _verdict(c: Mapping[str, Any]) -> str:
    if c.get("infeasible"):
        return "infeasible: " + esc(c["infeasible"])
    return "pass" if c.get("predicted_slo_pass") else "miss"
