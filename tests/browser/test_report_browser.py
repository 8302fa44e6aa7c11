"""report.html in real headless Chromium: renders without errors or requests, every chart has one point per
result, the results table sorts in the order report.json implies, filters and copy buttons work."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cdp import Chromium, Page
from sample_report import rich_report

from pytest_sglang_tune.report.html import render_html
from pytest_sglang_tune.report.store import load_report

pytestmark = pytest.mark.browser
HERE = Path(__file__).parent
FIXTURE_V1 = HERE.parent / "fixtures" / "report_v1.json"
SIM_CHAT = HERE / "data" / "sim_chat_report.json"  # a real `pytest suites/tune_qwen8b_chat.yaml --backend=sim` run
LATENCY = ("ttft_ms", "itl_ms", "e2e_ms")
PCTS = ("p50", "p90", "p95", "p99")

REPORTS: dict[str, Callable[[], dict[str, Any]]] = {
    "rich": rich_report,
    "rich-without-analysis": lambda: rich_report(with_analysis=False),
    "fixture-v1": lambda: load_report(FIXTURE_V1),
    "sim-chat": lambda: load_report(SIM_CHAT),
}


@pytest.fixture(params=list(REPORTS))
def case(request: pytest.FixtureRequest, tmp_path: Path, browser: Chromium) -> Iterator[tuple[dict[str, Any], Page]]:
    """(report as read back from report.json, the page showing its report.html)."""
    report = REPORTS[request.param]()
    (tmp_path / "report.json").write_text(json.dumps(report))
    report = json.loads((tmp_path / "report.json").read_text())
    html = tmp_path / "report.html"
    html.write_text(render_html(report), encoding="utf-8")
    page = browser.open(html)
    yield report, page
    page.close()


def js(page: Page, body: str) -> Any:
    return page.evaluate(f"(function(){{{body}}})()")


def _metric(result: dict[str, Any], name: str) -> float | None:
    base, _, stat = name.partition(".")
    v = (result.get("metrics") or {}).get(base)
    if stat:
        v = v.get(stat) if isinstance(v, dict) else None
    return None if v is None else float(v)


def _measured(report: dict[str, Any], suite: str, workload: str | None = None) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r["suite"] == suite and r.get("metrics")
            and r["status"] in ("passed", "failed") and (workload is None or r["workload"]["name"] == workload)]


def _load_label(load: dict[str, Any]) -> str:
    parts = []
    if load.get("request_rate") is not None:
        parts.append(f"r{float(load['request_rate']):g}")
    if load.get("concurrency") is not None:
        parts.append(f"c{int(load['concurrency'])}")
    return "-".join(parts) or "-"


CHARTS_JS = """
return Array.prototype.map.call(document.querySelectorAll("svg[data-chart]"), function(s){
  var a={};Array.prototype.forEach.call(s.attributes,function(x){a[x.name]=x.value});
  a.points=Array.prototype.map.call(s.querySelectorAll("circle.pt"),function(c){
    var p={};Array.prototype.forEach.call(c.attributes,function(x){if(x.name.indexOf("data-")===0){p[x.name]=x.value}});
    return p});
  return a});
"""


def test_renders_without_errors_or_requests(case: tuple[dict[str, Any], Page]) -> None:
    report, page = case
    assert page.errors == []
    assert len(page.requests) == 1 and page.requests[0].startswith("file://")   # nothing but the file itself
    assert js(page, "return document.querySelectorAll('script[src],link,img,iframe').length") == 0
    assert js(page, "return document.querySelector('#answer') !== null") == bool(report["ranking"])
    assert js(page, "return document.querySelector('#manifest').textContent").count(report["run"]["id"]) >= 1


def test_every_chart_has_one_point_per_result(case: tuple[dict[str, Any], Page]) -> None:
    report, page = case
    charts = js(page, CHARTS_JS)
    suites = {r["suite"] for r in report["results"]}
    pairs = {(r["suite"], r["workload"]["name"]) for r in report["results"]}
    pareto = [c for c in charts if c["data-chart"] == "pareto"]
    assert {(c["data-suite"], c["data-workload"]) for c in pareto} == {p for p in pairs if _measured(report, *p)}
    for c in pareto:
        xm, ym = c["data-x-metric"], c["data-y-metric"]
        assert xm == "output_throughput_per_gpu" and ym.split(".")[0] in LATENCY
        want = [r for r in _measured(report, c["data-suite"], c["data-workload"])
                if _metric(r, xm) is not None and _metric(r, ym) is not None]
        got = sorted((p["data-config-id"], p["data-load"]) for p in c["points"])
        assert got == sorted((r["config_id"], _load_label(r["load"])) for r in want)
        for p in c["points"]:
            key = (p["data-config-id"], p["data-load"])
            r = next(r for r in want if (r["config_id"], _load_label(r["load"])) == key)
            assert math.isclose(float(p["data-x"]), _metric(r, xm) or 0)
            assert math.isclose(float(p["data-y"]), _metric(r, ym) or 0)
        for entry in (report.get("analysis") or {}).get("pareto") or []:
            if (entry["suite"], entry["workload"]) == (c["data-suite"], c["data-workload"]):
                front = sorted((q["config_id"], _load_label(q.get("load") or entry["load"]))
                               for q in entry["points"] if q["on_front"])
                assert sorted((p["data-config-id"], p["data-load"]) for p in c["points"]
                              if p["data-on-front"] == "true") == front
    effects = [c for c in charts if c["data-chart"] == "flag-effect"]
    for suite in suites:
        info = report["suites"].get(suite) or {}
        objective = (info.get("objective") or "maximize: output_throughput_per_gpu").split(":")[1].strip()
        flags = info.get("varying_flags") or []
        for (s, w) in pairs:
            want = [r for r in _measured(report, s, w) if _metric(r, objective) is not None]
            if s != suite or not want:
                continue
            mine = [c for c in effects if (c["data-suite"], c["data-workload"]) == (s, w)]
            if flags:
                assert sorted(c["data-flag"] for c in mine) == sorted(flags)
            for c in mine:
                assert c["data-metric"] == objective
                assert len(c["points"]) == len(want)
                for p in c["points"]:
                    r = next(r for r in want
                             if (r["config_id"], _load_label(r["load"])) == (p["data-config-id"], p["data-load"]))
                    v = r["server_args"].get(c["data-flag"])
                    assert p["data-value"] == ("(default)" if v is None else str(v).lower() if isinstance(v, bool)
                                               else str(v))
    latency = [c for c in charts if c["data-chart"] == "latency"]
    for c in latency:
        want = [r for r in _measured(report, c["data-suite"], c["data-workload"])
                if _load_label(r["load"]) == c["data-load"]]
        expected = sorted((r["config_id"], s) for r in want for s in PCTS
                          if _metric(r, f"{c['data-metric']}.{s}") is not None)
        assert sorted((p["data-config-id"], p["data-stat"]) for p in c["points"]) == expected
    levels = {(r["suite"], r["workload"]["name"], _load_label(r["load"])) for s in suites for r in _measured(report, s)}
    assert {(c["data-suite"], c["data-workload"], c["data-load"]) for c in latency} == levels
    assert len(latency) == 3 * len(levels)


ROWS_JS = """
var t=document.querySelector('table.results[data-suite="%s"]');
return Array.prototype.map.call(t.tBodies[0].rows,function(r){
  var i=Array.prototype.findIndex.call(t.tHead.rows[0].cells,function(h){return h.getAttribute("data-key")==="%s"});
  var c=r.cells[i];return [r.getAttribute("data-config-id"),r.getAttribute("data-load"),
   c.hasAttribute("data-sort")?Number(c.getAttribute("data-sort")):null]});
"""


def _objective(report: dict[str, Any], suite: str) -> str:
    return str(report["suites"][suite].get("objective") or "maximize: output_throughput")


def _click(page: Page, suite: str, key: str) -> str:
    return str(js(page, f"""var h=document.querySelector('table.results[data-suite="{suite}"] th[data-key="{key}"]');
        h.click();return h.getAttribute("data-dir");"""))


@pytest.mark.parametrize("key", ["ttft_ms.p99", "score", "output_throughput"])
def test_sorting_by_a_metric_gives_the_report_order(case: tuple[dict[str, Any], Page], key: str) -> None:
    report, page = case
    for suite in {r["suite"] for r in report["results"]}:
        results = [r for r in report["results"] if r["suite"] == suite]
        if key == "score":
            scores = {(e["config_id"], _load_label(e["load"])): e["score"] for e in report["ranking"]
                      if e["suite"] == suite}
            values = {(r["config_id"], _load_label(r["load"])): scores.get((r["config_id"], _load_label(r["load"])))
                      for r in results}
        else:
            values = {(r["config_id"], _load_label(r["load"])): _metric(r, key) for r in results}
        present = sorted(v for v in values.values() if v is not None)
        missing = sum(v is None for v in values.values())
        best_high = key == "output_throughput" or (key == "score" and not
                                                   _objective(report, suite).startswith("minimize"))
        orders = [("asc", present), ("desc", present[::-1])]
        for direction, expect in (orders[::-1] if best_high else orders):  # the first click sorts best-first
            assert _click(page, suite, key) == direction
            rows = js(page, ROWS_JS % (suite, key))
            assert len(rows) == len(results)
            assert [v for _, _, v in rows] == [*expect, *([None] * missing)]      # missing values sort last
            for cid, load, v in rows:
                if v is not None:
                    assert math.isclose(v, values[(cid, load)] or 0.0)
        assert page.errors == []


def test_filters_and_copy_buttons(case: tuple[dict[str, Any], Page]) -> None:
    report, page = case
    suite = report["results"][0]["suite"]
    n = len([r for r in report["results"] if r["suite"] == suite])
    visible = f"""return Array.prototype.filter.call(
        document.querySelector('table.results[data-suite="{suite}"]').tBodies[0].rows,
        function(r){{return !r.hidden}}).length;"""
    assert js(page, visible) == n
    js(page, """var bar=document.querySelector('.filters[data-table]');var c=bar.querySelector('[data-filter=slo]');
        c.checked=true;c.dispatchEvent(new Event('change'));""")
    assert js(page, visible) == sum(1 for r in report["results"] if r["suite"] == suite and r["slo_pass"] is True)
    js(page, """var bar=document.querySelector('.filters[data-table]');var c=bar.querySelector('[data-filter=slo]');
        c.checked=false;c.dispatchEvent(new Event('change'));var q=bar.querySelector('[data-filter=text]');
        q.value='no-such-config-anywhere';q.dispatchEvent(new Event('input'));""")
    assert js(page, visible) == 0
    assert "0 of" in js(page, "return document.querySelector('.filters [data-count]').textContent")
    n_buttons = js(page, "var b=document.querySelectorAll('button.copy');b.forEach(function(x){x.click()});"
                         "return b.length")
    assert n_buttons == 2 * len(js(page, "return Array.from(document.querySelectorAll('.answer-card'))"))
    assert js(page, "return document.querySelector('button.copy') ? document.querySelector('button.copy')"
                    ".textContent : 'copied'") == "copied"
    assert page.errors == []


def test_screenshot_artifact(browser: Chromium, tmp_path: Path, artifacts_dir: Path) -> None:
    html = tmp_path / "report.html"
    html.write_text(render_html(rich_report()), encoding="utf-8")
    page = browser.open(html, width=1400, height=1000)
    try:
        shot = page.screenshot(artifacts_dir / "report.png", full_page=True)
        head = page.screenshot(artifacts_dir / "report-top.png", clip_height=1600)
    finally:
        page.close()
    for f in (shot, head):
        data = f.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert page.errors == []
