"""The private members of Ray, Optuna and MLflow that lic-search still uses, each checked by the behaviour lic-search
relies on (not by its source text), so a version bound in pyproject.toml can be raised by running this file: a
failure names the member and the installed version.

The list (docs/architecture.md, "Private library members", says why each is needed):

Ray, all through search/experiment/ray_internals.py:
  1. ``_ExperimentCheckpointManager.sync_up_experiment_state(save_fn, force, wait)`` and its ``_storage``: wrapped by
     search/tuning/state_save.py so each state save waits for the previous upload, the final one checked.
  2. ``StorageContext`` (``ray.train._internal.storage``) members ``storage_filesystem``, ``experiment_fs_path``,
     ``experiment_driver_staging_path``, ``syncer.wait()``: the experiment folder of a trial / the driver.
  3. ``Tuner._local_tuner.get_run_config()``: resume swaps the restored callbacks for this driver's.
  4. ``experiment_state-*.json`` (``TuneController.CKPT_FILE_TMPL``) and its trial records: status and resume.
  5. the logger ``ray._private.authentication.authentication_token_setup``: quietened on the default console.
Ray, in the trial (trainables, which may not import search):
  6. ``train_func.__mixins__``: Ray's function trainable mixes in the SIGTERM checkpoint hook (which also registers
     the trial's process for the job-end stop: trainables/training/trial_processes.py, public Ray API only).
  7. ``WorkerCallback`` (``ray.train.v2._internal.execution.callback``): each data-parallel worker installs that hook.
MLflow (search/tracking/view.py):
  8. the UI's saved-view tag ``mlflow.sharedViewState.<key>``: checked in headless Chromium by
     tests/test_mlflow_view.py::test_the_printed_url_opens_the_runs_table_in_headless_chromium.
Optuna: none (the searcher uses ask-and-tell and the public ``BaseStorage`` methods).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import logging
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def member(name: str, package: str = "ray"):
    """Any failure inside names the private member and the installed version of its library."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - re-raised with the member's name
        raise AssertionError(f"{package} {importlib.metadata.version(package)}: {name} no longer behaves as lic-search "
                             f"relies on ({type(error).__name__}: {error}); see tests/test_library_contract.py and "
                             "search/experiment/ray_internals.py") from error


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# ------------------------------------------------------------------ Ray, through search/experiment/ray_internals.py
def _tiny_trainable(config: dict) -> None:
    from ray import tune

    for iteration in range(1, 3):
        tune.report({"iterations": iteration, "loss": config["x"] / iteration})


@pytest.mark.slow
def test_state_saves_wait_for_uploads_and_the_final_save_is_checked(tmp_path: Path, ray_cluster, monkeypatch):
    """Members 1, 2, 3 and 4 in one small real search: Tune saves through the wrapped
    sync_up_experiment_state (each save waits for the previous upload; the last one, forced and waited, is read
    back), the StorageContext names the experiment folder and its staging folder, Ray's experiment-state file holds
    the trial records ``status`` reads, and a restored Tuner exposes the RunConfig whose callbacks resume swaps."""
    from ray import tune

    from search.experiment import ray_internals, ray_state
    from search.experiment.store import ExperimentStore
    from search.tuning import state_save

    waited, final = [], []
    finish_upload, verify_final_save = state_save.finish_upload, state_save.verify_final_save
    monkeypatch.setattr(state_save, "finish_upload", lambda storage: (waited.append(storage), finish_upload(storage)))
    monkeypatch.setattr(state_save, "verify_final_save",
                        lambda storage: final.append((storage, verify_final_save(storage))) or final[-1][1])

    class Marker(tune.Callback):
        pass

    with member("_ExperimentCheckpointManager.sync_up_experiment_state(save_fn, force, wait)"):
        state_save.install()
        manager = ray_internals.experiment_checkpoint_manager()
        assert getattr(manager.sync_up_experiment_state, "_lic_search", False), "the wrapper is not installed"
        tuner = tune.Tuner(_tiny_trainable, param_space={"x": tune.grid_search([1.0, 2.0])},
                           run_config=tune.RunConfig(name="contract", storage_path=str(tmp_path), verbose=0,
                                                     callbacks=[Marker()]))
        assert not any(r.error for r in tuner.fit())
        assert waited, "no state save went through the wrapped sync_up_experiment_state"
        assert final and final[-1][1], "Tune's last save was not forced and waited, or did not reach storage"
    storage = final[-1][0]
    with member("StorageContext.storage_filesystem / experiment_fs_path / experiment_driver_staging_path / syncer"):
        filesystem, folder = ray_internals.experiment_location(storage)
        assert Path(folder) == tmp_path / "contract" and filesystem.get_file_info(folder).type.name == "Directory"
        staged = Path(ray_internals.staging_folder(storage))
        assert state_save.session_files(staged), f"nothing staged in {staged}"
        ray_internals.wait_for_upload(storage)  # nothing in flight: returns
    with member(f"Ray's experiment state file {ray_internals.EXPERIMENT_STATE_PATTERN} (TuneController.CKPT_FILE_TMPL)"):
        records = ray_state.trial_records(ExperimentStore(tmp_path / "contract"))
        assert sorted(r["status"] for r in records) == ["TERMINATED", "TERMINATED"], records
        assert {r["config"]["x"] for r in records} == {1.0, 2.0}
    with member("Tuner._local_tuner.get_run_config()"):
        restored = tune.Tuner.restore(str(tmp_path / "contract"), trainable=_tiny_trainable)
        config = ray_internals.restored_run_config(restored)
        assert any(isinstance(c, Marker) for c in config.callbacks or []), config.callbacks
        config.callbacks = []  # what resume does: the restored Tuner runs with the callbacks set here
        assert ray_internals.restored_run_config(restored).callbacks == []


@pytest.mark.slow
def test_a_local_instance_is_recorded_from_what_ray_init_returned(ray_cluster):
    """Public Ray API, relied on by search/experiment/ray_session.py (which ends a killed driver's instance):
    ``ray.init().address_info`` names the session folder and GCS address, and the instance's head processes (GCS
    and raylet among them) are the starting process's children that name that folder on their command line."""
    import psutil
    import ray

    from search.experiment import ray_session

    with member("ray.init().address_info['session_dir'/'gcs_address'], the daemons' command lines"):
        info = ray.init(address="local", ignore_reinit_error=True).address_info
        session = ray_session.current_local_session(info)
        assert session is not None and os.path.isdir(session.session_dir), info
        assert re.fullmatch(r"[\w.\-]+:\d+", session.gcs_address), session.gcs_address
        names = {psutil.Process(pid).name() for pid, _ in session.processes}
        assert {"gcs_server", "raylet"} <= names, names
        assert len(ray_session.members(session)) > len(session.processes)  # the workers descend from the raylet


def test_the_token_notice_logger_is_the_module_ray_logs_it_from():
    """Member 5: the default console quietens this logger; Ray must still log the notice through it."""
    from search.experiment.ray_internals import AUTH_TOKEN_LOGGER

    with member(f"logger {AUTH_TOKEN_LOGGER}"):
        module = importlib.import_module(AUTH_TOKEN_LOGGER)
        loggers = [value for value in vars(module).values() if isinstance(value, logging.Logger)]
        assert [log.name for log in loggers] == [AUTH_TOKEN_LOGGER], loggers


def test_function_trainables_mix_in_the_preemption_hook():
    """Member 6: Ray's function trainable class takes ``train_func.__mixins__`` (also through
    ``tune.with_parameters``), so each trial installs its SIGTERM checkpoint handler in ``setup``."""
    from ray import tune
    from ray.tune.registry import get_trainable_cls, register_trainable

    from trainables.training.indexed_trainable import train_lic_indexed
    from trainables.training.preemption import PreemptibleTrainable

    with member("function trainable __mixins__"):
        register_trainable("lic-contract", tune.with_parameters(train_lic_indexed, train_indexes=None))
        trainable = get_trainable_cls("lic-contract")
        assert issubclass(trainable, PreemptibleTrainable), trainable.__mro__
        assert trainable.__mro__.index(PreemptibleTrainable) < [c.__name__ for c in trainable.__mro__].index(
            "FunctionTrainable"), "the hook's setup must run before (and call) the function trainable's"


def test_the_optuna_searcher_uses_no_private_member_of_ray_or_optuna():
    """The stratified Optuna search drives studies through ask-and-tell and BaseStorage's public methods: a
    stopped trial's intermediate value and PRUNED state, read back through a second storage object."""
    import optuna
    from ray import tune

    from search.tuning.searchers import StratifiedOptunaSearch

    with member("Optuna ask-and-tell / BaseStorage.set_trial_intermediate_value", "optuna"):
        searcher = StratifiedOptunaSearch({"x": tune.uniform(0.0, 1.0), "schedule": {"iterations": 10}},
                                          metric="loss", mode="min", samples_per_cell=1, seed=0)
        config = searcher.suggest("t")
        assert 0.0 <= config["x"] <= 1.0
        searcher.on_trial_result("t", {"loss": 0.7, "iterations": 2})
        searcher.on_trial_complete("t", {"loss": 0.5, "iterations": 4})
        ((_, study),) = searcher.studies()
        (trial,) = study.trials
        assert (trial.state, trial.intermediate_values, trial.value) == (
            optuna.trial.TrialState.PRUNED, {2: 0.7, 4: 0.5}, 0.5)


@pytest.mark.parametrize("package, bound", [("ray", "2.61"), ("optuna", "5.1"), ("mlflow", "3.18")])
def test_installed_versions_are_inside_the_pinned_range(package: str, bound: str):
    """The bound in pyproject.toml is what this file (and, for mlflow, the browser test of the saved view) was
    run against; raise both together after the checks pass on the new version."""
    text = (REPO / "pyproject.toml").read_text()
    pins = re.findall(rf'^\s*"({package}\b[^"]*)"', text, flags=re.M)
    assert pins and f"<{bound}" in pins[0], f"pyproject.toml pins {pins}, not <{bound}: re-run this test's checks"
    installed = tuple(int(p) for p in importlib.metadata.version(package).split(".")[:2])
    assert installed < tuple(int(p) for p in bound.split(".")), \
        f"{package} {importlib.metadata.version(package)} is outside the pinned range (<{bound})"


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


def _sigterm_probe(config: dict) -> None:
    import os
    import signal
    import time

    from ray import train

    from trainables.training import preemption

    installed = signal.getsignal(signal.SIGTERM) is preemption._on_sigterm
    os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice to this worker: a stop request, not an exit
    deadline = time.monotonic() + 30
    while not preemption.stop_requested() and time.monotonic() < deadline:
        time.sleep(0.1)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:  # Train V2's result keeps the metrics of a checkpoint's report
        train.report({"installed": installed, "stop_requested": preemption.stop_requested()},
                     checkpoint=train.Checkpoint.from_directory(folder))


@pytest.mark.slow
def test_train_worker_callbacks_in_the_run_config_reach_the_workers_main_thread(ray_cluster, tmp_path):
    """Member 7: data-parallel trials install their SIGTERM handler through a Ray Train ``WorkerCallback`` (a DeveloperAPI)
    passed in ``RunConfig.callbacks``: by behaviour, a worker of a real Train run has the handler installed (which
    only the actor's main thread can do) before its loop starts, and a SIGTERM to it becomes a stop request."""
    from ray import train
    from ray.train.torch import TorchTrainer

    from trainables.training.data_parallel_trainable import _sigterm_on_workers

    with member("ray.train.v2 WorkerCallback.after_init_train_context"):
        trainer = TorchTrainer(_sigterm_probe, scaling_config=train.ScalingConfig(num_workers=1),
                               run_config=train.RunConfig(name="worker-callback", storage_path=str(tmp_path),
                                                          callbacks=[_sigterm_on_workers()]))
        metrics = trainer.fit().metrics
        assert metrics["installed"] and metrics["stop_requested"], metrics


def _reports_its_process(config: dict) -> None:
    import os
    import time

    import ray
    from ray import tune

    node = ray.get_runtime_context().get_node_id()
    for iteration in range(1, 4):
        tune.report({"iterations": iteration, "pid": os.getpid(), "node": node})
        time.sleep(1.0)  # Tune stops on SIGUSR1 long before a third report


@pytest.mark.slow
def test_the_job_end_stop_finds_each_running_trials_process_and_tune_stops_on_sigusr1(ray_cluster, tmp_path):
    """search/tuning/interrupt.py, with public Ray API only: a trial with the preemption mixin (member 6) registers
    the process and node it reports in the driver's registry (trainables/training/trial_processes.py); Tune's own
    SIGUSR1 handler, installed inside ``fit``, stops the run and saves its state; ``Callback.on_trial_recover``
    exists (a preempted attempt ends through it)."""
    import signal

    from ray import tune

    from trainables.training import trial_processes
    from trainables.training.preemption import PreemptibleTrainable

    registry = trial_processes.start_registry()
    seen: list[tuple] = []

    class Look(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            found = trial_processes.lookup(registry, [trial.trial_id]).get(trial.trial_id)
            seen.append(((found.node_id, found.pid) if found else None, (result["node"], result["pid"])))
            if len(seen) == 2:  # what interrupt.GracefulStop does when it stops Tune
                os.kill(os.getpid(), signal.SIGUSR1)

    def reports_its_process(config: dict) -> None:
        _reports_its_process(config)

    reports_its_process.__mixins__ = (PreemptibleTrainable,)
    with member("Tune's SIGUSR1 stop, train_func.__mixins__"):
        tuner = tune.Tuner(reports_its_process, param_space={},
                           run_config=tune.RunConfig(name="job-end", storage_path=str(tmp_path), callbacks=[Look()]))
        results = tuner.fit()
        assert seen and all(found == reported for found, reported in seen), seen
        assert len(seen) == 2, "Tune did not stop on SIGUSR1"  # the trial reports 3 times when left alone
        assert results[0].metrics["iterations"] == 2 and list((tmp_path / "job-end").glob("experiment_state-*.json"))
        assert hasattr(tune.Callback, "on_trial_recover"), "tune.Callback.on_trial_recover moved"
