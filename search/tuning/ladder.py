"""A ladder search as two Tune phases in one search: the start points, then the fine-tunes from them.

Why two phases and not one Tuner with dependent trials: a fine-tuned trial's config is only
known once its family's start point has ended (whether it finished, where its final checkpoint
is, and, for sampled keys or Optuna, which values its family drew). One Tuner would need a search
algorithm that holds trials back until their start point ends, wrapping both of ours and learning
checkpoints from a callback, with its state pickled by Ray mid-search. Two phases keep every
piece as it is: the start phase is the space's own search with the rate keys fixed at the
start point (ASHA, Optuna, strata unchanged: start points compete among themselves); the fine-tune
phase is a second Tuner, in ``<experiment>/fine_tune``, over the explicit fine-tune configs
(Ray's ``BasicVariantGenerator`` with ``points_to_evaluate``), ASHA keeping each rate point
its own stratum. Between them, ``ladder.json`` (:mod:`search.experiment.ladder_plan`) is the
phase marker that makes resume exact: no start point runs twice. The cost: the fine-tunes wait
for the slowest start point.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable, Optional

from ray.tune.search import ConcurrencyLimiter, Searcher

from search.experiment import settled
from search.experiment.atomic import write_local_text
from search.experiment.ladder_plan import FINE_TUNE_FOLDER, LadderFamily, LadderPlan
from search.experiment.store import ExperimentStore
from search.space import SearchSpec
from search.space.ladder import fine_tune_configs, fine_tune_spec, start_spec
from search.space.strata import family_key
from search.tracking import run_names
from search.tuning.settle import SettleStopper
from search.tuning.searchers import concurrency_limit
from trainables import metrics as M
from trainables.training.warm_start import newest_verified


def start_outcome(result: Any, budget: int) -> tuple[Optional[str], str]:
    """(final checkpoint path, "") of a start point that finished its budget, else (None, why not)."""
    metrics = result.metrics or {}
    reached = int(metrics.get(M.ITERATIONS, 0) or 0)
    if result.error is not None:
        return None, f"errored ({type(result.error).__name__})"
    if metrics.get(M.DIVERGED):
        return None, f"diverged ({metrics.get(M.DIVERGED_REASON, 'non-finite loss')})"
    if reached < budget:
        return None, f"stopped by the scheduler at iteration {reached} of {budget}"
    if result.checkpoint is None:
        return None, "left no checkpoint"
    return str(result.checkpoint.path), ""


def plan(spec: SearchSpec, results: Iterable[Any], run_ids: dict[str, str], store: ExperimentStore) -> LadderPlan:
    """The fine-tune phase from the start phase's results: per family, its start point's checkpoint or why not.

    Checkpoints are named as any node opens them: a path, or on object storage a URI (``s3://...``, what
    ``model.init_from`` of the fine-tunes then holds: the trial copies it). A final checkpoint whose files no
    longer match their checksums is passed over for the start point's newest one that does (named in ``ladder.json`` and on the console)."""
    keys = run_names.column_keys(spec.configs())
    ladder = LadderPlan()
    for result in sorted(results, key=lambda r: str((r.metrics or {}).get("trial_id", ""))):
        config = result.config or {}
        trial_id = str((result.metrics or {}).get("trial_id", "")) or str(result.path).rsplit("/", 1)[-1]
        budget = int(config.get("schedule", {}).get("iterations", 0))
        checkpoint, reason = start_outcome(result, budget)
        damaged: list[str] = []
        if checkpoint:  # the newest checkpoint of the start point whose files still match their checksums
            checkpoint, damaged = newest_verified(result.checkpoint, trial_id)
            checkpoint = store.location_of(checkpoint) if checkpoint else None
            damaged = [store.location_of(d) for d in damaged]  # "path: problem": the path first
            reason = "" if checkpoint else "left no checkpoint that matches its checksums"
        ladder.families.append(LadderFamily(trial_id, run_names.family_name(config, keys), family_key(config),
                                            checkpoint, reason, run_ids.get(trial_id), damaged))
        if checkpoint:
            ladder.configs.extend(fine_tune_configs(spec, config, checkpoint))
    return ladder


class ExplicitConfigs(Searcher):
    """Proposes the given trial configs, each once, in order (the fine-tune phase's trials).

    Ray's ``BasicVariantGenerator(points_to_evaluate=...)`` cannot take whole configs without a
    param space holding each of their keys, so the phase proposes them like the Optuna search
    does (``param_space={}``). Its state (how many were proposed) is saved as JSON beside Ray's
    experiment state, at the same moments, so a resumed phase never proposes a trial twice."""

    def __init__(self, configs: list[dict], metric: Optional[str] = None, mode: Optional[str] = None):
        super().__init__(metric=metric, mode=mode)
        self.configs = [copy.deepcopy(c) for c in configs]
        self.proposed = 0

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self.proposed >= len(self.configs):
            return Searcher.FINISHED
        self.proposed += 1
        return copy.deepcopy(self.configs[self.proposed - 1])

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        pass

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        return True  # the configs are whole: nothing to take from Ray's param space

    def save(self, checkpoint_path: str) -> None:
        write_local_text(checkpoint_path, json.dumps({"proposed": self.proposed, "configs": self.configs}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.proposed, self.configs = int(state["proposed"]), list(state["configs"])


def search_algorithm(spec: SearchSpec, configs: list[dict], cap: Optional[int] = None):
    """The fine-tune phase's search algorithm: the configs, at most as many at a time as any phase runs
    (``search.max_concurrent``, lowered to ``cap``: how many data-parallel trials the cluster's workers fit)."""
    searcher = ExplicitConfigs(configs)
    limit = concurrency_limit(spec, cap)
    return ConcurrencyLimiter(searcher, max_concurrent=limit) if limit else searcher


def settle_stopper(spec: SearchSpec, phase: ExperimentStore) -> Optional[SettleStopper]:
    """The fine-tune phase's settle rule (``ladder.settle``) as a Tune stopper; None: fixed-length fine-tunes.
    Why each trial settled is kept in ``phase``'s folder (:mod:`search.experiment.settled`), earlier drivers' too."""
    settle = spec.file.ladder.settle if spec.file.ladder is not None else None
    if settle is None:
        return None
    stopper = SettleStopper(settle.tolerance, settle.evaluations, on_settle=lambda reasons: settled.save(phase, reasons))
    stopper.reasons.update(settled.load(phase))
    return stopper


def phase_store(store: ExperimentStore) -> ExperimentStore:
    """The fine-tune phase's Ray experiment folder."""
    return ExperimentStore(f"{store.location}/{FINE_TUNE_FOLDER}")


__all__ = ["start_outcome", "plan", "phase_store", "settle_stopper", "search_algorithm", "ExplicitConfigs", "start_spec",
           "fine_tune_spec"]
