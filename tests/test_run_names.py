"""What tells trials apart: varying keys, headers, values, run and family names, `best`'s columns."""

from __future__ import annotations

from search.commands.best import trial_table
from search.space import load_space
from search.space.strata import typed_params
from search.tracking import run_names as R
from tests.conftest import REPO
from trainables.config import flatten

SPACES = REPO / "spaces"


def _ablation_configs() -> list[dict]:
    return list(load_space(SPACES / "smoke" / "ablation_components.yaml").configs())


def test_columns_of_the_components_ablation_tell_a1_to_a4_apart():
    configs = _ablation_configs()
    keys = R.column_keys(configs)
    assert keys[:2] == [R.LAMBDA_KEY, R.AUXT_KEY]
    assert set(keys[2:]) == {"model.auxt.projection", "model.auxt.scaling", "model.auxt.downsample"}
    assert [R.label(k, keys) for k in keys] == ["λ", "auxt", "auxt.projection", "auxt.scaling", "auxt.downsample"]
    grid = {tuple(R.value(c, k) for k in keys[2:]) for c in configs}
    assert grid == {("unconstrained", "True", "dwt"), ("orthogonal", "False", "dwt"),
                    ("orthogonal", "True", "avgpool"), ("orthogonal", "True", "strided_conv")}


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
    keys = R.column_keys(r["params"] for r in rows)
    header, lines = trial_table(rows, "eval/rd_loss", keys)
    assert header[-5:] == ["λ", "auxt", "auxt.projection", "auxt.scaling", "auxt.downsample"]
    assert "enabled" not in header
    assert [line[-3:] for line in lines] == [["unconstrained", "True", "dwt"], ["orthogonal", "False", "dwt"],
                                             ["orthogonal", "True", "avgpool"], ["orthogonal", "True", "strided_conv"]]
    assert all(line[-5:-3] == ["0.0483", "haar"] for line in lines)
    assert len({tuple(line[-3:]) for line in lines}) == 4  # every row of A1-A4 reads differently


def test_quickstart_names_show_lambda_auxt_lambda_orth_and_lr():
    configs = list(load_space(SPACES / "quickstart.yaml").configs())
    keys = R.column_keys(configs)
    assert [R.label(k, keys) for k in keys] == ["λ", "auxt", "λ_orth", "lr"]
    on = next(c for c in configs if c["model"]["auxt"]["enabled"] and c["schedule"]["lr"] == 0.0005)
    off = next(c for c in configs if not c["model"]["auxt"]["enabled"])
    lambda_orth = R.show(on["model"]["auxt"]["lambda_orth"])
    assert R.trial_name(on, keys) == f"λ=0.013 · auxt=haar · λ_orth={lambda_orth} · lr=5e-4"
    assert R.trial_name(off, keys).startswith("λ=0.013 · auxt=off · λ_orth=- · lr=")  # knobs of AuxT off: '-'
    assert R.family_name(on, keys) == R.trial_name(on, keys).split(" · ", 1)[1]


def test_values_are_short_and_headers_stay_unique():
    assert R.show(0.0022) == "2.2e-3" and R.show(0.0035, R.LAMBDA_KEY) == "0.0035" and R.show(0.1) == "0.1"
    assert R.auxt_setting({"model": {"auxt": {"enabled": True, "wavelet": "db2", "placement": "analysis"}}}) == \
        "db2/analysis"
    assert R.label("loss.distortion", ["loss.distortion"]) == "distortion"
    assert R.label("data.crop", ["data.crop", "model.crop"]) == "data.crop"  # 'crop' twice: full keys
    assert R.varying_keys([{"a": {"b": 1}}, {"a": {"b": 1}}]) == []
