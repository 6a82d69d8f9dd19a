"""What tells trials apart: varying keys, headers, values, run and family names, `best`'s columns."""

from __future__ import annotations

from search.commands.best import row_keys, trial_table
from search.space import load_space
from search.space.strata import typed_params
from search.tracking import run_names as R
from tests.conftest import REPO
from trainables.config import flatten

SPACES = REPO / "spaces"


def _ablation_configs() -> list[dict]:
    return list(load_space(SPACES / "smoke" / "ablation_components.yaml").configs())


def test_columns_of_the_components_ablation_tell_a1_to_a4_apart_from_the_model_built():
    """Unlabelled, A3/A4 show no scaling ('n/a': without a DWT there are no subbands) and no Haar."""
    configs = _ablation_configs()
    keys = R.column_keys(configs)
    assert keys[:2] == [R.LAMBDA_KEY, R.AUXT_KEY]
    assert set(keys[2:]) == {"model.auxt.projection", "model.auxt.scaling", "model.auxt.downsample"}
    assert [R.label(k, keys) for k in keys] == ["λ", "auxt", "auxt.projection", "auxt.scaling", "auxt.downsample"]
    grid = {tuple(R.value(c, k) for k in keys[1:]) for c in configs}
    assert grid == {("haar", "unconstrained", "True", "dwt"), ("haar", "orthogonal", "False", "dwt"),
                    ("avgpool", "orthogonal", "n/a", "avgpool"), ("strided_conv", "orthogonal", "n/a", "strided_conv")}


def test_labelled_variants_name_runs_and_families_and_replace_their_knobs():
    spec = load_space(SPACES / "smoke" / "ablation_components.yaml")
    configs = list(spec.configs())
    keys = R.column_keys(configs, spec.variants)
    assert keys == [R.VARIANT_KEY, R.LAMBDA_KEY]  # the label names every model.auxt.* knob
    names = {R.trial_name(c, keys, spec.variants.label_of(c)) for c in configs}
    assert names == {"A1 unconstrained OLP · λ=0.0483", "A2 no scaling · λ=0.0483", "A3 avgpool · λ=0.0483",
                     "A4 strided conv · λ=0.0483"}
    assert {R.family_name(c, keys, spec.variants.label_of(c)) for c in configs} == set(spec.variants.labels())
    assert not any("scaling" in n or "haar" in n for n in names if n.startswith(("A3", "A4")))


def test_varying_keys_from_mlflow_params_equal_those_from_configs():
    """MLflow stores str(value): the typed params of the same trials give the same keys."""
    configs = _ablation_configs()
    params = [typed_params({k: str(v) for k, v in flatten(c).items()}) for c in configs]
    assert R.column_keys(params) == R.column_keys(configs)


def test_best_table_has_one_column_per_varying_key_with_readable_headers():
    configs = _ablation_configs()[:4]
    rows = [{"stratum": {"loss.lmbda": 0.0483}, "rank": i + 1, "status": "completed",
             "metrics": {"eval/rd_loss": 1.0 + i, "eval/bpp": 0.5, "eval/psnr": 30.0, "iterations": 24.0},
             "params": typed_params({k: str(v) for k, v in flatten(c).items()})} for i, c in enumerate(configs)]
    keys = row_keys(rows)
    header, lines = trial_table(rows, ["eval/rd_loss"], keys)
    assert header[-5:] == ["λ", "auxt", "auxt.projection", "auxt.scaling", "auxt.downsample"]
    assert "enabled" not in header and "variant" not in header  # no run carries a variant tag
    assert [line[-3:] for line in lines] == [["unconstrained", "True", "dwt"], ["orthogonal", "False", "dwt"],
                                             ["orthogonal", "n/a", "avgpool"], ["orthogonal", "n/a", "strided_conv"]]
    assert [line[-4] for line in lines] == ["haar", "haar", "avgpool", "strided_conv"]
    labelled = [{**row, "variant": f"A{i + 1}"} for i, row in enumerate(rows)]
    header, lines = trial_table(labelled, ["eval/rd_loss"], row_keys(labelled))
    assert header[7] == "variant" and [line[7] for line in lines] == ["A1", "A2", "A3", "A4"]
    assert len({tuple(line[-3:]) for line in lines}) == 4  # every row of A1-A4 reads differently


def test_quickstart_names_show_lambda_auxt_lambda_orth_and_lr():
    configs = list(load_space(SPACES / "quickstart.yaml").configs())
    keys = R.column_keys(configs)
    assert [R.label(k, keys) for k in keys] == ["λ", "auxt", "λ_orth", "lr"]
    on = next(c for c in configs if c["model"]["auxt"]["enabled"] and c["schedule"]["lr"] == 0.0005)
    off = next(c for c in configs if not c["model"]["auxt"]["enabled"])
    lambda_orth = R.show(on["model"]["auxt"]["lambda_orth"])
    assert R.trial_name(on, keys) == f"λ=0.013 · auxt=haar · λ_orth={lambda_orth} · lr=5e-4"
    assert R.trial_name(off, keys).startswith("λ=0.013 · auxt=off · λ_orth=n/a · lr=")  # AuxT off: not applicable
    assert R.family_name(on, keys) == R.trial_name(on, keys).split(" · ", 1)[1]


def test_values_are_short_and_headers_stay_unique():
    assert R.show(0.0022) == "2.2e-3" and R.show(0.0035, R.LAMBDA_KEY) == "0.0035" and R.show(0.1) == "0.1"
    assert R.auxt_setting({"model": {"auxt": {"enabled": True, "wavelet": "db2", "placement": "analysis"}}}) == \
        "db2/analysis"
    assert R.label("loss.distortion", ["loss.distortion"]) == "distortion"
    assert R.label("data.crop", ["data.crop", "model.crop"]) == "data.crop"  # 'crop' twice: full keys
    assert R.varying_keys([{"a": {"b": 1}}, {"a": {"b": 1}}]) == []
