"""`lic-search best EXPERIMENT`: the best trial of each rate point of a search, from MLflow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from search.bootstrap import interval_text
from search.errors import LicSearchError
from search.space.strata import stratum_label
from search.tracking import run_names
from trainables import metrics as M


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "best", help="print the best trial of each rate point (or the best rate family) of a search",
        description="Trials are ranked only against trials of the same rate point: equal values at the "
                    "search's search.stratify_by keys (loss.lmbda and loss.distortion by default), because "
                    "R-D losses at different λ are not comparable. Reads the latest search of the name "
                    "unless --run-id or --all.")
    parser.add_argument("experiment", help="search name (the MLflow experiment)")
    parser.add_argument("--metric", default=None,
                        help=f"rank by this metric (default: {M.EVAL_RD_LOSS}; a multi-objective search, "
                             "search.objectives, is shown as each rate point's Pareto fronts over its objectives "
                             "unless --metric is given)")
    parser.add_argument("--mode", choices=("min", "max"), default=None,
                        help="direction of --metric (default: the metric's own: psnr, ms_ssim max; others min)")
    parser.add_argument("--top", type=int, default=None,
                        help="show only the best N of each rate point (Pareto fronts: the first N fronts)")
    parser.add_argument("--where", action="append", default=[], metavar="PARAM=VALUE",
                        help="keep trials whose flattened param equals VALUE (repeatable), "
                             "e.g. --where model.auxt.enabled=True")
    parser.add_argument("--status", choices=("completed", "stopped", "errored", "running"), default=None)
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: ./mlflow.db)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run-id", default=None, metavar="PARENT",
                       help="read the search whose MLflow parent run is PARENT (default: the latest search)")
    which.add_argument("--all", action="store_true", dest="all_searches",
                       help="read every search recorded under this name")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of trials (run_id, stratum, rank, typed params, metrics, "
                             "'varying': the table's columns under their full dotted keys, and 'ranked_by': the metric "
                             "and mode, or the Pareto objectives whose front number 'rank' then is)")
    parser.add_argument("--by", choices=("trial", "family"), default="trial",
                        help="rank single trials within each rate point by --metric, or rate families (trials "
                             "differing only in the R-D lambda) by BD-rate against the search's baseline variant "
                             "or a published --anchor curve; families are shown by "
                             "their readable name, --json also has their id under 'family' (default: %(default)s)")
    parser.add_argument("--anchor", type=Path, default=None,
                        help="with --by family: a published anchor curve (CompressAI's results format) to rank "
                             "against instead of the search's baseline variant (search.baseline, or its one "
                             "AuxT-off family; without either: VTM on Kodak)")
    parser.add_argument("--export", type=Path, default=None, metavar="BEST.yaml",
                        help="write a space file that re-runs the best trial of every rate point (with --by "
                             "family: every trial of the best family) at full budget")
    parser.add_argument("--iterations", type=int, default=None,
                        help="with --export: the budget of the re-run (default: the trials' own budget)")
    parser.set_defaults(func=_best)


def _parse_where(items: list[str]) -> dict[str, str]:
    where = {}
    for item in items:
        if "=" not in item:
            raise LicSearchError(f"--where takes PARAM=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        where[key] = value
    return where


def _export(args, selection, run_ids: list[str], why: str) -> None:
    from search.tracking.queries import export_space

    written = export_space(args.experiment, run_ids, args.export, tracking_uri=selection.tracking_uri,
                           iterations=args.iterations, why=why, stratify_by=selection.stratify_by)
    for path in written:
        print(f"wrote {path} ({why}; run it with: lic-search run {path})", file=sys.stderr)
    if len(written) > 1:
        print("the winners differ in more than one config section, so one space per rate point "
              "(a grid per section would also run combinations no search chose)", file=sys.stderr)


def _best_families(args, selection) -> int:
    from search.analysis.report import rank_experiment_families

    rows = rank_experiment_families(args.experiment, selection.tracking_uri, args.anchor,
                                    include_stopped=args.status == "stopped", selection=selection)
    if args.top:
        rows = rows[: args.top]
    if args.export:
        ranked = [row for row in rows if row["rank"] == 1]
        if not ranked:
            raise LicSearchError("--export --by family: no family has a BD-rate (each needs at least 4 rate "
                                 "points overlapping the reference curve); see the reasons with lic-search best --by family")
        saving = (f", rate saving {interval_text(ranked[0]['interval'])} vs {ranked[0]['reference']}"
                  if ranked[0].get("interval") else "")
        _export(args, selection, ranked[0]["run_ids"],
                f"every rate point of the best family {ranked[0]['family_name']}{saving}")
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print("no rate families (no completed trials)")
        return 0
    uncertain = any(row.get("interval") and not row["is_baseline"] for row in rows)
    header = ["rank", "family", "AuxT", f"BD-rate vs {rows[0]['reference']}",
              *(["rate saving [95 %]", "group", "tied with", "seeds"] if uncertain else []), "points", "λ",
              "differs in", "why no BD-rate"]
    lines = [["baseline" if row["is_baseline"] else str(row["rank"]) if row["rank"] is not None else "-",
              row["variant"] or row["family_name"], "yes" if row["auxt"] else "no",
              "-" if row["is_baseline"] else "n/a" if row["bd_rate"] is None else f"{row['bd_rate']:+.2f}%",
              *(_uncertainty_cells(row) if uncertain else []),
              str(row["points"]),
              ", ".join(f"{v:g}" for v in row["lambdas"]) or "-",
              ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "-",
              "" if row["is_baseline"] else row["reason"] or ""]
             for row in rows]
    _print_table(header, lines)
    if uncertain:
        from search.bootstrap import Bootstrap

        method = Bootstrap(**{k: rows[0]["bootstrap"][k] for k in ("resamples", "seed", "level")}).describe()
        print(f"\nrate saving: the BD-rate of the variant's mean curve, seed repeats folded; same group letter = not "
              f"told apart. {method}.")
        if rows[0].get("resolution_text"):
            print(rows[0]["resolution_text"][0].upper() + rows[0]["resolution_text"][1:] + ".")
    for row in rows:
        if row.get("bunched"):
            print(f"warning: {row['bunched']}")
    return 0


def _uncertainty_cells(row: dict) -> list[str]:
    """``-3.1 % [-4.0, -2.2]``, the letter group, the variants it cannot be told apart from, its seeds."""
    saving = ("baseline" if row["is_baseline"] else interval_text(row["interval"]) if row["interval"]
              else "n/a")
    return [saving, row.get("group") or "-", ", ".join(row.get("tied_with") or []) or "-", str(row.get("seeds") or "-")]


def _print_table(header: list[str], lines: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    for line in [header] + lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())


def _best(args) -> int:
    from search.space.sections import default_mode
    from search.tracking.queries import best_trials, select_search, winners

    selection = select_search(args.experiment, args.tracking_uri, run_id=args.run_id, all_searches=args.all_searches)
    print(selection.describe(), file=sys.stderr)
    if args.by == "family":
        return _best_families(args, selection)

    objectives = selection.objectives if args.metric is None else ()
    metric = args.metric or M.EVAL_RD_LOSS
    mode = args.mode or default_mode(metric)
    rows = best_trials(args.experiment, metric=metric, mode=mode, where=_parse_where(args.where),
                       status=args.status, selection=selection, objectives=objectives)
    bootstrap = None if objectives else _mark_ties(rows, metric, mode, selection)
    if args.top:  # after the ties: a leader is tied with runners-up the table may not show
        rows = [row for row in rows if row["rank"] is not None and row["rank"] <= args.top]
    if args.export:
        best = winners(rows)
        if not best:
            raise LicSearchError(f"--export: no trial has a finite {' and '.join(n for n, _ in objectives) or metric}; "
                                 "nothing to re-run")
        what = (f"the Pareto front of each of {len({json.dumps(r['stratum'], sort_keys=True) for r in best})} rate "
                "points" if objectives else f"the best trial of each of {len(best)} rate points")
        tied = sum(1 for r in best if r.get("tied_with"))
        if tied:  # the export re-runs winners the images could not tell from a runner-up: say so
            what += f" ({tied} of them tied with a runner-up: its interval contains 0)"
        _export(args, selection, [r["run_id"] for r in best], what)
    keys = row_keys(rows)
    if args.json:
        ranked_by = ("pareto front: " + ", ".join(f"{name} {direction}" for name, direction in objectives)
                     if objectives else f"{metric} {mode}")
        rows = [{**row, "varying": run_names.described(row["params"], keys, row.get("variant")), "ranked_by": ranked_by}
                | ({"intervals": bootstrap.to_dict()} if bootstrap else {}) for row in rows]
        print(json.dumps(rows, indent=2, sort_keys=True, default=str))
        return 0
    if not rows:
        print("no trials match")
        return 0
    within = f"within each rate point ({', '.join(selection.stratify_by) or 'none'})"
    if objectives:
        print(f"Pareto fronts over {', '.join(f'{name} ({direction})' for name, direction in objectives)} {within}: "
              "front 1 is the rate point's Pareto front (no other trial is as good on every objective and better "
              "on one); --metric M ranks by one metric instead")
        _print_table(*trial_table(rows, [name for name, _ in objectives], keys, rank_header="front"))
        fronts: dict[str, list[str]] = {}
        for row in winners(rows):
            fronts.setdefault(stratum_label(row["stratum"]), []).append(row["run_id"])
        print("\nPareto front per rate point: " + "; ".join(f"{label}: runs {', '.join(ids)}"
                                                          for label, ids in fronts.items()))
        return 0
    print(f"ranked by {metric} ({mode}) {within}")
    _print_table(*trial_table(rows, [metric], keys))
    best = winners(rows)
    print("\nbest per rate point: " + "; ".join(f"{stratum_label(r['stratum'])}: {_named(r)}run {r['run_id']}"
                                              f"{_tied(r, rows)}" for r in best))
    if bootstrap is not None and any("vs_best" in row for row in rows):
        print(f"vs best: the difference to the rate point's best in % of its {metric}, paired over the eval images; "
              f"'tied' where the interval contains 0. {bootstrap.describe()[0].upper()}{bootstrap.describe()[1:]}.")
    return 0


def _mark_ties(rows: list[dict], metric: str, mode: str, selection):
    """Each ranked row's difference to its rate point's best with its interval, and the best's ties
    (:func:`search.bootstrap.mark_ties`, from the runs' per-image results); the method, or None without them."""
    from search.bootstrap import COLUMN_OF, Bootstrap, mark_ties
    from search.tracking.client import client_for
    from search.tracking.queries import per_image_table

    if metric not in COLUMN_OF:
        return None
    client = client_for(selection.tracking_uri)
    tables = {row["trial_id"]: per_image_table(client, row["run_id"]) for row in rows if row["rank"] is not None}
    if not any(tables.values()):
        return None
    bootstrap = Bootstrap()
    mark_ties(rows, tables, metric, mode, bootstrap=bootstrap)
    return bootstrap


def _tied(best: dict, rows: list[dict]) -> str:
    """`` (tied with full WLS run 5f3e.., ...)`` for a best trial the images cannot tell from runners-up."""
    tied = [row for row in rows if row["trial_id"] in (best.get("tied_with") or [])]
    if not tied:
        return ""
    return " (tied with " + ", ".join(f"{_named(row)}run {row['run_id']}" for row in tied) + ")"


def _named(row: dict) -> str:
    """``A3 avgpool `` before a run id in a labelled space; nothing otherwise."""
    return f"{row['variant']} " if row.get("variant") else ""


def _versus(row: dict) -> str:
    """The ``vs best`` cell: ``best`` (``best, tied`` when a runner-up is tied), or the difference with its interval."""
    if row.get("rank") == 1:
        return "best, tied" if row.get("tied_with") else "best"
    gap = row.get("vs_best")
    if gap is None:
        return "-"
    return interval_text(gap["relative"]) + (" tied" if gap["tied"] else "")


def row_keys(rows: list[dict]) -> list[str]:
    """The columns of ``best``'s table: the variant label when the trials carry one (a labelled space),
    then every key that varies (:func:`search.tracking.run_names.column_keys`)."""
    keys = run_names.column_keys(row["params"] for row in rows)
    return ([run_names.VARIANT_KEY] if any(row.get("variant") for row in rows) else []) + keys


def trial_table(rows: list[dict], metrics: list[str], keys: list[str],
                rank_header: str = "rank") -> tuple[list[str], list[list[str]]]:
    """Header and lines of ``best``'s table: scores (``metrics``, then bpp and PSNR), then one column per key
    that varies (see :func:`search.tracking.run_names.column_keys`), headed ``λ``, ``auxt``, ``lr``..."""
    shown = list(dict.fromkeys((*metrics, M.EVAL_BPP, M.EVAL_PSNR)))
    uncertain = any("vs_best" in row for row in rows)
    header = ["rate point", rank_header, *shown, *(["vs best [95 %]"] if uncertain else []), "iters", "status"] \
        + [run_names.label(k, keys) for k in keys]
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    lines = []
    for row in rows:
        m = row["metrics"]
        lines.append([stratum_label(row["stratum"]), "-" if row["rank"] is None else str(row["rank"]),
                      *(fmt(m.get(name)) for name in shown), *([_versus(row)] if uncertain else []),
                      fmt(m.get(M.ITERATIONS)), row["status"] or "-"]
                     + [run_names.value(row["params"], k, row.get("variant")) for k in keys])
    return header, lines
