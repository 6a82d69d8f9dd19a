"""`lic-search best EXPERIMENT`: the best trials of a search, from MLflow."""

from __future__ import annotations

import json
from pathlib import Path

from search.errors import LicSearchError
from trainables import metrics as M

SHOWN_PARAMS = ("model.backbone", "model.auxt.enabled", "model.auxt.lambda_orth", "loss.lmbda", "schedule.lr",
                "schedule.iterations")


def register(subparsers) -> None:
    parser = subparsers.add_parser("best", help="print the best trials of a search and their configs")
    parser.add_argument("experiment", help="search name (the MLflow experiment)")
    parser.add_argument("--metric", default=M.EVAL_RD_LOSS, help="rank by this metric (default: %(default)s)")
    parser.add_argument("--mode", choices=("min", "max"), default="min")
    parser.add_argument("--top", type=int, default=None, help="show only the best N")
    parser.add_argument("--where", action="append", default=[], metavar="PARAM=VALUE",
                        help="keep trials whose flattened param equals VALUE (repeatable), "
                             "e.g. --where model.auxt.enabled=True")
    parser.add_argument("--status", choices=("completed", "stopped", "errored", "running"), default=None)
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: ./mlflow.db)")
    parser.add_argument("--json", action="store_true", help="print a JSON list (run_id, params, metrics, ...)")
    parser.add_argument("--by", choices=("trial", "family"), default="trial",
                        help="rank single trials by --metric, or rate families (trials differing only in the "
                             "R-D lambda) by BD-rate against --anchor (default: %(default)s)")
    parser.add_argument("--anchor", type=Path, default=None,
                        help="with --by family: anchor curve in CompressAI's results format (default: VTM on Kodak)")
    parser.add_argument("--export", type=Path, default=None, metavar="BEST.yaml",
                        help="write a space file that re-runs the best trial's config at full budget")
    parser.add_argument("--iterations", type=int, default=None,
                        help="with --export: the budget of the re-run (default: the trial's own budget)")
    parser.set_defaults(func=_best)


def _parse_where(items: list[str]) -> dict[str, str]:
    where = {}
    for item in items:
        if "=" not in item:
            raise LicSearchError(f"--where takes PARAM=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        where[key] = value
    return where


def _best_families(args) -> int:
    from search.report import rank_experiment_families

    rows = rank_experiment_families(args.experiment, args.tracking_uri, args.anchor,
                                    include_stopped=args.status == "stopped")
    if args.top:
        rows = rows[: args.top]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print("no rate families (no completed trials)")
        return 0
    for row in rows:
        value = "n/a" if row["bd_rate"] is None else f"{row['bd_rate']:+.2f}%"
        why = f"  ({row['reason']})" if row["reason"] else ""
        print(f"{row['rank']:>3}  family {row['family']}  BD-rate vs {row['anchor']}: {value}  "
              f"{row['points']} points, λ={row['lambdas']}  {row['params']}{why}")
    return 0


def _best(args) -> int:
    from search.queries import best_trials

    if args.by == "family":
        return _best_families(args)

    rows = best_trials(args.experiment, metric=args.metric, mode=args.mode, top=args.top,
                       tracking_uri=args.tracking_uri, where=_parse_where(args.where), status=args.status)
    if args.export and rows:
        from search.queries import export_space

        export_space(args.experiment, rows[0]["run_id"], args.export, tracking_uri=args.tracking_uri,
                     iterations=args.iterations)
        print(f"wrote {args.export} (re-runs run {rows[0]['run_id']}; run it with: lic-search run {args.export})",
              file=__import__("sys").stderr)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print("no trials match")
        return 0
    header = ["rank", args.metric, M.EVAL_BPP, M.EVAL_PSNR, "iters", "status"] + [p.split(".")[-1] for p in SHOWN_PARAMS]
    lines = []
    for rank, row in enumerate(rows, 1):
        m = row["metrics"]
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append([str(rank), fmt(m.get(args.metric)), fmt(m.get(M.EVAL_BPP)), fmt(m.get(M.EVAL_PSNR)),
                      fmt(m.get(M.ITERATIONS)), row["status"] or "-"]
                     + [row["params"].get(p, "-") for p in SHOWN_PARAMS])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    for line in [header] + lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    print(f"\nrun ids: {', '.join(r['run_id'] for r in rows[:3])}{' ...' if len(rows) > 3 else ''}")
    return 0
