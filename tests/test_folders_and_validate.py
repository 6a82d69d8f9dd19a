"""Search names and experiment folders stay inside the storage path; `validate` says what the trial config
adjusts (eval_every above the budget) and what this machine lacks (GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.errors import LicSearchError
from search.experiment.store import ExperimentStore
from tests.test_search_e2e import write_space


@pytest.mark.parametrize("name", [".", "..", "...", "-_"])
def test_names_without_a_letter_or_digit_are_refused_by_validate_and_run(tmp_path: Path, capsys, name):
    import ray

    space = write_space(tmp_path, "named", {}, {}, {"type": "fifo"})
    data = yaml.safe_load(space.read_text())
    data["name"] = name
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["validate", str(bad), "--no-data-check"]) == 2
    error = capsys.readouterr().err
    assert "bad.yaml" in error and "name" in error and "letter or digit" in error
    storage = tmp_path / "store" / "results"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(bad), "--storage-path", str(storage), "--tracking-uri", uri]) == 2
    assert main(["run", str(space), "--storage-path", str(storage), "--tracking-uri", uri, f"--name={name}"]) == 2
    assert "letter or digit" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlflow.db").exists()


def test_experiment_folder_is_inside_the_resolved_storage_path(tmp_path: Path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    store = ExperimentStore.under(link, "search-1")
    assert Path(store.location) == real.resolve() / "search-1"  # a symlinked storage path is fine
    (real / "elsewhere").symlink_to(tmp_path)  # a name that is a link out of the storage path is not
    with pytest.raises(LicSearchError, match="outside the storage path"):
        ExperimentStore.under(link, "elsewhere")
    uri = f"file://{tmp_path}/results"
    assert ExperimentStore.under(uri, "search-1").location == f"{uri}/search-1"
    with pytest.raises(LicSearchError, match="not a search name"):
        ExperimentStore.under(uri, "..")


def test_validate_notes_a_lowered_eval_every_and_warns_of_missing_gpus(tmp_path: Path, capsys):
    space = write_space(tmp_path, "notes", {"schedule.iterations": {"grid": [4, 50]}, "schedule.eval_every": 10},
                        {}, {"type": "fifo"})
    data = yaml.safe_load(space.read_text())
    data["resources"]["gpus_per_trial"] = 1
    space.write_text(yaml.safe_dump(data))
    assert main(["validate", str(space), "--no-data-check"]) == 0
    out = capsys.readouterr().out
    assert ("note: trial.schedule.eval_every 10 is above trial.schedule.iterations 4: such trials evaluate and "
            "checkpoint only at iteration 4") in out
    assert "iterations 50" not in out
    import torch

    if torch.cuda.device_count() == 0:
        assert "warning: resources.gpus_per_trial is 1 but this machine has no GPUs" in out
        assert "--address" in out
    else:
        assert "gpus_per_trial" not in out.split("resources:")[-1].split("\n", 1)[-1]
