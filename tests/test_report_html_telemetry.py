"""report/html_telemetry.py: a point's GPU telemetry as self-contained SVG line charts and a table."""

from __future__ import annotations

import itertools
from html.parser import HTMLParser
from typing import Any

from pytest_sglang_tune.report.html_telemetry import telemetry_html
from pytest_sglang_tune.telemetry import summarize


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


def _telemetry() -> dict[str, Any]:
    rows = []
    for k in range(10):
        for g, uuid in enumerate(("GPU-aaa", "GPU-<b>")):
            rows.append({"t": 1000.0 + 0.5 * k, "uuid": uuid, "name": "NVIDIA H200", "util_pct": 10 * k + g,
                         "mem_used_mib": 70000 + 100 * k, "mem_total_mib": 143771, "power_w": 300.0 + 30 * k,
                         "sm_clock_mhz": 1980 - 20 * k, "temp_c": 40 + k, "reasons": 0x40 if k == 5 and g else 0})
    return summarize(rows, source="nvml", interval_s=0.5)


def test_one_chart_per_metric_one_line_per_gpu() -> None:
    html = telemetry_html(_telemetry(), attrs={"data-config-id": "tp1~ab12"})
    p = _parse(html)
    charts = [a for t, a in p.tags if t == "svg"]
    assert [c["data-metric"] for c in charts] == ["util_pct", "power_w", "sm_clock_mhz", "temp_c", "mem_used_mib"]
    assert all(c["data-chart"] == "gpu-telemetry" and c["data-config-id"] == "tp1~ab12" for c in charts)
    lines = [a for t, a in p.tags if t == "polyline"]
    assert len(lines) == 10 and {a["data-gpu"] for a in lines} == {"GPU-aaa", "GPU-<b>"}
    util_a = next(a for a in lines if a["data-gpu"] == "GPU-aaa" and a["data-metric"] == "util_pct")
    pts = [tuple(map(float, xy.split(","))) for xy in (util_a["points"] or "").split()]
    assert len(pts) == 10
    assert all(x1 < x2 and y1 > y2 for (x1, y1), (x2, y2) in itertools.pairwise(pts))  # rising: up the page


def test_table_warnings_and_escaping() -> None:
    html = telemetry_html(_telemetry())
    assert "GPU-<b>" not in html and "GPU-&lt;b&gt;" in html
    p = _parse(html)
    text = " ".join(p.text)
    assert "GPU telemetry from nvml: 10 sample(s), every 0.5 s" in text
    assert "hw_thermal_slowdown (1)" in text
    assert "GPU GPU-<b> (NVIDIA H200) was thermally throttled during the point" in text
    assert [a.get("class") for t, a in p.tags if t == "p"].count("warn") == 1
    rows = [a["data-gpu"] for t, a in p.tags if t == "tr" and "data-gpu" in a]
    assert rows == ["GPU-aaa", "GPU-<b>"]
    assert "45 / 90" in text          # util of GPU-aaa: mean / max
    assert "<script" not in html and "http" not in html


def test_nothing_to_show() -> None:
    assert telemetry_html(None) == "" and telemetry_html({}) == ""
    only_warning = summarize([], source="none", interval_s=0.5,
                             warnings=["no GPU telemetry: nvidia-smi is not on PATH"])
    html = telemetry_html(only_warning)
    assert "nvidia-smi is not on PATH" in html and "<svg" not in html and "<table" not in html
