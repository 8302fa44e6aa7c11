"""``sglang-tune``: work with suites and reports outside pytest.

    sglang-tune report REPORT.json [-o OUT.html]   re-render the HTML report from a report.json
    sglang-tune validate SUITE...                  check suites and their SGLang flags without deploying
    sglang-tune diff OLD.json NEW.json [--fail-on 'output_throughput:-5%']   compare two runs
    sglang-tune bench --url URL --model M ...      benchmark a running server, write a report.json
    sglang-tune predict SUITE [--gpu G] [--top K]  rank a suite's grid on the sim's virtual clock, GPU-h included
    sglang-tune table REPORT [--csv|--markdown] [--metric M ...] [-o OUT]   the results as a table (pandas)

Exit codes: 0 ok, 1 a suite or report problem, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_sglang_tune import TOOL_NAME, __version__

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sglang-tune", description="Tune SGLang server settings with pytest: "
                                "check suites and render reports.")
    p.add_argument("--version", action="version", version=f"{TOOL_NAME} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    rep = sub.add_parser("report", help="re-render report.html from a report.json",
                         description="Re-render the HTML report from a report.json.")
    rep.add_argument("report", type=Path, metavar="REPORT.json")
    rep.add_argument("-o", "--output", type=Path, metavar="OUT.html",
                     help="where to write the HTML (default: report.html beside REPORT.json)")
    val = sub.add_parser(
        "validate", help="check suite files without deploying anything",
        description="Check suites (YAML, server space, SGLang flags) without deploying anything.",
    )
    val.add_argument("suites", nargs="+", type=Path, metavar="SUITE")
    dif = sub.add_parser("diff", help="compare two report.json files (e.g. two SGLang releases)",
                         description="Match results by (suite, workload content, load, config_id) and show what "
                                     "changed. Exit 0: no threshold crossed; 1: a --fail-on threshold was crossed; "
                                     "2: usage error; 3: the reports are not comparable.")
    dif.add_argument("old", type=Path, metavar="OLD.json")
    dif.add_argument("new", type=Path, metavar="NEW.json")
    dif.add_argument("--fail-on", action="append", default=[], metavar="METRIC:±N%",
                     help="fail when a metric moves past N %%: 'output_throughput:-5%%', 'ttft_ms.p99:+10%%'")
    dif.add_argument("--fail-on-best", action="store_true",
                     help="check thresholds only on each workload's best config (in NEW)")
    dif.add_argument("--allow-different", action="store_true",
                     help="compare even when backend, GPU type, model, perf model or workload content differ")
    dif.add_argument("--metric", action="append", default=[], help="metrics to compare (default: key metrics)")
    dif.add_argument("--html", type=Path, default=None, help="also write an HTML diff here")
    tab = sub.add_parser("table", help="print the results as a table (text, CSV or Markdown)",
                         description="One row per result: suite, workload, load, config, status, SLO verdict, rank, "
                                     "the flags that vary, and metrics. Reads a report.json, a run directory or a "
                                     "results.jsonl. In Python: pytest_sglang_tune.load_results(path), a DataFrame.")
    tab.add_argument("report", type=Path, metavar="REPORT")
    form = tab.add_mutually_exclusive_group()
    form.add_argument("--csv", dest="format", action="store_const", const="csv", help="CSV (every column "
                      "unless --metric is given)")
    form.add_argument("--markdown", dest="format", action="store_const", const="markdown", help="a Markdown table")
    tab.add_argument("--metric", action="append", default=[], help="metrics to show, e.g. ttft_ms.p99 "
                     "(repeatable; default: key metrics)")
    tab.add_argument("-o", "--output", type=Path, default=None, help="write to this file instead of printing")
    from pytest_sglang_tune.bench import add_parser as add_bench
    from pytest_sglang_tune.predict.cli import add_parser as add_predict

    add_bench(sub)
    add_predict(sub)
    return p


def _cmd_report(args: argparse.Namespace) -> int:
    from pytest_sglang_tune.report.html import render_html
    from pytest_sglang_tune.report.store import REPORT_HTML, ReportError, atomic_write_text, load_report

    try:
        report = load_report(args.report)
    except ReportError as exc:
        print(f"sglang-tune report: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    out: Path = args.output or args.report.with_name(REPORT_HTML)
    try:
        atomic_write_text(out, render_html(report))
    except OSError as exc:
        print(f"sglang-tune report: error: cannot write {out}: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    print(f"wrote {out}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from pytest_sglang_tune.errors import TuneError
    from pytest_sglang_tune.space import validate_suite_file

    bad = 0
    for path in args.suites:
        try:
            print(validate_suite_file(path))
        except TuneError as exc:
            bad += 1
            print(f"sglang-tune validate: error: {exc}", file=sys.stderr)
        except OSError as exc:
            bad += 1
            print(f"sglang-tune validate: error: {path}: {exc.strerror or exc}", file=sys.stderr)
    if len(args.suites) > 1:
        print(f"{len(args.suites) - bad} of {len(args.suites)} suites valid")
    return EXIT_PROBLEM if bad else EXIT_OK


def _cmd_diff(args: argparse.Namespace) -> int:
    from pytest_sglang_tune import diff
    from pytest_sglang_tune.errors import GrammarError
    from pytest_sglang_tune.report.store import ReportError, atomic_write_text, load_report

    try:
        thresholds = [diff.parse_threshold(t) for t in args.fail_on]
        from pytest_sglang_tune.grammar import parse_metric

        metrics = [str(parse_metric(m)) for m in args.metric] or list(diff.DEFAULT_METRICS)
    except GrammarError as exc:
        print(f"sglang-tune diff: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        old, new = load_report(args.old), load_report(args.new)
    except ReportError as exc:
        print(f"sglang-tune diff: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    try:
        result = diff.diff_reports(old, new, thresholds=thresholds, metrics=metrics,
                                   fail_on_best=args.fail_on_best, allow_different=args.allow_different)
    except diff.IncomparableReports as exc:
        print(f"sglang-tune diff: refused: {exc}", file=sys.stderr)
        return 3
    for line in diff.format_terminal(result, color=sys.stdout.isatty()):
        print(line)
    if args.html:
        atomic_write_text(args.html, diff.render_html(result, str(args.old), str(args.new)))
        print(f"wrote {args.html}")
    return EXIT_PROBLEM if result.failed else EXIT_OK


def _cmd_table(args: argparse.Namespace) -> int:
    from pytest_sglang_tune import table
    from pytest_sglang_tune.errors import GrammarError
    from pytest_sglang_tune.grammar import parse_metric
    from pytest_sglang_tune.report.store import ReportError, atomic_write_text

    fmt = args.format or "text"
    try:
        metrics = [str(parse_metric(m)) for m in args.metric]
    except GrammarError as exc:
        print(f"sglang-tune table: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        frame = table.load_results(args.report)
        text = table.render(table.select(frame, metrics, short=fmt != "csv" or bool(metrics)), fmt)
    except (ReportError, ValueError) as exc:
        print(f"sglang-tune table: error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        atomic_write_text(args.output, text)
    except OSError as exc:
        print(f"sglang-tune table: error: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    print(f"wrote {args.output} ({len(frame)} results)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sglang-tune`` command line; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 after --help/--version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "report":
        return _cmd_report(args)
    if args.command == "validate":
        return _cmd_validate(args)
    if args.command == "diff":
        return _cmd_diff(args)
    if args.command == "table":
        return _cmd_table(args)
    if args.command == "bench":
        from pytest_sglang_tune.bench import run as run_bench

        return run_bench(args)
    if args.command == "predict":
        from pytest_sglang_tune.predict.cli import run as run_predict

        return run_predict(args)
    parser.print_usage(sys.stderr)
    print("sglang-tune: error: a command is required (report, validate, diff, table, bench, predict)", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
