"""The quiet, live console of ``lic-search run``/``resume`` (a Ray Tune callback).

By default Ray Tune prints nothing of its own (``verbose=0``) and this callback shows one
compact view (:func:`search.monitor.progress.render`): redrawn in place in a terminal, and as plain
lines when stdout is not a terminal or ``CI`` is set: a status line every
:data:`PLAIN_PERIOD_S` seconds and one line per finished or errored trial. ``--verbose``
gives Ray's own output back (a box per trial start and result, a line per checkpoint)
and drops this view. The callback also keeps the driver record that ``lic-search status``
reads (:mod:`search.monitor.status`): written at start, a heartbeat while running, the outcome at
the end.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
from typing import Callable, Optional, TextIO

from ray import tune

from search.experiment import drivers
from search.experiment.store import ExperimentStore
from search.bootstrap import table_of
from search.monitor import progress, summary
from search.monitor.meter import PLAIN_PERIOD_S, interactive
from search.space import SearchSpec
from search.tracking import run_names
from search.tracking.trial_logger import error_summary
from trainables import metrics as M

REDRAW_PERIOD_S = 1.0  # a terminal: redraw at most this often
_settings = {"verbose": False}


def configure(verbose: bool) -> None:
    """Set by ``run``/``resume`` from ``--verbose`` before Ray starts and the Tuner is built.

    Quiet (the default): Ray Tune's old, silent-at-verbose-0 reporter instead of its new output
    engine (whose experiment box prints even at verbosity 0), no trial processes' log lines on
    the driver (``ray.init(log_to_driver=False)``) and no Ray tracebacks of failed trials (errors
    reach the user once, through :meth:`LiveConsole.on_trial_error`). Known third-party warnings are
    filtered at the CLI entry (:func:`search.cli.quiet_known_warnings`)."""
    _settings["verbose"] = bool(verbose)
    if verbose:
        return

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import optuna  # (every search imports it with Ray's OptunaSearch; its INFO lines announce each new study)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A failed trial's traceback: LiveConsole.on_trial_error says it once, in one line with the file to read.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)


#: What a Ray log line means for the user, by a piece of its first line (quiet console, :class:`OneLineRayLog`).
RAY_MEANINGS = (
    ("Saving experiment state to storage", "the search's saved state may lag until the next save; the final one "
                                           "is checked"),
    ("Experiment state snapshotting failed", "the search's saved state may lag; the final one is checked"),
    ("Last sync command failed", "an upload of the search's state failed; the next save uploads it again"),
    # (Ray says it for errored trials: resuming retries them only from a checkpoint that loads, which the summary
    # below tells apart)
    ("Trials did not complete", "some trials errored: the summary below names them and says whether resuming "
                                "can retry them"),
)


class OneLineRayLog(logging.Formatter):
    """The quiet console's form of a Ray log record: one line, what it means, no traceback
    (``--verbose`` keeps Ray's own text)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().strip()
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        first = lines[0] if lines else ""
        error = ""
        if record.exc_info and record.exc_info[1] is not None:
            error = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        elif "Traceback (most recent call last)" in message:
            error = lines[-1]
        meaning = next((text for key, text in RAY_MEANINGS if key in first), "")
        first = first.rstrip(" :")
        error = f" ({error.splitlines()[0]})" if error else ""
        return f"lic-search: Ray {record.levelname.lower()}: {first}{error}" + (f" — {meaning}" if meaning else "")


def shorten_ray_logs() -> None:
    """Quiet console: every handler of Ray's logger writes :class:`OneLineRayLog` lines (after
    ``ray.init``, which sets its own formatter)."""
    if _settings["verbose"]:
        return
    for handler in logging.getLogger("ray").handlers:
        handler.setFormatter(OneLineRayLog())


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
RAYLET = "(raylet)"


def raylet_line(text: str, process: Callable[[int], Optional[tuple[str, str]]]) -> str:
    """The quiet console's form of a line Ray's raylet sends the driver (printed by Ray itself, colours and ids
    included): one plain line naming the trial whose process it is (``process(pid)``: trial and role, or None)
    and what happens next."""
    message = " ".join(_COLOUR.sub("", text).split(RAYLET, 1)[-1].split())
    pid = re.search(r"Worker PID: (\d+)", message)
    owner = process(int(pid.group(1))) if pid else None
    if pid is None and "worker died or was killed" not in message.lower():
        return f"lic-search: Ray: {message.split('. ')[0].rstrip('.')}"
    exit_type = re.search(r"Worker exit type: (\w+)", message)
    detail = re.search(r"Worker exit detail: (.+?\.)(?: |$)", message)
    cause = detail.group(1).rstrip(".") if detail else (exit_type.group(1) if exit_type else "unexpectedly")
    if owner is None:
        where = f" (pid {pid.group(1)})" if pid else ""
        return (f"lic-search: Ray: a worker process{where} died: {cause} — Ray retries what it ran; a trial whose "
                "process it was continues from its last checkpoint (a retry under resources.max_failures)")
    trial, role = owner
    return (f"lic-search: Ray: trial {trial}'s {role} (pid {pid.group(1)}) died: {cause} — the trial's attempt "
            "ends and it continues from its last checkpoint (a retry counted against resources.max_failures; "
            "Ray Train restarts a worker group that was still starting)")


class RayletLines:
    """Stdout of the quiet console: what Ray's raylet sends the driver becomes :func:`raylet_line`; the rest
    passes as it is. (Ray prints those messages itself to ``sys.stdout``: there is no logger to format.)"""

    def __init__(self, stream: TextIO, process: Callable[[int], Optional[tuple[str, str]]]):
        self.stream = stream
        self.process = process

    def write(self, text: str) -> int:
        if RAYLET in text:
            try:
                text = raylet_line(text, self.process)
            except Exception:  # noqa: BLE001  (never lose the message over naming it)
                text = _COLOUR.sub("", text)
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def name_raylet_lines(process: Callable[[int], Optional[tuple[str, str]]]) -> None:
    """Quiet console: Ray's raylet lines on stdout as :func:`raylet_line` (``--verbose`` keeps Ray's own)."""
    if _settings["verbose"]:
        return
    if isinstance(sys.stdout, RayletLines):
        sys.stdout.process = process  # a later phase (a ladder's fine-tunes) brings its own registry
        return
    sys.stdout = RayletLines(sys.stdout, process)  # type: ignore[assignment]


def ray_verbosity() -> int:
    """Ray Tune's ``RunConfig.verbose``: its own boxes only with ``--verbose``."""
    return 1 if _settings["verbose"] else 0


def callbacks(spec: SearchSpec, store: ExperimentStore, configs: Optional[list[dict]] = None,
              settled: Optional[dict[str, str]] = None) -> list:
    """The callbacks the Tuner gets from this module: the live view, or (``--verbose``) only the driver record.
    ``configs``: the explicit trials of a ladder's fine-tune phase (default: the space's); ``settled``: its settle
    rule's record of the trials whose rate settled (``SettleStopper.reasons``, filled as they do)."""
    return [LiveConsole(spec, store, show=not _settings["verbose"], configs=configs, settled=settled)]


class LiveConsole(tune.Callback):
    """Counts, running trials, best per rate point, elapsed, device-hours and ETA, as the search runs."""

    def __init__(self, spec: SearchSpec, store: ExperimentStore, show: bool = True,
                 stream: Optional[TextIO] = None, configs: Optional[list[dict]] = None,
                 settled: Optional[dict[str, str]] = None):
        resources = spec.file.resources
        gpus = resources.gpus_per_trial > 0
        self.store_location = store.location
        self.name = spec.name
        self.expected = spec.trial_count() if configs is None else len(configs)
        self.device = "GPU" if gpus else "CPU"
        self.per_trial = resources.gpus_per_trial if gpus else resources.cpus_per_trial
        self.workers = resources.workers_per_trial
        self.ranking = summary.Ranking.of(spec.file.search.model_dump(mode="json"))
        self.keys = run_names.column_keys(spec.configs() if configs is None else configs, spec.variants)
        if configs is not None and run_names.INIT_FROM_KEY not in self.keys:  # a ladder's fine-tunes: say from where
            self.keys.append(run_names.INIT_FROM_KEY)
        self.variants = spec.variants
        self.show = show
        self.settled = settled if settled is not None else {}  # a fine-tune phase's trials whose rate settled
        self._stream = stream
        self._reset()

    def _reset(self) -> None:
        self._started: Optional[float] = None  # set by the first hook this process runs (see _begin)
        self._last_draw = 0.0
        self._last_beat = 0.0
        self._drawn = 0  # lines of the last in-place redraw
        self._reported: set[str] = set()
        self._scored: dict[str, dict] = {}  # each trial's latest evaluation (notices carry no scores)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_stream", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("settled", {})  # pickled before the settle rule
        self._stream = None
        self._reset()

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def store(self) -> ExperimentStore:
        return ExperimentStore(self.store_location)

    # ------------------------------------------------------------------ the view
    def view(self, trials) -> progress.SearchView:
        views = []
        for trial in trials:
            result = trial.last_result or {}
            budget = progress.budget_of(trial.config)
            scored = self._scored.get(trial.trial_id, {}) if M.is_notice(result) else result
            views.append(progress.TrialView(
                trial.trial_id, progress.trial_state(trial.status, result, budget, trial.trial_id in self.settled),
                int(result.get("iterations", 0) or 0), budget, trial.config, progress.numeric(scored),
                float(result.get("time_total_s", 0.0) or 0.0), table_of(scored)))
        return progress.SearchView(self.name, self.store_location, views, self.expected,
                                   time.time() - (self._started or time.time()),
                                   self.device, self.per_trial, self.ranking, self.keys, self.variants,
                                   workers=getattr(self, "workers", 1))  # a console pickled before workers existed

    def _print(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def _draw(self, trials, force: bool = False) -> None:
        now = time.time()
        tty = interactive(self.stream)
        if not force and now - self._last_draw < (REDRAW_PERIOD_S if tty else PLAIN_PERIOD_S):
            return
        self._last_draw = now
        view = self.view(trials)
        if tty:
            width = shutil.get_terminal_size((120, 40)).columns - 1  # a wrapped line would spoil the redraw
            lines = [line[:width] for line in progress.render(view, max_running=8)]
            clear = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
            self.stream.write(clear + "\n".join(lines) + "\n")
            self.stream.flush()
            self._drawn = len(lines)
        else:
            self._print([progress.header(view)])

    def _event(self, line: str) -> None:
        """A line that stays (finished or errored trial): above the redrawn view in a terminal."""
        if interactive(self.stream) and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0
        self._print([line])

    # --------------------------------------------------------------------- hooks
    def _begin(self) -> None:
        """Once per driver process: record it for ``status`` and say where to follow. (Ray calls
        ``setup`` only for a new search, not a restored one, so every hook comes through here.)"""
        if self._started is not None:
            return
        self._started = time.time()
        drivers.record_driver(self.store)
        if self.show:
            self._print([f"search {self.name!r}: {self.expected} trials, results in {self.store_location} "
                         f"(follow from another terminal: lic-search status {self.store_location})"])

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self._begin()

    def on_step_begin(self, iteration, trials, **info):
        self._begin()

    def on_step_end(self, iteration, trials, **info):
        self._begin()
        now = time.time()
        if now - self._last_beat >= drivers.HEARTBEAT_S:
            self._last_beat = now
            drivers.heartbeat(self.store)
        if self.show:
            self._draw(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._begin()
        if not M.is_notice(result):
            self._scored[trial.trial_id] = result
            return
        if not self.show:
            return
        at = f"iteration {int(result.get(M.ITERATIONS, 0))}"
        if result.get(M.NOTICE) == M.NOTICE_PREEMPTED:
            self._event(f"{trial.trial_id} got SIGTERM: checkpointed at {at}; it continues from there "
                        "(a preemption, not a failure)")
        elif result.get(M.DAMAGED_CHECKPOINTS):
            self._event(f"{trial.trial_id} restored at {at}, skipping damaged checkpoints: "
                        + "; ".join(str(result[M.DAMAGED_CHECKPOINTS]).splitlines()))
        if result.get(M.UNVERIFIED_CHECKPOINT):
            self._event(f"{trial.trial_id} restored at {at} from {result[M.UNVERIFIED_CHECKPOINT]}, which has no "
                        "checksums to verify (written before they were recorded)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._begin()
        if not self.show or trial.trial_id in self._reported:
            return
        self._reported.add(trial.trial_id)
        result = trial.last_result or {}
        budget = progress.budget_of(trial.config)
        state = progress.trial_state("TERMINATED", result, budget, trial.trial_id in self.settled)
        done = len(self._reported)
        m = result
        scores = (f"rd_loss {progress._num(m.get('eval/rd_loss'))}, bpp {progress._num(m.get('eval/bpp'))}, "
                  f"PSNR {progress._db(m.get('eval/psnr'))}")
        if state == "errored":
            scores = f"diverged: {result.get('diverged_reason', 'non-finite loss')}"
        self._event(f"[{done}/{self.expected}] {trial.trial_id} {state} at {int(m.get('iterations', 0) or 0)}/{budget} "
                    f"it: {scores} — {self._name(trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._begin()
        if not self.show or trial.trial_id in self._reported:
            return
        self._reported.add(trial.trial_id)

        self._event(f"[{len(self._reported)}/{self.expected}] {trial.trial_id} errored: {error_summary(trial)} — "
                    f"{self._name(trial)} (details: {getattr(trial, 'path', '')})")

    def _name(self, trial) -> str:
        """The trial's readable name: its variant label first in a labelled space, then what varies."""
        return run_names.trial_name(trial.config, self.keys, self.variants.label_of(trial.config))

    def on_experiment_end(self, trials, **info):
        self._begin()
        unfinished = any(t.status in ("PENDING", "RUNNING", "PAUSED") for t in trials)
        drivers.record_end(self.store, "STOPPED" if unfinished else "FINISHED")  # STOPPED: e.g. Ctrl-C
        if self.show:
            self._draw(trials, force=True)


__all__ = ["configure", "shorten_ray_logs", "name_raylet_lines", "raylet_line", "RayletLines", "OneLineRayLog", "ray_verbosity", "callbacks", "LiveConsole",
           "interactive"]
