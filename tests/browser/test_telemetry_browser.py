"""GPU telemetry in report.html, in real headless Chromium: the per-point load table sits beside SGLang's
/metrics, and opening a point shows one line per GPU in each telemetry chart, drawn with a real size."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cdp import Chromium
from sample_report import rich_report

from pytest_sglang_tune.report.html import render_html
from pytest_sglang_tune.telemetry import summarize

pytestmark = pytest.mark.browser


def telemetry(gpus: int, throttled: bool = False) -> dict[str, Any]:
    rows = [{"t": 100.0 + 0.5 * k, "uuid": f"GPU-{g}aaa", "name": "NVIDIA H200", "util_pct": 50 + 5 * k - g,
             "mem_used_mib": 70000 + 50 * k, "mem_total_mib": 143771, "power_w": 300.0 + 25 * k + g,
             "sm_clock_mhz": 1980 - 10 * k, "temp_c": 45 + k, "reasons": 0x4 if throttled and k > 5 else 0}
            for k in range(12) for g in range(gpus)]
    return summarize(rows, source="nvml", interval_s=0.5)


def report_with_telemetry() -> dict[str, Any]:
    report = copy.deepcopy(rich_report())
    for r in report["results"]:
        if r["suite"] == "chat-tune" and r.get("metrics") and r["load"]["concurrency"] == 64:
            tp = int(r["server_args"].get("tp-size", 1))
            r["telemetry"] = telemetry(tp, throttled=tp == 2)
            r["server_metrics"] = {"token_usage_mean": 0.8, "token_usage_max": 0.97, "num_running_reqs_mean": 40.0,
                                   "num_running_reqs_max": 64.0, "num_queue_reqs_mean": 3.0,
                                   "num_queue_reqs_max": 12.0}
    return report


def test_telemetry_is_plotted_per_point(browser: Chromium, tmp_path: Path) -> None:
    report = json.loads(json.dumps(report_with_telemetry()))
    with_tel = [r for r in report["results"] if r.get("telemetry")]
    assert with_tel
    html = tmp_path / "report.html"
    html.write_text(render_html(report), encoding="utf-8")
    page = browser.open(html)
    try:
        assert page.errors == []
        rows = page.evaluate("document.querySelectorAll('table.load-table tbody tr').length")
        assert rows == len(with_tel)
        assert page.evaluate("document.querySelectorAll('details.point-telemetry').length") == len(with_tel)
        page.evaluate("document.querySelectorAll('details.point-telemetry').forEach(function(d){d.open=true})")
        charts = page.evaluate("""Array.prototype.map.call(
            document.querySelectorAll('details.point-telemetry'), function(d){
              return Array.prototype.map.call(d.querySelectorAll('svg[data-chart="gpu-telemetry"]'), function(s){
                var b = s.getBoundingClientRect();
                return {metric: s.getAttribute('data-metric'), lines: s.querySelectorAll('polyline.gpu-line').length,
                        w: b.width, h: b.height};
              });
            })""")
        for r, point_charts in zip(with_tel, charts, strict=True):
            gpus = len(r["telemetry"]["gpus"])
            assert {c["metric"] for c in point_charts} == {"util_pct", "power_w", "sm_clock_mhz", "temp_c",
                                                           "mem_used_mib"}
            assert all(c["lines"] == gpus and c["w"] > 100 and c["h"] > 50 for c in point_charts)
        throttled = page.evaluate("Array.prototype.filter.call(document.querySelectorAll('table.load-table td.fail'),"
                                  " function(td){return td.textContent.indexOf('sw_power_cap') >= 0}).length")
        assert throttled == sum(1 for r in with_tel if len(r["telemetry"]["gpus"]) == 2)
    finally:
        page.close()
