"""report.html: every config appears, everything is escaped, nothing is fetched from elsewhere."""

from __future__ import annotations

import html
import re
import shlex
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser.sample_report import rich_report

from pytest_sglang_tune.report.html import render_html
from pytest_sglang_tune.report.html_answer import flag_args, launch_line
from pytest_sglang_tune.report.html_svg import nice_ticks
from pytest_sglang_tune.report.store import build_report, load_report

FIXTURE = Path(__file__).parent / "fixtures" / "report_v1.json"


class _Collector(HTMLParser):
    """Collects the structure we assert on: tags with attributes, tables with their rows of cell text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append(" ".join(" ".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> _Collector:
    c = _Collector()
    c.feed(text)
    c.close()
    return c


def metrics(tput: float) -> dict[str, Any]:
    return {"output_throughput": tput, "output_throughput_per_gpu": tput, "ttft_ms": {"p99": 100.0},
            "completed": 5, "failed": 0}


def rec(config_id: str, status: str = "passed", **extra: Any) -> dict[str, Any]:
    return {"suite": "s", "workload": {"name": "chat", "content_hash": "h"}, "config_id": config_id,
            "load": {"concurrency": 8, "request_rate": None}, "status": status,
            "server_args": {"tp-size": 1, "schedule-policy": config_id}, "metrics": metrics(10.0),
            "slo_pass": True, **extra}


def _table(doc: _Collector, first_header: str) -> list[list[str]]:
    return next(t for t in doc.tables if t and t[0] and t[0][0] == first_header)


def test_fixture_report_renders_every_config_and_section() -> None:
    report = load_report(FIXTURE)
    page = render_html(report)
    doc = parse(page)
    for r in report["results"]:
        assert r["config_id"] in page
    assert "tp4-dp2-mem0.9" in page                                    # excluded config
    assert "constraint &#x27;tp-size * dp-size &lt;= 4&#x27; is false" in page
    assert "InfeasibleConfig: out of memory while allocating the KV cache" in page
    assert "RuntimeError: CUDA out of memory" in page                  # log tail of the infeasible config
    header, *rows = _table(doc, "workload")
    assert header[:6] == ["workload", "load", "#", "config", "key flags",
                          "score (output_ throughput_ per_ gpu)"]
    assert [h.replace(" ", "") for h in header[6:8]] == ["ttft_ms.p99", "itl_ms.p95"]  # the SLOs' metrics
    assert [(r[2], r[3].split()[0]) for r in rows] == [("1", "tp2-mem0.9"), ("2", "tp1-mem0.9"),
                                                       ("–", "tp1-mem0.95")]
    slo = header.index("SLOs")
    assert [r[slo] for r in rows] == ["pass", "fail", "–"]
    assert rows[0][6] == "610.7"
    assert '<td class="num fail" data-sort="2950.0">2,950</td>' in page    # breaks ttft_ms.p99 <= 2000
    assert '<td class="num" data-sort="610.7">610.7</td>' in page
    assert rows[0][4] == "--tp-size=2 --mem-fraction-static=0.9"      # the flags that differ between configs
    manifest = _table(doc, "Run")
    assert ["Backend", "sim"] in manifest and ["GPUs", "4"] in manifest and ["SGLang", "0.5.23"] in manifest
    assert ["Perf model", "aiconfigurator:h100_sxm"] in manifest
    assert ["Command", "pytest suites/ --backend=sim --gpus=4"] in manifest
    assert "sim does not model: mem-fraction-static" in page


def test_answer_gives_the_best_config_as_a_command_and_as_yaml() -> None:
    report = load_report(FIXTURE)
    doc = parse(render_html(report))
    cards = [a for t, a in doc.tags if t == "div" and a.get("class") == "answer-card"]
    assert [(a["data-suite"], a["data-workload"], a["data-config-id"], a["data-load"]) for a in cards] == [
        ("llama8b", "chat", "tp2-mem0.9", "c16")]
    page = render_html(report)
    cmd = re.search(r'<pre class="cmd">(.*?)</pre>', page, re.S)
    assert cmd and html.unescape(cmd.group(1)) == (
        "python -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct "
        "--tp-size 2 --mem-fraction-static 0.9")
    block = re.search(r'<pre class="yaml">(.*?)</pre>', page, re.S)
    assert block and yaml.safe_load(html.unescape(block.group(1))) == {
        "server": {"fixed": {"tp-size": 2, "mem-fraction-static": 0.9}}}


@pytest.mark.parametrize(("args", "words"), [
    ({"tp-size": 2}, ["--tp-size", "2"]),
    ({"enable-metrics": True, "disable-radix-cache": False}, ["--enable-metrics"]),
    ({"cuda-graph-bs": [1, 2, 4]}, ["--cuda-graph-bs", "1", "2", "4"]),
    ({"chat_template": None, "dtype": "bfloat16"}, ["--dtype", "bfloat16"]),
    ({"--served-model-name": "a b"}, ["--served-model-name", "a b"]),
])
def test_flag_args(args: dict[str, Any], words: list[str]) -> None:
    assert flag_args(args) == words
    assert shlex.split(launch_line("Qwen/Qwen3-8B", args)) == [
        "python", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen3-8B", *words]


def test_self_contained() -> None:
    page = render_html(rich_report())
    doc = parse(page)
    for tag, attrs in doc.tags:
        assert attrs.get("src") is None, f"<{tag} src=...> would fetch a resource"
        assert (attrs.get("href") or "#").startswith("#"), f"<{tag} href={attrs.get('href')}> leaves the page"
        assert tag not in ("link", "img", "iframe", "object", "embed", "image", "use")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page and "@font-face" not in page
    assert [t for t, _ in doc.tags].count("script") == 1                # the inline sorter/filter only


def test_charts_have_one_point_per_result() -> None:
    report = rich_report()
    doc = parse(render_html(report))
    charts: list[dict[str, Any]] = []
    for tag, attrs in doc.tags:
        if tag == "svg":
            charts.append({**attrs, "points": []})
        elif tag == "circle" and attrs.get("class", "").startswith("pt"):
            charts[-1]["points"].append(attrs)
    measured = [r for r in report["results"] if r["metrics"] and r["status"] in ("passed", "failed")]
    pareto = {c["data-workload"]: c for c in charts if c["data-chart"] == "pareto"}
    assert sorted(pareto) == ["chat", "long-output", "rag"]
    for w, c in pareto.items():
        assert len(c["points"]) == sum(r["workload"]["name"] == w for r in measured)
    assert pareto["rag"]["data-y-metric"] == "e2e_ms.p90"               # the first latency SLO of the suite
    effects = [c for c in charts if c["data-chart"] == "flag-effect"]
    flags = ("tp-size", "schedule-policy", "chunked-prefill-size")      # the suite's varying_flags
    assert sorted((c["data-workload"], c["data-flag"]) for c in effects) == sorted(
        [(w, f) for w in ("chat", "long-output") for f in flags] + [("rag", "max-running-requests")])
    for c in effects:
        assert len(c["points"]) == sum(r["workload"]["name"] == c["data-workload"] for r in measured)
    latency = [c for c in charts if c["data-chart"] == "latency"]
    assert sorted({(c["data-workload"], c["data-load"]) for c in latency}) == [
        ("chat", "c32"), ("chat", "c64"), ("chat", "c8"), ("long-output", "r2.5"), ("rag", "c32")]
    c64 = next(c for c in latency if c["data-load"] == "c64" and c["data-metric"] == "ttft_ms")
    assert len(c64["points"]) == 4 * 7                                   # 7 measured configs (1 infeasible) × 4


def test_pareto_front_without_analysis_matches_the_analysis() -> None:
    def fronts(report: dict[str, Any]) -> list[tuple[str, str, str]]:
        doc = parse(render_html(report))
        out, chart = [], ""
        for tag, attrs in doc.tags:
            if tag == "svg":
                chart = attrs.get("data-chart") or ""
            elif tag == "circle" and chart == "pareto" and attrs.get("data-on-front") == "true":
                out.append((str(attrs["data-config-id"]), str(attrs["data-load"]), chart))
        return sorted(out)

    with_analysis = fronts(rich_report())
    assert with_analysis and with_analysis == fronts(rich_report(with_analysis=False))


def test_ties_confidence_and_repeats_are_shown() -> None:
    report = rich_report()
    page = render_html(report)
    tied = [e for e in report["ranking"] if e.get("tied")]
    assert tied and page.count('<span class="tied" title=') == len(tied)
    assert '<span class="ci">[1,547 – 1,676]</span>' in page            # output_throughput_per_gpu at c32
    assert "3 repeats in one deployment" in page
    manifest = _table(parse(page), "Run")
    methods = {r["confidence_method"]["method"] for r in report["results"] if r.get("confidence_method")}
    assert ["Confidence", ", ".join(sorted(methods))] in manifest and ["Repeats", "3"] in manifest


def test_headline_is_the_best_at_the_highest_load_that_meets_the_slos() -> None:
    report = rich_report()
    cards = {a["data-workload"]: a for t, a in parse(render_html(report)).tags
             if t == "div" and a.get("class") == "answer-card"}
    best_c32 = next(e for e in report["ranking"] if e["workload"] == "chat" and e["rank"] == 1
                    and e["load"]["concurrency"] == 32)
    assert best_c32["slo_pass"] and not any(e["slo_pass"] for e in report["ranking"]
                                            if e["workload"] == "chat" and e["load"]["concurrency"] == 64)
    assert (cards["chat"]["data-config-id"], cards["chat"]["data-load"]) == (best_c32["config_id"], "c32")
    assert cards["rag"]["data-load"] == "c32" and cards["long-output"]["data-load"] == "r2.5"


@pytest.mark.parametrize(("lo", "hi", "ticks"), [
    (0, 10, [0, 2, 4, 6, 8, 10]),
    (0.3, 0.92, [0.2, 0.4, 0.6, 0.8, 1.0]),
    (1650, 1710, [1640, 1660, 1680, 1700, 1720]),
    (5, 5, [5, 6, 7, 8, 9, 10]),
])
def test_nice_ticks(lo: float, hi: float, ticks: list[float]) -> None:
    assert nice_ticks(lo, hi) == pytest.approx(ticks)


def test_everything_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    report = build_report(
        run={"id": "r<1>", "backend": "sim", "argv": ["pytest", evil]},
        results=[rec("a<b>&c", reason=evil, warnings=[evil], launch_command=evil),
                 rec("z", status="error", reason=evil, log_tail=evil, metrics={})],
        suites={"s": {"objective": "maximize: output_throughput", "slos": ["ttft_ms.p99 <= 200"],
                      "excluded": [{"config_id": evil, "server_args": {"x": evil}, "reason": evil}]}},
        warnings=[evil])
    page = render_html(report)
    assert evil not in page
    assert html.escape(evil) in page
    assert "a&lt;b&gt;&amp;c" in page
    assert [t for t, _ in parse(page).tags].count("script") == 1


def test_unranked_and_failed_rows_have_reasons() -> None:
    report = build_report(
        run={"id": "r"},
        results=[rec("ok"), rec("miss", slo_pass=False), rec("strict", status="failed", slo_pass=False,
                                                             reason="SLO missed (--sglang-strict-slo)"),
                 rec("sk", status="skipped", reason="needs 8 GPUs, 4 available", metrics={}),
                 rec("er", status="error", reason="NotReady: timed out after 600 s", metrics={},
                     log_tail="Traceback: boom")],
        suites={"s": {"objective": "maximize: output_throughput"}})
    doc = parse(render_html(report))
    header, *rows = _table(doc, "workload")
    assert [r[3].split()[0] for r in rows] == ["ok", "miss", "strict", "er", "sk"]
    status = header.index("status")
    assert rows[2][status] == "failed SLO missed (--sglang-strict-slo)"
    failures = _table(doc, "config")
    assert failures[0] == ["config", "workload", "load", "status", "reason"]
    assert [(r[0].split()[0], r[3], r[4]) for r in failures[1:]] == [
        ("strict", "failed", "SLO missed (--sglang-strict-slo)"),
        ("sk", "skipped", "needs 8 GPUs, 4 available"),
        ("er", "error", "NotReady: timed out after 600 s server log tail Traceback: boom")]


def test_empty_report() -> None:
    page = render_html(build_report(run={"id": "empty"}, results=[], suites={}))
    assert "No results." in page and page.rstrip().endswith("</html>")


@pytest.mark.parametrize(("missing"), ["run", "tool", "suites", "ranking", "warnings"])
def test_tolerates_missing_sections(missing: str) -> None:
    report = load_report(FIXTURE)
    del report[missing]
    assert "tp2-mem0.9" in render_html(report)


def test_suite_varying_flags_and_error_are_shown() -> None:
    report = load_report(FIXTURE)
    report["suites"]["llama8b"].update(varying_flags=["mem-fraction-static"], model="meta-llama/Llama-3.1-8B",
                                       error="tune_llama8b.yaml: could not be re-read")
    page = render_html(report)
    _, *rows = _table(parse(page), "workload")
    assert rows[0][4] == "--mem-fraction-static=0.9"     # the suite says which flags it varies
    assert "model meta-llama/Llama-3.1-8B" in page
    assert '<div class="warn">tune_llama8b.yaml: could not be re-read</div>' in page
