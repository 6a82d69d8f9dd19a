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
    from search.training_data import skipped_images  # (imports torch: only once a search ran)
    print(skipped_images(results).describe())
    _print_best_per_rate_point(results, folder)
    print(f"Resume with: lic-search resume {folder}\nBrowse with: mlflow ui   (in this folder)  or  lic-search best <name>")


def _print_best_per_rate_point(results, folder) -> None:
    """One line per rate point (stratum): R-D losses at different λ are not comparable."""
    import yaml

    from search.algorithm_config import DEFAULT_STRATIFY_BY, default_mode
    from search.ranking import finite, rank_within_strata, stratum_label, stratum_of
    from search.storage import ExperimentStore
    from search.tuner import SPACE_COPY

    try:
        search = (yaml.safe_load(ExperimentStore(folder).read_text(SPACE_COPY)) or {}).get("search") or {}
    except Exception:  # the summary must never hide the search's outcome
        search = {}
    metric = search.get("metric") or M.EVAL_RD_LOSS
    mode = search.get("mode") or default_mode(metric)
    keys = search.get("stratify_by", list(DEFAULT_STRATIFY_BY))
    finished = [r for r in results if not r.error and r.metrics and r.config]
    ranked = rank_within_strata(finished, lambda r: stratum_of(r.config, keys), lambda r: r.metrics.get(metric), mode)
    for result, stratum, rank in ranked:
        if rank == 1:
            print(f"best at {stratum_label(stratum)}: {metric} = {finite(result.metrics.get(metric)):.4f} at "
                  f"{result.metrics.get(M.ITERATIONS)} iterations (trial {result.metrics.get('trial_id', '?')})")
