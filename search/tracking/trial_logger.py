"""The Tune callback that records trials in MLflow: one child run per trial under the search's parent run.

Logging happens on the Ray driver through a Tune callback, so trials on other nodes need no
access to the tracking server. The callback is idempotent across ``lic-search resume``: a
trial's child run is found again by its ``lic_search.trial_id`` tag and its metric history
continues where MLflow has it (steps already logged are not logged twice).

PBT branches: an exploit restarts a trial from another trial's checkpoint (at that trial's
iteration) with a perturbed config. The logger sees this when the trial starts again: its
checkpoint was written by another trial, or its config differs from the branch MLflow has.
Then it opens a new *generation*: tags ``lic_search.pbt.branch``/``.generation``, metric
``pbt/generation`` at every step, and the history is logged again from the cloned iteration
on. A trial restarting from its own checkpoint with an unchanged config (a resume, a retry) is
the same branch, so steps MLflow already has are still skipped. Hyperparameters that differ
from the run's (immutable) params are shown as tags ``lic_search.hparam.<key>`` and, when
numeric, as stepped metrics ``hparams/<key>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from ray import tune

from search.experiment import skipped
from search.space.sections import DEFAULT_STRATIFY_BY
from search.space.strata import auxt_enabled, family_key, stratum_label, stratum_of
from search.space.variants import Variants
from search.tracking import journal as J
from search.tracking import names as T
from search.tracking import run_names
from search.tracking.client import client_for, ensure_experiment
from search.tracking.filters import exact, tags_filter
from search.tracking.sender import Sender
from trainables import metrics as M
from trainables.config import flatten


def auxt_tag(config: dict) -> str:
    """The ``lic_search.auxt`` tag: ``off``, or where AuxT sits (``both``, ``analysis``, ``synthesis``)."""
    return config.get("model", {}).get("auxt", {}).get("placement", "both") if auxt_enabled(config) else "off"


def _param_value(value: Any) -> str:
    return str(value)[:6000]


def _param_strings(config: dict) -> dict[str, str]:
    """A config as MLflow params hold it: flattened, every value ``str``-ed."""
    return {key: _param_value(value) for key, value in flatten(config).items()}


def _signature(params: dict[str, str]) -> str:
    return hashlib.sha1(json.dumps(sorted(params.items())).encode()).hexdigest()[:16]


@dataclass
class Branch:
    """The PBT branch a trial's run is recording: generation 0 is the trial's own start."""

    generation: int = 0
    cloned_from: Optional[str] = None  # trial id whose checkpoint the branch started from
    at_iteration: int = 0  # iteration of that checkpoint: the branch's history starts after it
    checkpoint: Optional[str] = None
    signature: str = ""  # of the config the branch trains with (see _signature)


@dataclass(frozen=True)
class Origin:
    """The checkpoint a (re)started trial resumes from."""

    trial_id: str
    iteration: int
    path: str


def _checkpoint_origin(trial) -> Optional[Origin]:
    """Where the trial's next start restores from: its own checkpoint or (after a PBT exploit) another's."""
    latest = getattr(trial, "latest_checkpoint_result", None)
    checkpoint = getattr(latest, "checkpoint", None)
    if checkpoint is None:
        return None
    metrics = getattr(latest, "metrics", None) or {}
    path = str(getattr(checkpoint, "path", ""))
    writer = metrics.get("trial_id")
    if not writer:  # older results: tell by the folder the checkpoint lies in
        own = str(getattr(trial, "path", "") or "")
        writer = trial.trial_id if own and path.startswith(own) else "another trial"
    return Origin(str(writer), int(metrics.get(M.ITERATIONS, 0) or 0), path)


class MlflowTrialLogger(tune.Callback):
    """Ray Tune callback writing each trial to its own child run.

    What to record is decided here; the records go to a :class:`search.tracking.journal.Journal` and a
    :class:`search.tracking.sender.Sender` ships them. Given a durable journal (the experiment
    folder's) and a started sender, no hook waits for MLflow. Without one (tests, direct use)
    the journal is in memory and every hook ships its records before it returns.
    """

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: Optional[str],
                 journal: Optional[J.Journal] = None, sender=None, recover_from_mlflow: Optional[bool] = None,
                 name_keys: Optional[list[str]] = None, variants: Optional[Variants] = None,
                 stratify_by: Optional[list[str]] = None, run_params: Optional[dict[str, str]] = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        # What tells this search's trials apart (search.tracking.run_names.column_keys of the space): run names.
        self.name_keys = list(name_keys or (run_names.LAMBDA_KEY, run_names.AUXT_KEY))
        self.variants = variants or Variants()  # the space's labelled variants: run names and the variant tag
        # The search's rate-point keys: each run's rate point is a tag the MLflow UI groups by.
        self.stratify_by = list(DEFAULT_STRATIFY_BY if stratify_by is None else stratify_by)
        # Params of every trial run beside its config's (the space's resources.*): not hyperparameters,
        # so left out where PBT branches compare params with configs.
        self.run_params = dict(run_params or {})
        self._client = None
        self.ladder_role: Optional[str] = None  # set by a ladder search per phase (tag lic_search.ladder)
        self.ladder_plan = None  # the fine-tune phase's LadderPlan: which start point a warm start comes from
        self.stop_reasons: dict[str, str] = {}  # trial id -> why a stopper (the ladder's settle rule) ended it
        self._attach(journal, sender, recover_from_mlflow)
        self._reset()

    def _attach(self, journal: Optional[J.Journal], sender, recover_from_mlflow: Optional[bool]) -> None:

        self._journal = journal or J.Journal()
        self._sender = sender or Sender(self._journal, self.tracking_uri, self.experiment, self.parent_run_id)
        self._direct = sender is None  # ship synchronously at the end of every hook
        # Runs MLflow has that the journal does not know: searches recorded before the journal existed.
        self._recover_from_mlflow = (not self._journal.durable) if recover_from_mlflow is None else recover_from_mlflow

    def _reset(self) -> None:
        self._last_step: dict[str, int] = {}
        self._last_iteration: dict[str, int] = {}
        self._branches: dict[str, Branch] = {}
        self._initial: dict[str, dict[str, str]] = {}  # the run's params: the trial's first config

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_client", "_journal", "_sender", "_direct", "_recover_from_mlflow",
                    "_last_step", "_last_iteration", "_branches", "_initial"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._client = None
        self._attach(None, None, None)
        self._reset()

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    @property
    def _runs(self) -> dict[str, str]:
        """Trial id -> MLflow run id, for the runs the sender has created or found so far."""
        return self._journal.run_ids

    def run_ids(self) -> dict[str, str]:
        """Trial id -> MLflow run id of the runs created or found so far."""
        return dict(self._runs)

    def _shipped(self) -> None:
        if self._direct:
            self._sender.ship_pending()

    # ------------------------------------------------------------ run lookup
    def _open(self, trial) -> None:
        """Know the trial's run: already seen, in the journal (a resumed search), in MLflow (a search
        recorded before the journal existed), or else record that it is to be created."""
        trial_id = trial.trial_id
        if trial_id in self._initial:
            return
        records = list(self._journal.trial_records(trial_id))
        created = next((r for r in records if r["op"] == J.CREATE_RUN), None)
        if created is not None:
            self._initial[trial_id] = self._config_params(created["params"])
            branch = _journal_branch(records, self._initial[trial_id])
            self._branches[trial_id] = branch
            self._last_step[trial_id] = _journal_last_step(records, branch)
            self._journal.append(J.STATUS, trial_id, status="RUNNING", time=_now())
        elif not (self._recover_from_mlflow and self._found_in_mlflow(trial)):
            self._record_creation(trial)

    def _found_in_mlflow(self, trial) -> bool:
        trial_id = trial.trial_id
        experiment_id = ensure_experiment(self.client, self.experiment)
        tags = {T.TAG_TRIAL_ID: trial_id, T.TAG_PARENT: self.parent_run_id}
        found = exact(self.client.search_runs([experiment_id], filter_string=tags_filter(tags), max_results=50), tags)
        if not found:
            return False
        run = found[0]
        run_id = run.info.run_id
        self._journal.remember_run(trial_id, run_id)
        self._initial[trial_id] = self._config_params(run.data.params)
        branch = self._recorded_branch(run)
        self._branches[trial_id] = branch
        self._last_step[trial_id] = self._branch_last_step(run_id, branch)
        self._journal.append(J.STATUS, trial_id, status="RUNNING", time=_now())
        return True

    def _recorded_branch(self, run) -> Branch:
        text = run.data.tags.get(T.TAG_BRANCH)
        if text:
            return Branch(**json.loads(text))
        return Branch(signature=_signature(self._config_params(run.data.params)))

    def _config_params(self, params: dict[str, str]) -> dict[str, str]:
        return {key: value for key, value in params.items() if key not in self.run_params}

    def _branch_last_step(self, run_id: str, branch: Branch) -> int:
        """The last step MLflow has of the current branch (steps of earlier branches do not count)."""
        if branch.generation == 0:
            history = self.client.get_metric_history(run_id, M.ITERATIONS)
            return max((int(m.step) for m in history), default=0)
        history = self.client.get_metric_history(run_id, T.METRIC_GENERATION)
        mine = [int(m.step) for m in history if int(m.value) == branch.generation]
        return max(mine + [branch.at_iteration])

    def _record_creation(self, trial) -> None:
        """The trial's run, to be created by the sender (the parent run id is filled in there)."""
        config = trial.config
        tags = {
            T.TAG_ROLE: T.ROLE_TRIAL,
            T.TAG_TRIAL_ID: trial.trial_id,
            T.TAG_BACKBONE: str(config.get("model", {}).get("backbone", "")),
            T.TAG_AUXT: auxt_tag(config),
            T.TAG_STATUS: T.STATUS_RUNNING,
            T.TAG_FAMILY: family_key(config),
            T.TAG_RATE_POINT: stratum_label(stratum_of(config, self.stratify_by)),
        }
        variant = self.variants.label_of(config)
        tags[T.TAG_FAMILY_NAME] = run_names.family_name(config, self.name_keys, variant)
        if variant:
            tags[T.TAG_VARIANT] = variant
        run_name = run_names.trial_name(config, self.name_keys, variant)
        if self.ladder_role:
            tags[T.TAG_LADDER] = self.ladder_role
        init_from = config.get("model", {}).get("init_from")
        origin = self.ladder_plan.origin(init_from) if init_from and self.ladder_plan else None
        if init_from:
            tags[T.TAG_INIT_FROM] = json.dumps({"checkpoint": init_from} | ({
                "start_trial": origin.start_trial,
                "start_run": origin.start_run or self._runs.get(origin.start_trial)} if origin else {}))
        if origin:  # a ladder's fine-tuned rate point belongs to its start point's family
            tags[T.TAG_FAMILY], tags[T.TAG_FAMILY_NAME] = origin.family, origin.name
            run_name += f"{run_names.SEPARATOR}fine-tuned"
            self._link_child(origin.start_trial, trial.trial_id)
        params = _param_strings(config)
        self._journal.append(J.CREATE_RUN, trial.trial_id, run_name=run_name,
                             tags=tags, params=params | self.run_params,
                             text=yaml.safe_dump(config, sort_keys=False), artifact=T.ARTIFACT_TRIAL_CONFIG)
        self._initial[trial.trial_id] = params
        self._branches[trial.trial_id] = Branch(signature=_signature(params))
        self._last_step[trial.trial_id] = 0

    def _link_child(self, start: str, child: str) -> None:
        """Add a fine-tuned trial to its start-point run's ``lic_search.ladder.children`` (trial ids, in order)."""
        children: list[str] = []
        for record in self._journal.trial_records(start):
            children = json.loads((record.get("tags") or {}).get(T.TAG_LADDER_CHILDREN, json.dumps(children)))
        if child not in children:
            self._journal.append(J.BATCH, start, tags={T.TAG_LADDER_CHILDREN: json.dumps(children + [child])})

    # ------------------------------------------------------------ PBT branches
    def _follow_branch(self, trial) -> None:
        """Open a new generation when the trial starts on another trial's weights or another config."""
        self._open(trial)
        current = self._branches[trial.trial_id]
        origin = _checkpoint_origin(trial)
        signature = _signature(_param_strings(trial.config))
        foreign = origin is not None and origin.trial_id != trial.trial_id
        if foreign and (origin.trial_id, origin.iteration, origin.path) == (
                current.cloned_from, current.at_iteration, current.checkpoint) and signature == current.signature:
            return  # restarted before the branch's first result (e.g. a resume): the same branch
        if not foreign and signature == current.signature:
            return  # its own checkpoint, its own config: a resume or a retry of the same branch
        branch = Branch(generation=current.generation + 1,
                        cloned_from=origin.trial_id if origin else None,
                        at_iteration=origin.iteration if origin else 0,
                        checkpoint=origin.path if origin else None, signature=signature)
        self._branches[trial.trial_id] = branch
        self._last_step[trial.trial_id] = branch.at_iteration  # log the new branch from the cloned iteration on
        tags = {T.TAG_BRANCH: json.dumps(asdict(branch)), T.TAG_GENERATION: str(branch.generation)}
        for key, value in self._changed(trial).items():
            tags[T.TAG_HPARAM_PREFIX + key] = value[:5000]
        self._journal.append(J.BATCH, trial.trial_id, tags=tags)

    def _changed(self, trial) -> dict[str, str]:
        """Hyperparameters whose current value differs from the run's params (what PBT changed)."""
        initial = self._initial.get(trial.trial_id, {})
        return {k: v for k, v in _param_strings(trial.config).items() if initial.get(k) != v}

    def _branch_metrics(self, trial, step: int, now: int) -> list[list]:
        branch = self._branches.get(trial.trial_id)
        if branch is None or branch.generation == 0:
            return []
        values = [[T.METRIC_GENERATION, float(branch.generation), now, step]]
        flat = flatten(trial.config)
        for key in self._changed(trial):
            value = flat.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.append([T.METRIC_HPARAM_PREFIX + key, float(value), now, step])
        return values

    # ----------------------------------------------------------------- hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._follow_branch(trial)
        self._shipped()

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._open(trial)
        self._shipped()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._open(trial)
        if result.get(M.DIVERGED):
            self._shipped()
            return  # NaN scores, not measurements: on_trial_complete records the reason
        if M.is_notice(result):  # a checkpoint or restore between evaluations: tags only, no history points
            self._record_notice(trial, result)
            return
        step = int(result.get(M.ITERATIONS, 0))
        self._last_iteration[trial.trial_id] = step
        if step <= self._last_step.get(trial.trial_id, 0):
            self._shipped()
            return  # already recorded before a resume: the restored trial recomputed it exactly
        now = _now()
        values = [[key, float(value), now, step] for key, value in result.items()
                  if (key == M.ITERATIONS or key.startswith(("eval/", "train/", "data/", "init/")))
                  and isinstance(value, (int, float)) and not isinstance(value, bool)]
        tags = {T.TAG_NODE: str(result[M.NODE_ID])} if M.NODE_ID in result else {}
        if result.get(M.INIT_KEPT_KEYS):
            tags[T.TAG_INIT_KEPT] = str(result[M.INIT_KEPT_KEYS])[:5000]
        files = result.get(M.SKIPPED_FILES)  # the unreadable training files, when the list grew
        if files and self._journal.store is not None:
            skipped.record(self._journal.store, trial.trial_id, str(files))
        self._journal.append(J.BATCH, trial.trial_id, metrics=values + self._branch_metrics(trial, step, now),
                             tags=tags, **({"text": str(files), "artifact": skipped.ARTIFACT} if files else {}))
        if result.get(M.EVAL_IMAGES):  # each image's values: the run's artifact per_image/step_<iterations>.json
            self._journal.append(J.BATCH, trial.trial_id, text=str(result[M.EVAL_IMAGES]),
                                 artifact=M.per_image_artifact(step))
        self._last_step[trial.trial_id] = step
        self._shipped()

    def _record_notice(self, trial, result: dict) -> None:
        tags = {}
        where = f"iteration {int(result.get(M.ITERATIONS, 0))} on node {result.get(M.NODE_ID, '?')}"
        if result.get(M.DAMAGED_CHECKPOINTS):
            tags[T.TAG_DAMAGED_CHECKPOINTS] = str(result[M.DAMAGED_CHECKPOINTS])[:5000]
        if result.get(M.UNVERIFIED_CHECKPOINT):
            tags[T.TAG_UNVERIFIED_CHECKPOINT] = str(result[M.UNVERIFIED_CHECKPOINT])
        if result.get(M.NOTICE) == M.NOTICE_PREEMPTED:
            tags[T.TAG_PREEMPTED] = where
        if tags:
            self._journal.append(J.BATCH, trial.trial_id, tags=tags)
        self._shipped()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._open(trial)
        if (trial.last_result or {}).get(M.DIVERGED):  # ended by a non-finite loss: errored, never retried
            self._finish(trial, T.STATUS_ERRORED, str(trial.last_result.get(M.DIVERGED_REASON)), "FAILED")
            return
        budget = int(trial.config.get("schedule", {}).get("iterations", 0))
        reached = self._last_iteration.get(trial.trial_id) or int((trial.last_result or {}).get(M.ITERATIONS, 0))
        if trial.trial_id in self.stop_reasons:  # its rate settled: the budget was only a cap
            status, detail = T.STATUS_COMPLETED, f"{self.stop_reasons[trial.trial_id]} (cap {budget})"
        elif reached and reached < budget:
            status, detail = T.STATUS_STOPPED, f"stopped by the scheduler at iteration {reached} of {budget}"
        else:
            status, detail = T.STATUS_COMPLETED, f"completed {reached} iterations"
        self._finish(trial, status, detail, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._open(trial)
        self._finish(trial, T.STATUS_ERRORED, error_summary(trial), "FAILED")

    def _finish(self, trial, status: str, detail: str, run_status: str) -> None:
        self._journal.append(J.BATCH, trial.trial_id, tags={T.TAG_STATUS: status, T.TAG_STATUS_DETAIL: detail[:5000]})
        self._journal.append(J.STATUS, trial.trial_id, status=run_status, time=_now())
        self._shipped()


def _now() -> int:
    return int(time.time() * 1000)


def _journal_branch(records: list[dict], params: dict[str, str]) -> Branch:
    """The trial's current PBT branch, as its journaled tags last recorded it."""
    text = None
    for record in records:
        text = (record.get("tags") or {}).get(T.TAG_BRANCH, text)
    return Branch(**json.loads(text)) if text else Branch(signature=_signature(params))


def _journal_last_step(records: list[dict], branch: Branch) -> int:
    """Like :meth:`MlflowTrialLogger._branch_last_step`, over the journal instead of MLflow."""
    points = [m for record in records if record["op"] == J.BATCH for m in record.get("metrics") or []]
    if branch.generation == 0:
        return max((int(step) for key, _, _, step in points if key == M.ITERATIONS), default=0)
    mine = [int(step) for key, value, _, step in points
            if key == T.METRIC_GENERATION and int(value) == branch.generation]
    return max(mine + [branch.at_iteration])


def error_summary(trial) -> str:
    """The last line of the trial's error (e.g. 'TrainingDivergedError: non-finite loss at ...')."""
    text = ""
    error_file = getattr(trial, "error_file", None)
    if error_file and os.path.exists(error_file):
        text = Path(error_file).read_text()
    if not text:
        text = str(getattr(trial, "error_msg", "") or "errored")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line
    return lines[-1] if lines else "errored"
