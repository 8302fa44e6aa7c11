"""Small server-side SVG charts for report.html: scatter plots, categorical strip plots and percentile lines.

No JavaScript and nothing fetched: each chart is one ``<svg>`` whose points are ``<circle class="pt">``
elements carrying the caller's ``data-*`` attributes (so tests and readers can find every point in the DOM)
and a ``<title>`` child (the browser's own tooltip). Values pass through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

W, H = 420, 280
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 62, 16, 14, 46
PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#bf3989", "#6e7781",
           "#953800", "#0550ae", "#4d2d00", "#116329")


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def attrs_html(attrs: Mapping[str, object]) -> str:
    return "".join(f' {k}="{esc(v)}"' for k, v in attrs.items() if v is not None)


def short_num(v: float) -> str:
    """Tick label: 1.5k, 12, 0.25, 2M."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 100 or v == 0 or float(v).is_integer():
        return f"{v:.0f}"
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (1, 2, 2.5, 5 × 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks: list[float] = []
    t = start
    while t <= hi + step * 0.5 and len(ticks) < 50:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


@dataclass
class Scale:
    """A linear map from data [lo, hi] onto pixels [a, b] (b < a for the y axis)."""

    lo: float
    hi: float
    a: float
    b: float

    @classmethod
    def fit(cls, values: Sequence[float], a: float, b: float, zero: bool = False) -> tuple[Scale, list[float]]:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if zero:
            lo = min(lo, 0.0)
        pad = (hi - lo) * 0.06 or abs(hi) * 0.1 or 1.0
        lo2 = lo if (zero and lo == 0) else lo - pad
        if lo >= 0 > lo2:
            lo2 = 0.0
        ticks = nice_ticks(lo2, hi + pad)
        return cls(ticks[0], ticks[-1], a, b), ticks

    def __call__(self, v: float) -> float:
        span = self.hi - self.lo or 1.0
        return self.a + (v - self.lo) / span * (self.b - self.a)


@dataclass
class Point:
    x: float
    y: float
    attrs: dict[str, object]
    title: str
    color: str = PALETTE[0]
    filled: bool = True
    emphasis: bool = False
    xerr: tuple[float, float] | None = None
    yerr: tuple[float, float] | None = None


@dataclass
class Line:
    points: list[tuple[float, float]]
    color: str = PALETTE[0]
    attrs: dict[str, object] = field(default_factory=dict)
    dash: bool = False
    width: float = 1.5


@dataclass
class HRule:
    """A horizontal reference line (e.g. an SLO threshold), optionally only over part of the x range."""

    y: float
    label: str
    x_from: float | None = None
    x_to: float | None = None


def _frame(xticks: list[tuple[float, str]], yticks: list[tuple[float, str]], xlabel: str, ylabel: str) -> list[str]:
    x0, x1, y0, y1 = MARGIN_L, W - MARGIN_R, H - MARGIN_B, MARGIN_T
    out = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" class="plot"/>']
    for px, label in xticks:
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y1}" y2="{y0}" class="grid"/>'
                   f'<text x="{px:.1f}" y="{y0 + 15}" class="tick" text-anchor="middle">{esc(label)}</text>')
    for py, label in yticks:
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{py:.1f}" y2="{py:.1f}" class="grid"/>'
                   f'<text x="{x0 - 5}" y="{py + 4:.1f}" class="tick" text-anchor="end">{esc(label)}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.0f}" y="{H - 8}" class="axis" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(13 {(y0 + y1) / 2:.0f}) rotate(-90)" class="axis" '
               f'text-anchor="middle">{esc(ylabel)}</text>')
    return out


def _points(points: Sequence[Point], sx: Scale, sy: Scale, jitter: Mapping[int, float] | None = None) -> list[str]:
    out = []
    for i, p in enumerate(points):
        cx = sx(p.x) + (jitter or {}).get(i, 0.0)
        cy = sy(p.y)
        if p.xerr:
            out.append(f'<line x1="{sx(p.xerr[0]):.1f}" x2="{sx(p.xerr[1]):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" '
                       f'stroke="{p.color}" class="err"/>')
        if p.yerr:
            out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{sy(p.yerr[0]):.1f}" y2="{sy(p.yerr[1]):.1f}" '
                       f'stroke="{p.color}" class="err"/>')
        r = 6 if p.emphasis else 4.2
        fill = p.color if p.filled else "#fff"
        cls = "pt front" if p.emphasis else "pt"
        out.append(f'<circle class="{cls}" cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" fill="{fill}" stroke="{p.color}"'
                   f'{attrs_html(p.attrs)}><title>{esc(p.title)}</title></circle>')
    return out


def _lines(lines: Sequence[Line], sx: Scale, sy: Scale) -> list[str]:
    out = []
    for ln in lines:
        if len(ln.points) < 2:
            continue
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ln.points)
        dash = ' stroke-dasharray="5 3"' if ln.dash else ""
        out.append(f'<polyline points="{pts}" fill="none" stroke="{ln.color}" stroke-width="{ln.width}"{dash}'
                   f'{attrs_html(ln.attrs)}/>')
    return out


def _rules(rules: Sequence[HRule], sx: Scale, sy: Scale) -> list[str]:
    out = []
    for r in rules:
        if not sy.lo <= r.y <= sy.hi:
            continue
        xa = MARGIN_L if r.x_from is None else sx(r.x_from)
        xb = W - MARGIN_R if r.x_to is None else sx(r.x_to)
        py = sy(r.y)
        out.append(f'<line x1="{xa:.1f}" x2="{xb:.1f}" y1="{py:.1f}" y2="{py:.1f}" class="slo"/>'
                   f'<text x="{xb - 3:.1f}" y="{py - 4:.1f}" class="slo-label" text-anchor="end">'
                   f"{esc(r.label)}</text>")
    return out


def _svg(chart_attrs: Mapping[str, object], body: list[str], label: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label="{esc(label)}"{attrs_html(chart_attrs)}>' + "".join(body) + "</svg>")


def scatter(chart_attrs: Mapping[str, object], points: Sequence[Point], *, xlabel: str, ylabel: str,
            lines: Sequence[Line] = (), rules: Sequence[HRule] = ()) -> str:
    """A numeric x/y scatter plot (axes fitted to the points, the rules and the error bars)."""
    xs = [p.x for p in points] + [v for p in points if p.xerr for v in p.xerr]
    ys = [p.y for p in points] + [v for p in points if p.yerr for v in p.yerr]
    ys += [r.y for r in rules if ys and r.y <= max(ys) * 1.6]
    sx, xt = Scale.fit(xs, MARGIN_L, W - MARGIN_R)
    sy, yt = Scale.fit(ys, H - MARGIN_B, MARGIN_T)
    body = _frame([(sx(t), short_num(t)) for t in xt], [(sy(t), short_num(t)) for t in yt], xlabel, ylabel)
    body += _rules(rules, sx, sy) + _lines(lines, sx, sy) + _points(points, sx, sy)
    return _svg(chart_attrs, body, f"{ylabel} against {xlabel}")


def categorical(chart_attrs: Mapping[str, object], categories: Sequence[str], points: Sequence[Point], *,
                xlabel: str, ylabel: str, lines: Sequence[Line] = (), rules: Sequence[HRule] = (),
                spread: bool = True) -> str:
    """Points over named x categories (``Point.x`` is the category index); points that share a category are
    spread sideways (``spread``) so none hides another."""
    n = max(len(categories), 1)
    sx = Scale(-0.5, n - 0.5, MARGIN_L, W - MARGIN_R)
    ys = [p.y for p in points] + [v for p in points if p.yerr for v in p.yerr]
    ys += [r.y for r in rules if ys and r.y <= max(ys) * 1.6]
    sy, yt = Scale.fit(ys, H - MARGIN_B, MARGIN_T)
    jitter: dict[int, float] = {}
    if spread:
        slot = (W - MARGIN_L - MARGIN_R) / n
        by_cat: dict[int, list[int]] = {}
        for i, p in enumerate(points):
            by_cat.setdefault(int(p.x), []).append(i)
        for members in by_cat.values():
            k = len(members)
            step = min(9.0, slot * 0.6 / max(k - 1, 1))
            for j, i in enumerate(members):
                jitter[i] = (j - (k - 1) / 2) * step
    xticks = [(sx(i), c) for i, c in enumerate(categories)]
    body = _frame(xticks, [(sy(t), short_num(t)) for t in yt], xlabel, ylabel)
    body += _rules(rules, sx, sy) + _lines(lines, sx, sy) + _points(points, sx, sy, jitter)
    return _svg(chart_attrs, body, f"{ylabel} by {xlabel}")
