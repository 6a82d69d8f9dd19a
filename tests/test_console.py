"""The console: the live view on fake trials (fast), and the quickstart as a person runs it (a
subprocess, stdout not a terminal; slow): what it prints, and what MLflow holds afterwards
(readable run and family names, the summary on the parent run)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from search.tracking import names as T
from tests.conftest import REPO, SAMPLES


def quickstart_cut(folder: Path, name: str = "quickstart", num_samples: int = 3, iterations: int = 8,
                   eval_every: int = 0) -> Path:
    """spaces/quickstart.yaml with its budget cut (tiny widths, a few iterations), data paths absolute."""
    space = yaml.safe_load((REPO / "spaces" / "quickstart.yaml").read_text())
    space["name"] = name
    space["trial"]["model"].update({"N": 8, "M": 8})
    space["trial"]["data"].update({"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval"),
                                   "batch_size": 2, "max_eval_images": 2})
    space["trial"]["schedule"].update({"iterations": iterations, "eval_every": eval_every or iterations // 2})
    space["search"]["num_samples"] = num_samples
    space["scheduler"]["grace_period"] = eval_every or iterations // 2
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def lic_search(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``lic-search ARGS`` in a child process, output captured (not a terminal), CI set as CI sets it."""
    env = {**os.environ, "CI": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The 9-trial quickstart (budget cut) run once through the CLI, default console."""
    folder = tmp_path_factory.mktemp("quickstart")
    space = quickstart_cut(folder)
    done = lic_search("run", str(space), cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"folder": folder, "uri": f"sqlite:///{folder / 'mlflow.db'}", "out": done.stdout, "err": done.stderr}


@pytest.mark.slow
def test_mlflow_trial_runs_are_named_by_lambda_auxt_and_what_varies(quickstart):
    from search.tracking.client import client_for
    from search.tracking.queries import select_search, trial_runs

    runs = trial_runs("quickstart", quickstart["uri"])
    assert len(runs) == 9
    names = [run.info.run_name for run in runs]
    assert all(name.startswith("λ=0.013 · auxt=") and " · λ_orth=" in name and " · lr=" in name for name in names)
    assert sum("auxt=off" in name for name in names) == 3 and sum("auxt=haar" in name for name in names) == 6
    assert all("λ_orth=n/a" in name for name in names if "auxt=off" in name)  # AuxT off: not applicable
    families = {run.data.tags[T.TAG_FAMILY]: run.data.tags[T.TAG_FAMILY_NAME] for run in runs}
    assert len(families) == 9  # lr is sampled per trial: every trial its own family ...
    for run in runs:  # ... named by what its trials share: the run name without λ
        assert run.data.tags[T.TAG_FAMILY_NAME] == run.info.run_name.split(" · ", 1)[1]

    parent = client_for(quickstart["uri"]).get_run(select_search("quickstart", quickstart["uri"]).parent_run_id)
    best = {k: v for k, v in parent.data.tags.items() if k.startswith(T.TAG_BEST_PREFIX)}
    assert list(best) == [T.TAG_BEST_PREFIX + "λ_0.013 distortion_mse"]
    assert next(iter(best.values())).startswith("λ=0.013 · auxt=")
    assert parent.data.metrics["best/λ_0.013 distortion_mse/eval/rd_loss"] > 0
    table = client_for(quickstart["uri"]).download_artifacts(parent.info.run_id, T.ARTIFACT_BEST_TABLE,
                                                             str(quickstart["folder"]))
    text = Path(table).read_text()
    assert ("| rate point | trial | eval/rd_loss | eval/bpp | eval/psnr | iterations | runner-up [95 %] | tied with "
            "| λ | auxt | λ_orth | lr |") in text  # the best's lead over the runner-up, with its interval
    assert "1000 resamples, seed 20261207" in text
    assert text.count("\n| λ=0.013, distortion=mse |") == 1
    experiment = client_for(quickstart["uri"]).get_experiment(parent.info.experiment_id)
    note = experiment.tags["mlflow.note.content"]  # the experiment's description in the UI
    assert parent.info.run_id in note and "| λ=0.013, distortion=mse |" in note and T.TAG_RATE_POINT in note


# ----------------------------------------------------------------------------- the console (part 1)
RAY_NOISE = ("╭", "Trial status", "Configuration for experiment", "Checkpoint successfully created",
             "(train_lic_indexed pid=", "View detailed results here")


@pytest.mark.slow
def test_quickstart_prints_a_few_plain_lines_and_ends_with_the_best_per_rate_point(quickstart):
    printed = (quickstart["out"] + quickstart["err"]).splitlines()
    assert len(printed) <= 60, "\n".join(printed)
    assert not [line for line in printed if any(noise in line for noise in RAY_NOISE)]
    assert "\x1b[" not in quickstart["out"]  # not a terminal: no redraws
    out = quickstart["out"].splitlines()
    assert out[0].startswith("search 'quickstart': 9 trials, results in ")
    finished = [line for line in out if line.startswith("[") and "/9] " in line]
    assert len(finished) == 9 and all(" λ=0.013 · auxt=" in line and "rd_loss " in line for line in finished)
    assert any(line.startswith("9 trials: ") and "CPU-hours" in line and "ETA" in line for line in out)
    tail = out[out.index("Best per rate point (by eval/rd_loss, min):"):]
    assert tail[1].startswith("best at λ=0.013, distortion=mse: eval/rd_loss = ") and " — λ=0.013 · auxt=" in tail[1]
    assert re.search(r"\(trial \w+\); (?:leads|tied with) λ=0.013 · auxt=.*[+-]\d+\.\d % \[", tail[1])  # vs runner-up
    assert tail[2].startswith("(runner-up differences in % of the best's eval/rd_loss, paired over the eval images")
    tail = tail[1:]
    assert not [line for line in out if line.startswith("Resume with")]  # finished, nothing errored: no resume
    assert tail[2].startswith("Progress:    lic-search status ")
    assert tail[3].startswith("Browse with: lic-search best quickstart")
    assert tail[3].endswith("lic-search ui quickstart --open")
    assert tail[4].startswith("MLflow UI:   http://127.0.0.1:5000/#/experiments/1/runs?"
                              "workflowType=machine_learning&viewStateShareKey=lic-search-")


@pytest.mark.slow
def test_verbose_gives_rays_own_output_back(tmp_path: Path):
    space = quickstart_cut(tmp_path, name="loud", num_samples=1, iterations=4)
    done = lic_search("run", str(space), "--verbose", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert "Trial status" in printed and "Checkpoint successfully created" in printed
    assert "(train_lic_indexed pid=" in printed  # the trial processes' own lines
    assert "/3] " not in printed and "search 'loud': 3 trials" not in printed  # no compact view
    assert "Best per rate point (by eval/rd_loss, min):" in done.stdout  # the summary stays


# ------------------------------------------------------------------------ the view on fake trials (fast)
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _trial(trial_id: str, status: str, lr: float, auxt: bool, iterations: int, rd_loss: float, seconds: float):
    config = {"model": {"auxt": {"enabled": auxt}}, "loss": {"lmbda": 0.013, "distortion": "mse"},
              "schedule": {"iterations": 100, "lr": lr}}
    result = {"iterations": iterations, "eval/rd_loss": rd_loss, "eval/bpp": 0.5, "eval/psnr": 30.0,
              "time_total_s": seconds} if iterations else {}
    return SimpleNamespace(trial_id=trial_id, status=status, config=config, last_result=result)


def _console(tmp_path: Path, stream) -> "LiveConsole":
    from search.experiment.store import ExperimentStore
    from search.monitor.console import LiveConsole
    from search.space import load_space

    return LiveConsole(load_space(quickstart_cut(tmp_path), check_data=False), ExperimentStore(tmp_path), stream=stream)


def test_view_counts_progress_best_device_hours_and_eta(tmp_path: Path, monkeypatch):
    from search.monitor.progress import render

    monkeypatch.setenv("CI", "")
    trials = [_trial("a", "RUNNING", 1e-3, True, 50, 2.0, 1800.0),
              _trial("b", "TERMINATED", 2e-3, False, 100, 1.5, 3600.0),
              _trial("c", "TERMINATED", 3e-3, True, 20, 3.0, 720.0), _trial("d", "PENDING", 4e-3, True, 0, 0, 0)]
    console = _console(tmp_path, io.StringIO())
    console._started = 0.0
    view = console.view(trials)
    view.elapsed = 3600.0
    assert view.counts() == {"pending": 6, "running": 1, "paused": 0, "completed": 1, "stopped": 1, "errored": 0}
    assert view.device_hours() == pytest.approx(1.7)  # (0.5 + 1 + 0.2) h x 1 CPU per trial
    assert view.eta() == pytest.approx(3600.0 * (1 - 2.5 / 9) / (2.5 / 9))  # 2 done + half of one, of 9
    lines = render(view)
    assert lines[0] == ("9 trials: 6 pending, 1 running, 1 completed, 1 stopped · elapsed 1h00m · 1.70 CPU-hours · "
                        "ETA 2h36m")
    assert lines[1].startswith("  a 50/100 it  rd_loss 2  bpp 0.5  PSNR 30.00  λ=0.013 · auxt=haar")
    assert lines[2].startswith("  best at λ=0.013, distortion=mse: eval/rd_loss = 1.5000 at 100 iterations")
    assert lines[2].endswith("auxt=off · λ_orth=n/a · lr=2e-3 (trial b)")


def test_a_multi_objective_view_shows_each_rate_points_pareto_front(tmp_path: Path, monkeypatch):
    from search.monitor import summary
    from search.monitor.progress import render

    monkeypatch.setenv("CI", "")
    trials = [_trial("a", "TERMINATED", 1e-3, True, 100, 2.0, 60.0), _trial("b", "TERMINATED", 2e-3, True, 100, 1.5, 60.0),
              _trial("c", "TERMINATED", 3e-3, True, 100, 3.0, 60.0)]
    for trial, bpp in zip(trials, (0.4, 0.6, 0.5)):  # c: worse than a on both rd_loss and bpp
        trial.last_result["eval/bpp"] = bpp
    view = _console(tmp_path, io.StringIO()).view(trials)
    view.ranking = summary.Ranking.of({"objectives": ["eval/rd_loss", "eval/bpp"]})
    lines = render(view)
    assert lines[1] == "  front at λ=0.013, distortion=mse: 2 trials"
    assert lines[2].startswith("    eval/rd_loss 1.5, eval/bpp 0.6 — ") and lines[2].endswith("(trial b)")
    assert lines[3].startswith("    eval/rd_loss 2, eval/bpp 0.4 — ") and lines[3].endswith("(trial a)")
    fronts = view.to_json()["pareto_fronts"]
    assert [[t["trial_id"] for t in f["trials"]] for f in fronts] == [["b", "a"]]
    assert fronts[0]["objectives"] == [["eval/rd_loss", "min"], ["eval/bpp", "min"]]


def test_console_redraws_in_a_terminal_and_prints_plain_lines_otherwise(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    trials = [_trial("a", "RUNNING", 1e-3, True, 50, 2.0, 60.0), _trial("b", "PENDING", 2e-3, True, 0, 0, 0)]
    terminal = _Terminal()
    console = _console(tmp_path, terminal)
    console.on_step_end(0, trials)
    console._last_draw = 0.0
    console.on_step_end(1, trials)
    drawn = terminal.getvalue()
    assert drawn.count("9 trials: 8 pending, 1 running") == 2 and "\x1b[3F\x1b[J" in drawn  # redrawn in place
    assert any((tmp_path / "drivers").glob("driver-*.json"))  # status can find the driver

    plain = io.StringIO()
    console = _console(tmp_path, plain)
    console.on_step_end(0, trials)
    console.on_step_end(1, trials)  # within the period: nothing more
    trials[0].status = "TERMINATED"
    trials[0].last_result["iterations"] = 100
    console.on_trial_complete(2, trials, trials[0])
    lines = plain.getvalue().splitlines()
    assert "\x1b[" not in plain.getvalue()
    assert lines[0].startswith("search 'quickstart': 9 trials, results in ")
    assert lines[1].startswith("9 trials: 8 pending, 1 running")
    assert lines[2].startswith("[1/9] a completed at 100/100 it: rd_loss 2, bpp 0.5, PSNR 30.00 — λ=0.013 · auxt=haar")
    assert len(lines) == 3


def test_an_errored_trial_is_one_line_with_its_error_and_where_to_read_more(tmp_path: Path):
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n")
    trial = _trial("a", "ERROR", 1e-3, True, 10, 2.0, 5.0)
    trial.error_file, trial.path = str(error_file), str(tmp_path / "a")
    plain = io.StringIO()
    console = _console(tmp_path, plain)
    console.on_trial_error(3, [trial], trial)
    console.on_trial_error(4, [trial], trial)  # Ray may report it again: said once
    lines = plain.getvalue().splitlines()
    assert lines[1:] == [f"[1/9] a errored: RuntimeError: CUDA out of memory — λ=0.013 · auxt=haar · λ_orth=0.1 · "
                         f"lr=1e-3 (details: {tmp_path / 'a'})"]


def test_the_quiet_console_keeps_optunas_new_study_lines_off():
    """Every Optuna search creates a study per grid point; its "[I ...] A new study created" lines are noise.

    Read as the records Optuna's logger lets through (its own handler keeps whichever stderr it first saw).
    The variables configure() sets are restored by conftest's ``restored_environment``; the logger levels here."""
    import logging

    import optuna

    from search.monitor import console

    levels = {name: logging.getLogger(name).level for name in ("mlflow", "ray.tune.execution.tune_controller")}
    verbosity = optuna.logging.get_verbosity()

    class Kept(logging.Handler):
        messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    kept = Kept()
    logging.getLogger("optuna").addHandler(kept)
    try:
        optuna.logging.set_verbosity(optuna.logging.INFO)  # Optuna's default
        optuna.create_study(study_name="loud-check")
        assert any("A new study created in memory with name: loud-check" in m for m in kept.messages)
        kept.messages.clear()
        console.configure(verbose=False)
        optuna.create_study(study_name="quiet-check")
        assert not any("A new study created" in m for m in kept.messages)
    finally:
        logging.getLogger("optuna").removeHandler(kept)
        optuna.logging.set_verbosity(verbosity)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


RAYLET_DIED = ("\x1b[33m(raylet)\x1b[0m A worker died or was killed while executing a task by an unexpected system "
               "error. To troubleshoot the problem, check the logs for the dead worker. Lease ID: 0a1b2c3d Attempt "
               "Number: 0 Worker ID: 5f6e7d8c9b Node ID: 1a2b3c Worker IP address: 127.0.0.1 Worker port: 40123 "
               "Worker PID: 4242 Worker exit type: SYSTEM_ERROR Worker exit detail: The leased worker has "
               "unrecoverable failure. Worker is requested to be destroyed when it is returned.")


def test_a_raylet_line_about_a_data_parallel_trials_worker_becomes_one_plain_line_naming_the_trial():
    import io

    from search.monitor.console import RayletLines, raylet_line

    owners = {4242: ("2247b_00000", "worker 1")}
    line = raylet_line(RAYLET_DIED, owners.get)
    assert line == ("lic-search: Ray: trial 2247b_00000's worker 1 (pid 4242) died: The leased worker has "
                    "unrecoverable failure — the trial's attempt ends and it continues from its last checkpoint (a "
                    "retry counted against resources.max_failures; Ray Train restarts a worker group that was still "
                    "starting)")
    unknown = raylet_line(RAYLET_DIED, lambda pid: None)
    assert unknown.startswith("lic-search: Ray: a worker process (pid 4242) died: The leased worker has")
    stream = io.StringIO()
    out = RayletLines(stream, owners.get)
    print("1 trials: 1 running", file=out)
    print(RAYLET_DIED, file=out)
    printed = stream.getvalue().splitlines()
    assert printed == ["1 trials: 1 running", line]
    assert "\x1b" not in stream.getvalue() and "Lease ID" not in stream.getvalue()
    assert raylet_line("\x1b[33m(raylet)\x1b[0m Spilled 12 MiB. Set RAY_verbose_spill_logs=0 to hide.", owners.get) \
        == "lic-search: Ray: Spilled 12 MiB"
