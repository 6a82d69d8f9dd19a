"""The private Ray Tune and Optuna members that search/tuning/searchers.py and search/tuning/schedulers.py
override or read. pyproject.toml pins ``ray[tune]`` and ``optuna`` below the next untested
release; when an upgrade moves one of these, this test names it instead of the searches
quietly falling back to stock behaviour (comparing R-D losses across λ, COMPLETE for pruned)."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def _module_source(cls) -> str:
    return inspect.getsource(inspect.getmodule(cls))


def test_pbt_still_calls_the_private_methods_stratified_pbt_overrides():
    """StratifiedPBT overrides _quantiles (ranking within a stratum) and _get_new_config (the
    strata guard, config repair); both must exist with these signatures and be called by PBT itself."""
    from ray.tune.schedulers import PopulationBasedTraining

    assert _parameters(PopulationBasedTraining._quantiles) == ["self"], "PopulationBasedTraining._quantiles moved"
    assert _parameters(PopulationBasedTraining._get_new_config) == ["self", "trial", "trial_to_clone"], \
        "PopulationBasedTraining._get_new_config(trial, trial_to_clone) moved"
    source = _module_source(PopulationBasedTraining)
    assert "self._quantiles()" in source, "PopulationBasedTraining no longer calls self._quantiles()"
    assert "self._get_new_config(" in source, "PopulationBasedTraining no longer calls self._get_new_config()"


def test_pbt_private_state_stratified_pbt_reads():
    from ray.tune.experiment import Trial

    from search.space.sections import PBTMutations
    from search.tuning.schedulers import StratifiedPBT
    from trainables import metrics as M

    pbt = StratifiedPBT(metric=M.EVAL_RD_LOSS, mode="min", perturbation_interval=2,
                        mutations=PBTMutations(lr=(1e-5, 1e-3)))
    for name in ("_trial_state", "_quantile_fraction", "_hyperparam_mutations", "_perturbation_interval", "_time_attr"):
        assert hasattr(pbt, name), f"PopulationBasedTraining.{name} is gone"
    trial = Trial("lic", config={"loss": {"lmbda": 0.013}}, trial_id="t", stub=True)
    pbt.on_trial_add(SimpleNamespace(search_alg=None), trial)
    assert hasattr(pbt._trial_state[trial], "last_score"), "PBT trial state has no last_score"


def test_fifo_scheduler_keeps_metric_and_mode_in_the_private_fields_stratified_asha_sets():
    from search.tuning.schedulers import StratifiedASHA
    from trainables import metrics as M

    asha = StratifiedASHA(max_t=4, metric=M.EVAL_RD_LOSS, mode="max")
    assert (asha.metric, asha._mode) == (M.EVAL_RD_LOSS, "max"), "TrialScheduler.metric no longer reads _metric"


def test_storage_context_members_the_asha_state_file_uses(tmp_path: Path):
    from ray.train._internal.storage import StorageContext

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp")
    assert hasattr(storage, "storage_filesystem"), "StorageContext.storage_filesystem is gone"
    assert storage.experiment_fs_path.rstrip("/").endswith("exp"), "StorageContext.experiment_fs_path moved"


def test_optuna_search_private_members_pruned_optuna_search_uses():
    """PrunedOptunaSearch tells Optuna PRUNED itself through _ot_study/_ot_trials and marks the
    trial in _completed_trials, and defers to OptunaSearch.on_trial_complete otherwise."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from search.tuning.searchers import PrunedOptunaSearch

    assert _parameters(OptunaSearch.on_trial_complete) == ["self", "trial_id", "result", "error"], \
        "OptunaSearch.on_trial_complete(trial_id, result, error) moved"
    assert _parameters(OptunaSearch.on_trial_result) == ["self", "trial_id", "result"], \
        "OptunaSearch.on_trial_result(trial_id, result) moved"
    searcher = PrunedOptunaSearch(space={"x": tune.uniform(0.0, 1.0)}, metric="loss", mode="min", seed=0)
    config = searcher.suggest("t")
    assert 0.0 <= config["x"] <= 1.0
    assert isinstance(searcher._ot_study, optuna.Study), "OptunaSearch._ot_study is gone"
    assert isinstance(searcher._ot_trials["t"], optuna.Trial), "OptunaSearch._ot_trials[trial_id] is gone"
    assert isinstance(searcher._completed_trials, set), "OptunaSearch._completed_trials is gone"
    searcher.budgets["t"] = 10
    searcher.on_trial_complete("t", {"loss": 0.5, "iterations": 4})
    assert searcher._ot_study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert "t" in searcher._completed_trials
    # The JSON state (StratifiedOptunaSearch.save/restore) asks running trials again with their parameters
    # against OptunaSearch._space, the Optuna distributions Ray converted the space to.
    assert set(searcher._space) == {"x"} and isinstance(searcher._space["x"], optuna.distributions.FloatDistribution)


@pytest.mark.parametrize("package, bound", [("ray", "2.61"), ("optuna", "5.1")])
def test_installed_versions_are_inside_the_pinned_range(package: str, bound: str):
    """The pin in pyproject.toml is what this file was checked against; keep the two in step."""
    import importlib.metadata
    import re

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    pins = re.findall(rf'^\s*"({package}\b[^"]*)"', text, flags=re.M)
    assert pins and f"<{bound}" in pins[0], f"pyproject.toml pins {pins}, not <{bound}: re-run this test's checks"
    installed = tuple(int(p) for p in importlib.metadata.version(package).split(".")[:2])
    assert installed < tuple(int(p) for p in bound.split(".")), \
        f"{package} {importlib.metadata.version(package)} is outside the pinned range (<{bound})"


def test_restored_tuner_exposes_its_run_config_where_resume_replaces_the_callbacks():
    """resume swaps the callbacks Tune restored (the dead driver's logger and console) for this
    driver's through ``Tuner._local_tuner.get_run_config()`` (search/tuning/tuner.py)."""
    from ray.tune import Tuner
    from ray.tune.impl.tuner_internal import TunerInternal

    assert "_local_tuner" in inspect.getsource(Tuner.__init__), "Tuner._local_tuner is gone"
    assert _parameters(TunerInternal.get_run_config) == ["self"], "TunerInternal.get_run_config() moved"


def test_experiment_state_saver_members_state_save_patches(tmp_path: Path):
    """search/tuning/state_save.py wraps _ExperimentCheckpointManager.sync_up_experiment_state(save_fn, force,
    wait) so each save waits for the previous upload (self._storage.syncer.wait()), and checks the final,
    forced and waited save (tune.run's runner.checkpoint(force=True, wait=True)) through the storage's paths."""
    from ray.train._internal.storage import StorageContext
    from ray.tune import tune as tune_module
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.execution.tune_controller import TuneController

    from search.tuning import state_save

    state_save.install()
    manager = _ExperimentCheckpointManager.sync_up_experiment_state
    assert getattr(manager, "_lic_search", False), "the patch is not installed"
    assert _parameters(manager.__wrapped__) == ["self", "save_fn", "force", "wait"], \
        "_ExperimentCheckpointManager.sync_up_experiment_state(save_fn, force, wait) moved"
    assert "self._storage.syncer" in inspect.getsource(manager.__wrapped__), \
        "the manager no longer uploads through self._storage.syncer"
    assert "save_fn=self.save_to_dir" in inspect.getsource(TuneController.checkpoint), \
        "TuneController.checkpoint no longer saves through sync_up_experiment_state"
    assert "runner.checkpoint(force=True, wait=True)" in inspect.getsource(tune_module.run), \
        "tune.run's final save is no longer forced and waited"
    assert 'CKPT_FILE_TMPL = "experiment_state-{}.json"' in inspect.getsource(TuneController), \
        "Ray's experiment state file name moved (search/experiment/ray_state.py)"
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp")
    assert hasattr(storage, "storage_filesystem") and hasattr(storage, "experiment_fs_path")
    assert isinstance(inspect.getattr_static(StorageContext, "experiment_driver_staging_path"), property), \
        "StorageContext.experiment_driver_staging_path is gone"
    assert callable(storage.syncer.wait), "StorageContext.syncer.wait() is gone"


# ------------------------------------------------------------------ data-parallel trials (workers_per_trial)
def test_ddp_can_still_leave_parameters_out_of_the_sync():
    """trainables/training/data_parallel.py keeps the entropy bottlenecks' quantiles out of DDP through
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model (torch has no public way)."""
    from torch.nn.parallel import DistributedDataParallel

    assert _parameters(DistributedDataParallel._set_params_and_buffers_to_ignore_for_model) == \
        ["module", "params_and_buffers_to_ignore"], "DDP._set_params_and_buffers_to_ignore_for_model moved"
    import torch

    module = torch.nn.Linear(2, 2)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ["bias"])
    assert "bias" in module._ddp_params_and_buffers_to_ignore, "DDP reads the ignored names elsewhere now"


def test_compressai_noise_is_drawn_where_the_data_parallel_trial_redraws_it():
    """data_parallel.shard_quantization_noise replaces EntropyModel.quantize(inputs, mode, means) for
    mode "noise" (CompressAI draws torch.empty_like(inputs).uniform_(-0.5, 0.5)), and assumes
    EntropyBottleneck quantises its input laid out (C, 1, B·H·W), batch-major in the last dimension."""
    from compressai.entropy_models import EntropyBottleneck, EntropyModel

    assert _parameters(EntropyModel.quantize) == ["self", "inputs", "mode", "means"], "EntropyModel.quantize moved"
    assert "uniform_(-half, half)" in inspect.getsource(EntropyModel.quantize)
    forward = inspect.getsource(EntropyBottleneck.forward)
    assert "x.reshape(x.size(0), 1, -1)" in forward and '"noise" if training' in forward, \
        "EntropyBottleneck no longer quantises (C, 1, B·H·W) values"


def test_ray_train_v2_members_the_data_parallel_trial_uses():
    """The coordinator (trainables/training/data_parallel_trainable.py) runs Ray Train V2's TorchTrainer and
    forwards reports through a UserCallback (DeveloperAPI) on the Train controller; the driver removes a
    stopped trial's worker placement group by id (search/tuning/worker_groups.py)."""
    import ray
    from ray.train import UserCallback
    from ray.train.torch import TorchTrainer
    from ray.util.placement_group import PlacementGroup

    assert TorchTrainer.__module__.startswith("ray.train.v2"), "ray.train.torch.TorchTrainer is not Train V2"
    assert _parameters(UserCallback.after_report) == ["self", "run_context", "metrics", "checkpoint"], \
        "UserCallback.after_report(run_context, metrics, checkpoint) moved"
    assert _parameters(PlacementGroup.__init__)[:2] == ["self", "id"], "PlacementGroup(id) moved"
    assert ray.PlacementGroupID.from_hex("0" * 36).hex() == "0" * 36


def test_ray_members_the_job_end_stop_uses():
    """search/tuning/interrupt.py: a trial's actor handle (``Trial.temporary_state.ray_actor``), its process and node
    from GCS's actor table (``ray._private.state.actors``: ``Pid``, ``Address.NodeID``), Tune's SIGUSR1 stop
    installed inside ``fit``, and ``Callback.on_trial_recover`` (called for a preempted attempt)."""
    import ray._private.state as state
    from ray import tune
    from ray.tune import tune as tune_module
    from ray.tune.experiment import Trial

    assert "ray_actor" in inspect.getsource(Trial), "Trial.temporary_state.ray_actor moved"
    assert _parameters(state.actors)[0] == "actor_id", "ray._private.state.actors(actor_id) moved"
    source = inspect.getsource(state)
    assert '"Pid"' in source and '"NodeID"' in source, "the actor table no longer names Pid and Address.NodeID"
    assert "signal.SIGUSR1" in inspect.getsource(tune_module), "Tune no longer stops on SIGUSR1"
    assert hasattr(tune.Callback, "on_trial_recover"), "tune.Callback.on_trial_recover moved"
