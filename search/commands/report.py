"""`lic-search report EXPERIMENT`: Markdown + PNG report of a search, attached to its MLflow parent run."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.analysis.bdrate import METHODS
from search.commands._shared import add_quiet_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a Markdown report (R-D curves, BD-rate per rate family, convergence, AuxT speed, energy)",
        description="Reads the search's trials from MLflow and writes DIR/report.md with PNG plots, report.json "
                    "and each rate family's R-D curve (CompressAI results JSON); attaches the folder to the "
                    "search's parent run under 'report/'.",
    )
    parser.add_argument("experiment", help="search name (the MLflow experiment)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: ./mlflow.db)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default: reports/<experiment>)")
    parser.add_argument("--anchor", type=Path, action="append", default=[], metavar="ANCHOR.json",
                        help="extra published anchor curve in CompressAI results format (repeatable); "
                             "VTM on Kodak is always included")
    parser.add_argument("--method", choices=METHODS, default="pchip", help="BD-rate interpolation (default: pchip)")
    parser.add_argument("--include-stopped", action="store_true",
                        help="also build rate families from trials the scheduler stopped early "
                             "(default: completed trials only, so under-trained points do not bend the curves)")
    parser.add_argument("--no-attach", action="store_true", help="do not attach the report to the MLflow parent run")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run-id", default=None, metavar="PARENT",
                       help="report the search whose MLflow parent run is PARENT (default: the latest search)")
    which.add_argument("--all", action="store_true", dest="all_searches",
                       help="report every search recorded under this name together")
    add_quiet_option(parser)
    parser.set_defaults(func=run)


def best_line(best: dict, metric: str) -> str:
    """``full WLS (trial 3f2a1, eval/rd_loss 0.9312, of 4); tied with no WLS (trial 9c01): +0.4 % [-0.2, +1.1]``."""
    from search.bootstrap import interval_text

    line = f"{best['label']} (trial {best['trial_id']}, {metric} {best['value']:.4g}, of {best['of']})"
    runner = best.get("runner_up")
    if best.get("tied_with"):
        line += "; tied with " + ", ".join(f"{g['label']} (trial {g['trial_id']}): "
                                           f"{interval_text(g['relative'])}" for g in best["tied_with"])
    elif runner:
        line += f"; leads {runner['label']} (trial {runner['trial_id']}) by {interval_text(runner['relative'])}"
    return line


def savings_lines(data: dict) -> list[str]:
    """Each variant's rate saving against the baseline with its interval and letter group, then the resolution."""
    intervals = data.get("intervals")
    if not intervals:
        return []
    from search.bootstrap import interval_text

    lines = [f"rate saving against {intervals['baseline']} (BD-rate, {intervals['metric']}; same letter = not told "
             "apart):"]
    for label, row in intervals["variants"].items():
        if label == intervals["baseline"]:
            lines.append(f"  {label}: the baseline (group {row['group']}, {row['seeds']} seed(s))")
            continue
        tied = f", tied with {', '.join(row['tied_with'])}" if row["tied_with"] else ""
        lines.append(f"  {label}: {interval_text(row)} (group {row['group']}, {row['seeds']} seed(s){tied})")
    for label, reason in intervals["reasons"].items():
        lines.append(f"  {label}: n/a ({reason})")
    if intervals.get("resolution_text"):
        lines.append(intervals["resolution_text"])
    return lines


def run(args: argparse.Namespace) -> int:
    from search.analysis.report import ARTIFACT_PATH, generate_report
    from search.monitor import meter as meters
    from search.monitor.meter import Meter
    from search.space.strata import stratum_label
    from search.tracking.queries import select_search

    meters.configure(args.quiet)
    selection = select_search(args.experiment, args.tracking_uri, run_id=args.run_id, all_searches=args.all_searches)
    print(selection.describe())
    with Meter("report: reading runs", "run") as meter:
        report = generate_report(args.experiment, tracking_uri=args.tracking_uri, out=args.out,
                                 anchor_files=args.anchor, include_stopped=args.include_stopped, method=args.method,
                                 attach=not args.no_attach, selection=selection, progress=meter)
    families = report.data["families"]
    ranked = [f for f in families if f["rank"] is not None]
    print(f"report: {report.markdown}")
    print(f"{len(report.data['trials'])} trials, {len(families)} rate families ({len(ranked)} with a BD-rate)")
    print(f"intervals: {report.data['bootstrap_text']}")
    for family in families:
        if family.get("bunched"):
            print(f"warning: {family['bunched']}")
    for best in report.data["best_per_rate_point"]:
        print(f"best at {stratum_label(best['stratum'])}: {best_line(best, report.data['metric'])}")
    for line in savings_lines(report.data):
        print(line)
    if ranked:
        best = min(ranked, key=lambda f: f["rank"])
        value = best["bd_rate"].get(f"{report.data['references'][0]} psnr")
        print(f"best family: {best['label']} (BD-rate {value:+.2f}% vs {report.data['references'][0]})")
    summaries = [s for s in report.data["speed"] if s["lmbda"] is None and s["speedup"] is not None]
    for summary in summaries:
        bound = " (a lower bound: reached at the first evaluation)" if summary["bound"] else ""
        print(f"AuxT speed-up {summary['auxt_family']} vs {summary['no_auxt_family']}: "
              f"{'≥ ' if bound else ''}{summary['speedup']:.2f}x{bound}")
    if report.attached_to:
        print(f"attached to MLflow run {report.attached_to} under '{ARTIFACT_PATH}/'")
    elif report.pending:
        print(f"note: MLflow did not take the report yet; it waits in the search's tracking journal "
              f"({report.pending} records): ship it with lic-search sync {args.experiment}")
    return 0
