"""Every private Ray member lic-search's driver uses, in one place (the adapter of Ray's internals).

Each one is here because no public Ray API gives the same; each comment says which public API would
replace it. tests/test_library_contract.py checks the behaviour each one is used for (not its source
text) and names the member and the Ray version when an upgrade changes it. docs/architecture.md ("Private
library members") lists these with the other libraries' (one MLflow schema: search/tracking/view.py;
one Ray hook inside the trial: trainables/training/preemption.py, which may not import search).
"""

from __future__ import annotations

from typing import Any

#: Ray Tune's experiment-state files (``TuneController.CKPT_FILE_TMPL``): ``status`` and ``resume`` read the
#: trials' statuses in them. Public replacement: ``ExperimentAnalysis``/``ResultGrid`` give the trials but
#: unpickle the whole state and raise on a folder caught mid-write; a status-only reader API would do.
EXPERIMENT_STATE_PATTERN = "experiment_state-*.json"

#: The logger of Ray's token-authentication notice, quietened by the default console. Public replacement:
#: a ``ray.init`` option to silence it (there is only ``logging_level``, which would hide Ray's warnings too;
#: setting ``RAY_AUTH_MODE=token`` once Ray is imported leaves its cached config at "disabled": no token is sent).
AUTH_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"

def experiment_location(storage: Any) -> tuple[Any, str]:
    """(pyarrow filesystem, path) of a trial's or the driver's experiment folder, from Ray's
    ``StorageContext`` (``ray.train._internal.storage``: ``storage_filesystem``, ``experiment_fs_path``).
    Public replacement: a ``Trial``/``TuneController`` accessor of the experiment folder."""
    return storage.storage_filesystem, storage.experiment_fs_path


def staging_folder(storage: Any) -> str:
    """The local folder where Ray stages the experiment state before uploading it
    (``StorageContext.experiment_driver_staging_path``). Public replacement: none; see state_save."""
    return storage.experiment_driver_staging_path


def wait_for_upload(storage: Any) -> None:
    """Block until the experiment-state upload in flight ended (``StorageContext.syncer.wait()``); raises its error.
    Public replacement: ordering of saves and uploads inside Ray (ray-project/ray#41362)."""
    storage.syncer.wait()


def experiment_checkpoint_manager() -> type:
    """Ray's experiment-state saver (``ray.tune.execution.experiment_state._ExperimentCheckpointManager``), whose
    ``sync_up_experiment_state(save_fn, force, wait)`` search/tuning/state_save.py wraps so each save waits for
    the previous upload. Public replacement: a save that waits for its upload (ray-project/ray#41362)."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    return _ExperimentCheckpointManager


def manager_storage(manager: Any) -> Any:
    """The ``StorageContext`` of an experiment-state saver (``_ExperimentCheckpointManager._storage``)."""
    return manager._storage


def restored_run_config(tuner: Any) -> Any:
    """The ``RunConfig`` a ``Tuner.restore`` unpickled (``Tuner._local_tuner.get_run_config()``), whose callbacks
    resume swaps for this driver's. Public replacement: a ``run_config=`` argument of ``Tuner.restore``
    (it takes ``param_space`` and ``trainable`` only)."""
    return tuner._local_tuner.get_run_config()


__all__ = ["EXPERIMENT_STATE_PATTERN", "AUTH_TOKEN_LOGGER", "experiment_location", "staging_folder", "wait_for_upload",
           "experiment_checkpoint_manager", "manager_storage", "restored_run_config"]
