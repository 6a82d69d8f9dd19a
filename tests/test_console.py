"""The quickstart as a person runs it (a subprocess, stdout not a terminal): what it prints, and
what MLflow holds afterwards (readable run and family names, the summary on the parent run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search import mlflow_names as T
from tests.conftest import REPO, SAMPLES

pytestmark = pytest.mark.slow


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


def test_mlflow_trial_runs_are_named_by_lambda_auxt_and_what_varies(quickstart):
    from search.queries import select_search, trial_runs
    from search.tracking import client_for

    runs = trial_runs("quickstart", quickstart["uri"])
    assert len(runs) == 9
    names = [run.info.run_name for run in runs]
    assert all(name.startswith("λ=0.013 · auxt=") and " · λ_orth=" in name and " · lr=" in name for name in names)
    assert sum("auxt=off" in name for name in names) == 3 and sum("auxt=haar" in name for name in names) == 6
    assert all("λ_orth=-" in name for name in names if "auxt=off" in name)  # knobs of AuxT off change nothing
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
    assert "| rate point | trial | eval/rd_loss | eval/bpp | eval/psnr | iterations | λ | auxt | λ_orth | lr |" in text
    assert text.count("\n| λ=0.013, distortion=mse |") == 1
