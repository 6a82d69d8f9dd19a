"""Space files: every malformed file gets an error naming file, key path and allowed values
before Ray starts; valid files resolve to the right Ray Tune param space and trial count."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.errors import SpaceError
from search.space import describe_schema, load_space
from tests.conftest import SAMPLES
from trainables.backbones import BACKBONES
from trainables.config import AuxTConfig, TrialConfig

MALFORMED = Path(__file__).resolve().parent / "malformed_spaces"

AUXT_KEYS = ", ".join(AuxTConfig.model_fields)

# file -> (key path, substrings the message must hold: the rule, the value, allowed values / valid keys)
CASES = {
    "unknown_top_key": ("schedular", ["unknown key 'schedular'",
                                      "valid keys here: name, description, trial, search, scheduler, resources",
                                      "did you mean 'scheduler'?"]),
    "unknown_trial_key": ("trial.model.auxt.lamda_orth", ["unknown key 'lamda_orth'", f"valid keys here: {AUXT_KEYS}",
                                                          "did you mean 'lambda_orth'?"]),
    "wrong_type": ("trial.schedule.iterations", ["must be an integer >= 1", "got many"]),
    "negative_lambda_orth": ("trial.model.auxt.lambda_orth", ["must be a number >= 0.0", "got -0.1"]),
    "empty_choice": ("trial.schedule.lr", ["`choice` needs at least one value", "empty list"]),
    "bad_yaml_syntax": ("<root>", ["invalid YAML at line 17", "expected ',' or ']'"]),
    "python_tag": ("trial.schedule.seed", ["YAML tag !!python/object/apply:os.system", "line 16",
                                           "tags like !!python/object", "not allowed", "loaded safely"]),
    "missing_data_folder": ("trial.data.train", ["no-such-folder/train does not exist",
                                                 "resolved against the space file's folder"]),
    "empty_data_folder": ("trial.data.eval", ["empty_folder holds no image files", ".png"]),
    "loguniform_nonpositive": ("trial.schedule.lr", ["`loguniform` needs 0 < low < high", "low=0"]),
    "unknown_backbone": ("trial.model.backbone", ["unknown backbone 'tcm-smal'",
                                                  f"allowed: {', '.join(sorted(BACKBONES))}",
                                                  "did you mean 'tcm-small'?"]),
    "unknown_wavelet": ("trial.model.auxt.wavelet", ["unknown wavelet 'haarr'", "haar, db2, db4",
                                                     "did you mean 'haar'?"]),
    "duplicate_key": ("trial.data.crop_size", ["duplicate key", "line 13 and line 14"]),
    "grace_period_over_budget": ("scheduler.grace_period", ["must not exceed the iteration budget (20)", "got 50"]),
    "milestones_not_increasing": ("trial.schedule.milestones", ["must be increasing", "[0.9, 0.5]"]),
    "bad_literal": ("trial.model.auxt.placement", ["must be one of both, analysis, synthesis, none", "got bth",
                                                   "did you mean 'both'?"]),
    "auxt_knob_when_off": ("trial.model.auxt.wavelet", ["has no effect", "AuxT is off", "db4",
                                                        "set model.auxt.enabled to true"]),
    "grid_value_invalid": ("trial.data.crop_size", ["must be an integer >= 16", "got 8", "grid value 8"]),
    "optuna_with_grid": ("search.algorithm", ["optuna needs at least one sampled primitive", "use algorithm random"]),
    "stages_out_of_range": ("trial.model.auxt.stages", ["stage indices in 0..3", "[0, 7]", "'mbt2018-mean' has 4 stages"]),
    "primitive_mixed_keys": ("trial.schedule.lr", ["exactly one key (`grid`)", "also has 'choice'"]),
    "missing_iterations": ("trial.schedule.iterations", ["required key missing", "Iteration budget"]),
    "randint_floats": ("trial.schedule.seed", ["`randint` takes integers", "[0.5, 4]"]),
    "bad_widths": ("trial.model", ["backbone 'tcm-small' cannot be built with N=8, M=16"]),
}


def test_every_malformed_fixture_has_a_case():
    assert sorted(p.stem for p in MALFORMED.glob("*.yaml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(n for n, (key, _) in CASES.items() if key != "<root>"))
def test_error_key_path_names_a_key_of_the_file(name):
    """The reported key path is where the fault is: its last key is written in the file (a missing
    key is not), and every key above it too, so the path is not merely plausible but this file's."""
    with pytest.raises(SpaceError) as caught:
        load_space(MALFORMED / f"{name}.yaml")
    text = (MALFORMED / f"{name}.yaml").read_text()
    *parents, leaf = caught.value.key_path.split(".")
    for key in parents:
        assert f"{key}:" in text, (key, caught.value.key_path)
    missing = "required key missing" in str(caught.value)
    assert (f"{leaf}:" in text) != missing, (leaf, caught.value.key_path)


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_space_names_file_key_path_and_rule(name):
    key_path, fragments = CASES[name]
    path = MALFORMED / f"{name}.yaml"
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    error = caught.value
    assert error.file == str(path)
    assert (error.key_path or "<root>") == key_path
    first_line = str(error).splitlines()[0]
    assert first_line.startswith(f"{path}: {key_path}: ")
    for fragment in fragments:
        assert fragment in first_line, (fragment, first_line)


@pytest.mark.parametrize("name", ["unknown_trial_key", "python_tag", "missing_data_folder", "optuna_with_grid"])
def test_run_on_a_malformed_space_starts_nothing(name, tmp_path, capsys):
    import ray

    assert not ray.is_initialized()
    path = MALFORMED / f"{name}.yaml"
    code = main(["run", str(path), "--storage-path", str(tmp_path / "results"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 2
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
    err = capsys.readouterr().err
    assert f"lic-search: error: {path}: {CASES[name][0]}: " in err


def test_validate_command_reports_errors_with_exit_2(capsys):
    path = MALFORMED / "bad_literal.yaml"
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"lic-search: error: {path}: trial.model.auxt.placement: must be one of")


# --------------------------------------------------------------------------- valid spaces

def write(folder: Path, trial_extra: dict | None = None, **sections) -> Path:
    trial = {
        "model": {"backbone": "mbt2018-mean", "N": 8, "M": 8},
        "data": {"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval"), "crop_size": 64},
        "schedule": {"iterations": 20, "eval_every": 10},
    }
    for dotted, value in (trial_extra or {}).items():
        node = trial
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "trial": trial, **sections}, sort_keys=False))
    return path


def variants(spec) -> list[dict]:
    """The trial configs Ray's grid/random generator makes from the spec's param space."""
    from ray.tune.search.variant_generator import generate_variants

    return [config for _ in range(spec.file.search.num_samples)
            for _, config in generate_variants(spec.param_space())]


def test_validate_prints_resolved_space_count_budget_and_settings(tmp_path, capsys):
    path = write(tmp_path, {"schedule.lr": {"loguniform": [1e-4, 1e-2]}, "loss.lmbda": {"grid": [0.0067, 0.013]},
                            "schedule.iterations": {"grid": [20, 40]}, "schedule.milestones": [0.5]},
                 search={"num_samples": 3}, scheduler={"type": "asha", "grace_period": 10})
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "lr: loguniform [0.0001, 0.01]" in out
    assert "lmbda: grid [0.0067, 0.013]" in out
    assert "crop_size: 64" in out and "batch_size: 8" in out  # defaults filled in
    assert "trials: 4 grid point(s) x 3 sample(s) = 12" in out
    assert "iteration budget: 40 (max); per trial: 20 (lr decay at 10); 40 (lr decay at 20)" in out
    assert "scheduler: asha per stratum, grace_period 10, reduction_factor 2, brackets 1, max_t 40" in out
    assert "search: random; num_samples 3" in out
    assert "metric eval/rd_loss, mode min (lower is better; the metric's natural direction)" in out
    assert ("strata: trials are compared only at equal loss.lmbda, loss.distortion, schedule.iterations "
            "(schedule.iterations added to search.stratify_by: it varies in this space") in out


def test_every_primitive_becomes_its_ray_domain(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    path = write(tmp_path, {"schedule.lr": {"loguniform": [1e-4, 1e-2]}, "schedule.gamma": {"uniform": [0.1, 0.5]},
                            "schedule.seed": {"randint": [0, 5]}, "loss.lmbda": {"quniform": [0.01, 0.05, 0.01]},
                            "data.batch_size": {"choice": [2, 4]}, "schedule.warmup": {"grid": [0, 5]}})
    spec = load_space(path)
    space = spec.param_space()
    assert isinstance(space["schedule"]["lr"], Float) and space["schedule"]["lr"].lower == 1e-4
    assert isinstance(space["schedule"]["seed"], Integer) and space["schedule"]["seed"].upper == 5
    assert isinstance(space["data"]["batch_size"], Categorical)
    assert space["schedule"]["warmup"] == {"grid_search": [0, 5]}
    configs = variants(spec)
    assert len(configs) == spec.trial_count() == 2
    for config in configs:
        trial = TrialConfig.model_validate(config)
        assert 1e-4 <= trial.schedule.lr <= 1e-2 and 0.1 <= trial.schedule.gamma <= 0.5
        assert 0 <= trial.schedule.seed < 5 and trial.data.batch_size in (2, 4)
        assert round(trial.loss.lmbda / 0.01, 6) == round(trial.loss.lmbda / 0.01)


def test_range_ends_are_validated(tmp_path):
    path = write(tmp_path, {"schedule.gamma": {"uniform": [0.5, 1.5]}})
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    assert caught.value.key_path == "trial.schedule.gamma"
    assert "must be a number > 0.0 and <= 1.0, but got 1.5" in str(caught.value)
    assert "uniform value 1.5" in str(caught.value)


def test_grid_values_must_be_distinct(tmp_path):
    with pytest.raises(SpaceError, match=r"trial.loss.lmbda: `grid` values must be distinct .* 0.013 appears twice"):
        load_space(write(tmp_path, {"loss.lmbda": {"grid": [0.013, 0.0067, 0.013]}}))


def test_auxt_knobs_vary_only_where_auxt_is_on(tmp_path):
    path = write(tmp_path, {"model.auxt": {"enabled": {"grid": [True, False]}, "wavelet": {"grid": ["haar", "db4"]},
                                           "lambda_orth": {"choice": [0.01, 0.1]}},
                            "schedule.lr": {"grid": [1e-3, 1e-4]}})
    spec = load_space(path)
    assert spec.grid_size() == (2 + 1) * 2 and spec.trial_count() == 6
    configs = variants(spec)
    assert len(configs) == 6
    off = [c for c in configs if not c["model"]["auxt"]["enabled"]]
    on = [c for c in configs if c["model"]["auxt"]["enabled"]]
    assert len(off) == 2 and all(c["model"]["auxt"] == {"enabled": False} for c in off)
    assert sorted((c["model"]["auxt"]["wavelet"], c["schedule"]["lr"]) for c in on) == [
        ("db4", 1e-4), ("db4", 1e-3), ("haar", 1e-4), ("haar", 1e-3)]
    assert all(c["model"]["auxt"]["lambda_orth"] in (0.01, 0.1) for c in on)
    assert "1 AuxT-off grid points (not 4)" in spec.describe()


def test_auxt_knobs_with_random_enabled_are_kept(tmp_path):
    spec = load_space(write(tmp_path, {"model.auxt": {"enabled": {"choice": [True, False]}, "lambda_orth": 1.0}}))
    assert spec.trial_count() == 1 and spec.param_space()["model"]["auxt"]["lambda_orth"] == 1.0


def test_auxt_knob_at_its_default_is_allowed_when_off(tmp_path):
    spec = load_space(write(tmp_path, {"model.auxt": {"enabled": False, "wavelet": "haar"}}))
    assert spec.trial_count() == 1


def test_relative_and_environment_data_paths(tmp_path, monkeypatch):
    data = tmp_path / "sub"
    data.mkdir()
    (data / "train").symlink_to(SAMPLES / "train")
    monkeypatch.setenv("LIC_TEST_EVAL", str(SAMPLES / "eval"))
    path = write(data, {"data.train": "train", "data.eval": "${LIC_TEST_EVAL}"})
    spec = load_space(path)
    assert spec.file.trial["data"]["train"] == str((data / "train").resolve())
    assert spec.file.trial["data"]["eval"] == str(SAMPLES / "eval")
    monkeypatch.delenv("LIC_TEST_EVAL")
    with pytest.raises(SpaceError, match=r"trial.data.eval: environment variable in '\$\{LIC_TEST_EVAL\}' is not set"):
        load_space(path)


def test_resolved_copy_reloads_to_the_same_search(tmp_path):
    """The tuner saves ``spec.file`` as YAML and `resume` loads that copy: same trials."""
    spec = load_space(write(tmp_path, {"model.auxt": {"enabled": {"grid": [True, False]},
                                                      "lambda_orth": {"grid": [0.01, 0.1]}},
                                       "schedule.iterations": {"grid": [20, 40]}}))
    copy = tmp_path / "copy" / "space.yaml"
    copy.parent.mkdir()
    copy.write_text(yaml.safe_dump(spec.file.model_dump(mode="json"), sort_keys=False))
    again = load_space(copy)
    assert again.param_space() == spec.param_space()
    assert again.trial_count() == spec.trial_count() == 6 and again.budget() == 40


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(f"""
name: merge
common: &common {{iterations: 20, eval_every: 10}}
trial:
  data: {{train: {SAMPLES / 'train'}, eval: {SAMPLES / 'eval'}}}
  schedule:
    <<: *common
    lr: 0.001
""")
    with pytest.raises(SpaceError, match="common: unknown key 'common'"):
        load_space(path)  # the key holding &common is unknown, but the merge itself parsed
    path.write_text(path.read_text().replace("common: &common", "description: &common"))
    with pytest.raises(SpaceError, match="description: must be a string"):
        load_space(path)


def test_yaml_merge_keys_merge_values_and_local_keys_win(tmp_path):
    """A grid over whole schedules, the second merged from the first with its own budget."""
    path = tmp_path / "merge.yaml"
    path.write_text(f"""
name: merge
trial:
  model: {{backbone: mbt2018-mean, N: 8, M: 8}}
  data: {{train: {SAMPLES / 'train'}, eval: {SAMPLES / 'eval'}, crop_size: 64}}
  schedule:
    grid:
      - &short {{iterations: 20, eval_every: 10, lr: 0.002, milestones: [0.5]}}
      - {{<<: *short, iterations: 40}}
""")
    spec = load_space(path)
    schedules = sorted((c["schedule"] for c in variants(spec)), key=lambda s: s["iterations"])
    assert schedules == [{"iterations": 20, "eval_every": 10, "lr": 0.002, "milestones": [0.5]},
                         {"iterations": 40, "eval_every": 10, "lr": 0.002, "milestones": [0.5]}]
    assert spec.budget() == 40


def test_schema_reference_lists_every_key():
    text = describe_schema()

    def leaves(model, prefix):
        for name, info in model.model_fields.items():
            sub = getattr(info.annotation, "model_fields", None)
            yield from (leaves(info.annotation, f"{prefix}{name}.") if sub else [f"{prefix}{name}"])

    for key in leaves(TrialConfig, "trial."):
        assert f"\n{key}: " in text, key
    assert "trial.model.auxt.placement: one of both, analysis, synthesis, none; default both." in text
    assert main(["validate", "--keys"]) == 0


# --------------------------------------------------------------------------- metric directions, strata

@pytest.mark.parametrize("metric, mode", [("eval/psnr", "max"), ("eval/ms_ssim", "max"), ("eval/bpp", "min"),
                                          ("eval/mse", "min"), ("train/loss", "min"), ("eval/rd_loss", "min")])
def test_mode_follows_the_metric(tmp_path, capsys, metric, mode):
    path = write(tmp_path, search={"metric": metric})
    assert load_space(path, check_data=False).file.search.mode == mode
    assert main(["validate", str(path)]) == 0
    better = "higher" if mode == "max" else "lower"
    assert f"metric {metric}, mode {mode} ({better} is better; the metric's natural direction)" in capsys.readouterr().out


def test_mode_that_contradicts_the_metric_is_an_error(tmp_path, capsys):
    path = write(tmp_path, search={"metric": "eval/psnr", "mode": "min"})
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"lic-search: error: {path}: search.mode: min contradicts search.metric eval/psnr (higher is better); "
        "use max or leave mode out")
    path = write(tmp_path, search={"metric": "eval/psnr", "mode": "max"})
    assert "mode max (higher is better; set in the space)" in load_space(path).describe()


def test_objective_modes_are_checked_and_metrics_without_a_direction_need_one(tmp_path):
    sampled = {"schedule.lr": {"loguniform": [1e-4, 1e-2]}}
    path = write(tmp_path, sampled, search={"algorithm": "optuna", "objectives": ["eval/bpp", "eval/psnr"],
                                            "modes": ["min", "min"]})
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    assert caught.value.key_path == "search.modes"
    assert "min contradicts search.objectives[1] eval/psnr (higher is better); use max" in str(caught.value)
    path = write(tmp_path, search={"metric": "eval/energy_top10"})
    with pytest.raises(SpaceError, match="search.mode: search.metric eval/energy_top10 has no natural direction"):
        load_space(path)
    assert load_space(write(tmp_path, search={"metric": "eval/energy_top10", "mode": "max"})).file.search.mode == "max"


@pytest.mark.parametrize("trial_extra, scheduler, search, added", [
    ({"schedule.iterations": {"grid": [20, 40]}}, "asha", {}, ["schedule.iterations"]),
    ({"schedule.milestones": {"choice": [[0.5], [0.8]]}}, "asha", {}, ["schedule.milestones"]),
    ({"schedule": {"grid": [{"iterations": 20, "milestones": [0.5]}, {"iterations": 20, "milestones": [0.8]}]}},
     "asha", {}, ["schedule.milestones"]),  # a grid over whole schedules that differ only in decay points
    ({"schedule": {"grid": [{"iterations": 20, "lr": 1e-3}, {"iterations": 20, "lr": 1e-4}]}}, "asha", {}, []),
    ({"schedule.iterations": {"grid": [20, 40]}, "schedule.milestones": {"grid": [[0.5], [0.8]]}}, "asha", {},
     ["schedule.iterations", "schedule.milestones"]),
    ({"schedule.iterations": {"grid": [20, 40]}}, "fifo", {}, []),
    ({"schedule.iterations": {"grid": [20, 40]}}, "asha", {"stratify_by": ["loss.lmbda", "schedule.iterations"]}, []),
    ({"schedule.lr": {"grid": [1e-3, 1e-4]}}, "asha", {}, []),
])
def test_asha_strata_add_the_budget_keys_that_vary(tmp_path, trial_extra, scheduler, search, added):
    path = write(tmp_path, trial_extra, search=search, scheduler={"type": scheduler})
    spec = load_space(path, check_data=False)
    assert spec.stratify_by() == list(spec.file.search.stratify_by) + added
    strata_line = next(line for line in spec.describe().splitlines() if line.startswith("strata: "))
    assert (" added to search.stratify_by" in strata_line) == bool(added)
    for key in added:
        assert key in strata_line
