"""report.html: every config appears, everything is escaped, nothing is fetched from elsewhere."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_sglang_tune.report.html import render_html
from pytest_sglang_tune.results import build_report, load_report

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
    ranking = next(t for t in doc.tables if t and t[0][:2] == ["#", "config"])
    header, *rows = ranking
    assert header[3] == "score (maximize: output_throughput_per_gpu)"
    assert "ttft_ms.p99" in header and "itl_ms.p95" in header         # the suite's SLO metrics get columns
    assert [(r[0], r[1].split()[0]) for r in rows] == [("1", "tp2-mem0.9"), ("2", "tp1-mem0.9")]
    assert rows[0][header.index("SLOs")] == "pass" and rows[1][header.index("SLOs")] == "fail"
    assert rows[0][header.index("ttft_ms.p99")] == "610.7"
    assert header.count("output_throughput_per_gpu") == 0              # already the score column
    assert '<td class="num fail" data-sort="2950.0">2,950</td>' in page    # breaks ttft_ms.p99 <= 2000
    assert '<td class="num" data-sort="610.7">610.7</td>' in page
    assert rows[0][2] == "--tp-size=2 --mem-fraction-static=0.9"      # the flags that differ between configs
    run = next(t for t in doc.tables if t and t[0][0] == "Run")
    assert ["Backend", "sim"] in run and ["GPUs", "4"] in run
    assert "sim does not model: mem-fraction-static" in page


def test_self_contained() -> None:
    page = render_html(load_report(FIXTURE))
    doc = parse(page)
    for tag, attrs in doc.tags:
        for name in ("src", "href"):
            assert attrs.get(name) is None, f"<{tag} {name}=...> would fetch a resource"
        assert tag not in ("link", "img", "iframe", "object", "embed")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert [t for t, _ in doc.tags].count("script") == 1                # the inline sorter only
    assert 'class="rank sortable"' in page


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
                 rec("er", status="error", reason="NotReady: timed out after 600 s", metrics={})],
        suites={"s": {"objective": "maximize: output_throughput"}})
    doc = parse(render_html(report))
    ranking = next(t for t in doc.tables if t and t[0][:2] == ["#", "config"])
    assert [r[1] for r in ranking[1:]] == ["ok", "miss", "strict"]
    assert "test failed: SLO missed (--sglang-strict-slo)" in ranking[3][-2]
    unranked = next(t for t in doc.tables if t and t[0] == ["config", "workload", "load", "status", "reason"])
    assert unranked[1:] == [["sk", "chat", "c8", "skipped", "needs 8 GPUs, 4 available"],
                            ["er", "chat", "c8", "error", "NotReady: timed out after 600 s"]]


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
    ranking = next(t for t in parse(page).tables if t and t[0][:2] == ["#", "config"])
    assert ranking[1][2] == "--mem-fraction-static=0.9"     # the suite says which flags it varies
    assert "model meta-llama/Llama-3.1-8B" in page
    assert '<div class="warn">tune_llama8b.yaml: could not be re-read</div>' in page
