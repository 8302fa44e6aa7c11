"""GPU telemetry of one point in report.html: line charts over the point (one line per GPU) and a mean/max table.

Pure: a result's ``telemetry`` block (``telemetry.summary.summarize``) in, an HTML fragment out, self-contained
SVG like the other charts (``html_svg``). Every line is a ``<polyline class="gpu-line">`` with ``data-gpu`` and
``data-metric`` and a ``<title>`` tooltip; every chart an ``<svg data-chart="gpu-telemetry">``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_sglang_tune.report.html_svg import (
    MARGIN_B,
    MARGIN_L,
    MARGIN_R,
    MARGIN_T,
    PALETTE,
    H,
    Scale,
    W,
    _frame,
    _svg,
    esc,
    short_num,
)

CSS = (".telemetry i.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px}"
       ".telemetry-source{color:var(--muted);font-size:12px}")
"""Styles the fragment needs beyond report.html's (``.warn``, ``.charts``, ``figure.chart-box`` are there)."""

CHARTS: tuple[tuple[str, str, float], ...] = (   # metric, axis label, scale (MiB → GiB)
    ("util_pct", "GPU utilisation (%)", 1.0),
    ("power_w", "power (W)", 1.0),
    ("sm_clock_mhz", "SM clock (MHz)", 1.0),
    ("temp_c", "temperature (°C)", 1.0),
    ("mem_used_mib", "memory used (GiB)", 1 / 1024),
)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _chart(metric: str, label: str, factor: float, series: Mapping[str, Mapping[str, Sequence[Any]]],
           colors: Mapping[str, str], attrs: Mapping[str, object]) -> str:
    lines: list[tuple[str, list[tuple[float, float]]]] = []
    for uuid, s in series.items():
        pts = [(float(t), float(v) * factor) for t, v in zip(s.get("t", ()), s.get(metric, ()), strict=False)
               if _finite(t) and _finite(v)]
        if pts:
            lines.append((uuid, pts))
    if not lines:
        return ""
    xs = [x for _, pts in lines for x, _ in pts]
    ys = [y for _, pts in lines for _, y in pts]
    sx, xt = Scale.fit(xs, MARGIN_L, W - MARGIN_R, zero=True)
    sy, yt = Scale.fit(ys, H - MARGIN_B, MARGIN_T, zero=metric in ("util_pct", "mem_used_mib", "power_w"))
    body = _frame([(sx(t), short_num(t)) for t in xt], [(sy(t), short_num(t)) for t in yt], "seconds into the point",
                  label)
    for uuid, pts in lines:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        peak = max(y for _, y in pts)
        body.append(f'<polyline class="gpu-line" points="{coords}" fill="none" stroke="{colors[uuid]}" '
                    f'stroke-width="1.6" data-gpu="{esc(uuid)}" data-metric="{esc(metric)}">'
                    f"<title>{esc(uuid)}: {esc(label)} max {esc(short_num(peak))}</title></polyline>")
    return _svg({**attrs, "data-chart": "gpu-telemetry", "data-metric": metric}, body, f"{label} over the point")


def _cell(stats: Any, factor: float = 1.0) -> str:
    if not isinstance(stats, Mapping) or not _finite(stats.get("mean")):
        return "–"
    return f"{short_num(stats['mean'] * factor)} / {short_num(stats['max'] * factor)}"


def _table(gpus: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    head = ("<tr><th>GPU</th><th>util % (mean / max)</th><th>power W</th><th>SM clock MHz</th><th>temp °C</th>"
            "<th>memory GiB</th><th>clock limits seen</th></tr>")
    rows = []
    for g in gpus:
        uuid = str(g.get("uuid", ""))
        total = g.get("mem_total_mib")
        mem = _cell(g.get("mem_used_mib"), 1 / 1024)
        if isinstance(total, int | float) and _finite(total):
            mem += f" of {short_num(total / 1024)}"
        throttle = ", ".join(f"{n} ({g.get('throttle_samples', {}).get(n, '?')})" for n in g.get("throttle") or [])
        rows.append(f'<tr data-gpu="{esc(uuid)}"><td><i class="swatch" style="background:{colors.get(uuid, "#888")}">'
                    f"</i>{esc(g.get('name') or '')} <code>{esc(uuid)}</code></td>"
                    f"<td>{_cell(g.get('util_pct'))}</td><td>{_cell(g.get('power_w'))}</td>"
                    f"<td>{_cell(g.get('sm_clock_mhz'))}</td><td>{_cell(g.get('temp_c'))}</td><td>{mem}</td>"
                    f"<td>{esc(throttle or 'none')}</td></tr>")
    return f'<table class="telemetry-table">{head}{"".join(rows)}</table>'


def telemetry_html(telemetry: Mapping[str, Any] | None, *, attrs: Mapping[str, object] | None = None) -> str:
    """One point's GPU telemetry as HTML: warnings, the per-GPU table and one chart per metric; "" without data.

    ``attrs`` (e.g. ``{"data-config-id": ..., "data-load": ...}``) go on every chart, so a report can hold many."""
    if not telemetry:
        return ""
    gpus = [g for g in telemetry.get("gpus") or [] if isinstance(g, Mapping)]
    series = {str(k): v for k, v in (telemetry.get("series") or {}).items() if isinstance(v, Mapping)}
    warnings = [str(w) for w in telemetry.get("warnings") or []]
    if not gpus and not warnings:
        return ""
    uuids = [str(g.get("uuid")) for g in gpus] + [u for u in series if u not in {str(g.get("uuid")) for g in gpus}]
    colors = {u: PALETTE[i % len(PALETTE)] for i, u in enumerate(uuids)}
    extra = dict(attrs or {})
    figs = [f'<figure class="chart-box">{svg}<figcaption>{esc(label)}</figcaption></figure>'
            for metric, label, factor in CHARTS
            for svg in [_chart(metric, label, factor, series, colors, extra)] if svg]
    source = str(telemetry.get("source", "?"))
    interval = telemetry.get("interval_s")
    head = (f"<p class=\"telemetry-source\">GPU telemetry from {esc(source)}: {telemetry.get('samples', 0)} "
            f"sample(s)" + (f", every {short_num(interval)} s" if _finite(interval) and interval else "") + "</p>")
    warn = "".join(f'<p class="warn">{esc(w)}</p>' for w in warnings)
    table = _table(gpus, colors) if gpus else ""
    charts = f'<div class="charts">{"".join(figs)}</div>' if figs else ""
    return f'<div class="telemetry" data-source="{esc(source)}">{head}{warn}{table}{charts}</div>'


def _pair(block: Mapping[str, Any] | None, key: str, factor: float = 1.0) -> str:
    block = block or {}
    mean, peak = block.get(f"{key}_mean"), block.get(f"{key}_max")
    if not _finite(mean) and not _finite(peak):
        return "–"
    return " / ".join(short_num(float(v) * factor) if v is not None and _finite(v) else "–" for v in (mean, peak))


def _gpu_pair(telemetry: Mapping[str, Any] | None, metric: str) -> str:
    gpus = [g for g in (telemetry or {}).get("gpus") or [] if isinstance(g, Mapping)]
    stats: list[Mapping[str, Any]] = [g[metric] for g in gpus if isinstance(g.get(metric), Mapping)]
    means = [float(s["mean"]) for s in stats if _finite(s.get("mean"))]
    peaks = [float(s["max"]) for s in stats if _finite(s.get("max"))]
    if not means and not peaks:
        return "–"
    mean = sum(means) / len(means) if means else None
    return f"{short_num(mean) if mean is not None else '–'} / {short_num(max(peaks)) if peaks else '–'}"


def load_section(results: Sequence[Mapping[str, Any]], label: Any) -> str:
    """Per point: SGLang's own ``/metrics`` (KV cache usage, running and queued requests) beside the GPUs'
    telemetry (utilisation, power, throttling), then each point's telemetry charts. "" when no point has
    either. ``label(result)`` names a point."""
    rows, details = [], []
    for r in results:
        sm, tel = r.get("server_metrics"), r.get("telemetry")
        if not sm and not tel:
            continue
        throttled = ", ".join(g for gpu in (tel or {}).get("gpus") or [] if isinstance(gpu, Mapping)
                              for g in gpu.get("throttle") or [])
        attrs = {"data-config-id": r.get("config_id"), "data-load": r.get("_load_label")}
        rows.append(f'<tr data-config-id="{esc(r.get("config_id"))}"><td>{esc(label(r))}</td>'
                    f'<td class="num">{_pair(sm, "token_usage", 100.0)}</td>'
                    f'<td class="num">{_pair(sm, "num_running_reqs")}</td>'
                    f'<td class="num">{_pair(sm, "num_queue_reqs")}</td>'
                    f'<td class="num">{_gpu_pair(tel, "util_pct")}</td>'
                    f'<td class="num">{_gpu_pair(tel, "power_w")}</td>'
                    f'<td class="{"fail" if throttled else ""}">{esc(throttled) or "–"}</td></tr>')
        if tel:
            details.append(f'<details class="point-telemetry" data-config-id="{esc(r.get("config_id"))}">'
                           f"<summary>{esc(label(r))}</summary>{telemetry_html(tel, attrs=attrs)}</details>")
    if not rows:
        return ""
    head = ("<table class=\"load-table\"><thead><tr><th>point</th><th>KV cache used % (mean / max)</th>"
            "<th>running requests</th><th>queued requests</th><th>GPU util % (mean / max)</th>"
            "<th>GPU power W</th><th>throttled</th></tr></thead><tbody>")
    return head + "".join(rows) + "</tbody></table>" + "".join(details)
