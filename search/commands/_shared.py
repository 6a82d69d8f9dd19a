"""Options and printing shared by the commands that run searches."""

from __future__ import annotations

from pathlib import Path

from trainables import metrics as M


def add_cluster_options(parser) -> None:
    parser.add_argument("--address", default=None,
                        help="join an existing Ray cluster (e.g. auto or 10.0.0.1:6379); default: a local cluster")


def print_summary(results, folder: Path) -> None:
    errors = sum(1 for r in results if r.error)
    print(f"\n{len(results)} trials ({errors} errored). Experiment folder: {folder}")
    try:
        best = results.get_best_result(metric=M.EVAL_RD_LOSS, mode="min", scope="last")
        print(f"best {M.EVAL_RD_LOSS} = {best.metrics[M.EVAL_RD_LOSS]:.4f} at {best.metrics[M.ITERATIONS]} iterations")
    except Exception:
        pass
    print(f"Resume with: lic-search resume {folder}\nBrowse with: mlflow ui   (in this folder)  or  lic-search best <name>")
