"""``python -m results``: the report of a run, and the comparison of two runs."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from results.records import RecordSchemaError
from results.rundir import NotARunDirectory

COMMANDS = ("report", "compare")

DESCRIPTION = """\
Analyse runs written by `python -m sim` or `python -m live`.

  python -m results runs/<id>                  report: summary table, report.html, charts
  python -m results compare runs/a runs/b      compare two runs side by side

`report` is the default command, so `python -m results runs/<id>` is
`python -m results report runs/<id>`. Run `python -m results report --help`
or `python -m results compare --help` for their options.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m results", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{report,compare}")

    rep = sub.add_parser(
        "report", help="print the summary table and write report.html and chart files",
        description="Compute every metric of a run (per unit and across seeds), print the "
                    "summary table, write summary.json, a self-contained report.html and "
                    "PNG/SVG copies of each chart under <run>/charts/.")
    rep.add_argument("run", type=Path, help="the run directory (holds manifest.json and records/)")
    rep.add_argument("--out", type=Path, default=None,
                     help="where to write the HTML report (default: <run>/report.html; chart "
                          "files go to a charts/ folder beside it)")
    rep.add_argument("--objective", default=None,
                     help="metric to rank strategies by (default: request_goodput, or "
                          "request_throughput when the run set no SLO); any metric with a "
                          "direction, e.g. p99_ttft_ms (lower is better)")
    rep.add_argument("--no-static", action="store_true",
                     help="skip the PNG/SVG chart copies (faster; the HTML report is unchanged)")
    rep.add_argument("--table-only", action="store_true",
                     help="only print the summary table and write summary.json; no report")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")

    cmp_ = sub.add_parser(
        "compare", help="compare two runs: metrics side by side and rank agreement",
        description="Compare run B against run A: per shared grid point and strategy, the "
                    "mean of each metric in both and B's relative difference; per shared "
                    "point, Kendall tau-b and top-1 agreement of the two strategy rankings.")
    cmp_.add_argument("run_a", type=Path, help="the reference run directory (A)")
    cmp_.add_argument("run_b", type=Path, help="the run compared with it (B)")
    cmp_.add_argument("--objective", default=None,
                      help="metric both runs are ranked by (default as for report)")
    cmp_.add_argument("--metrics", default=None,
                      help="comma-separated metric names to show (default: TTFT/TPOT/E2EL "
                           "percentiles, throughput, goodput, SLO attainment, prefix-cache hit "
                           "rate and the router's expected hit, load imbalance, failures)")
    cmp_.add_argument("--json", type=Path, default=None, dest="json_out",
                      help="also write the comparison to this JSON file")
    cmp_.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] not in COMMANDS and not args_list[0].startswith("-"):
        args_list.insert(0, "report")
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "report":
            return _report(args)
        return _compare(args, parser)
    except (NotARunDirectory, RecordSchemaError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0


def _report(args: argparse.Namespace) -> int:
    from results.capacity import format_capacity, read_capacity
    from results.report import build_report
    from results.rundir import RunDir
    from results.summary import format_table, summarize_run

    capacity = read_capacity(args.run) if args.run.is_dir() else None
    only_capacity = capacity is not None and not RunDir.open(args.run).record_files()
    if args.table_only:
        if only_capacity:
            print(format_capacity(capacity))
            return 0
        summary = summarize_run(args.run, objective=args.objective, progress=not args.quiet)
        print(format_table(summary))
        return 0
    report = build_report(args.run, out=args.out, static=not args.no_static,
                          objective=args.objective, progress=not args.quiet)
    if report.summary is not None:
        print(format_table(report.summary))
    if capacity is not None:
        print(("\n" if report.summary is not None else "") + format_capacity(capacity))
    print(f"\nreport: {report.html_path}")
    if report.chart_files:
        print(f"charts: {len(report.chart_files)} files in {report.chart_files[0].parent}")
    return 0


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from results.compare import DEFAULT_METRICS, compare, format_comparison, to_json
    from results.metrics import METRICS
    from results.summary import summarize_run

    metrics = DEFAULT_METRICS
    if args.metrics:
        metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r} in --metrics; allowed: {', '.join(METRICS)}")
    a = summarize_run(args.run_a, objective=args.objective, progress=not args.quiet, write=False)
    b = summarize_run(args.run_b, objective=args.objective, progress=not args.quiet, write=False)
    result = compare(a, b, metrics)
    print(format_comparison(result, str(args.run_a), str(args.run_b)))
    if args.json_out:
        args.json_out.write_text(json.dumps(to_json(result), indent=2))
    return 0
