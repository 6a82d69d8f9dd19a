"""Ablations a researcher can read (issue 24): labelled variants, names from the model built, rate
savings against the search's own baseline, one colour per variant, speed-up bounds, full-cost estimates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from search.analysis.bdrate import MIN_SHORTER_OVERLAP, bd_rate
from search.analysis.curves import CurveError, RDCurve, load_curve
from search.analysis.estimate import StepConfig, StepCost, TrialPlan, estimate
from search.analysis.families import training_speed
from search.cli import main
from search.errors import SpaceError
from search.space import load_space
from search.space.strata import family_key
from search.tracking import names as T
from search.tracking import run_names as R
from tests.conftest import REPO, SAMPLES
from trainables import metrics as M
from trainables.config import flatten

LAMBDAS = (0.0035, 0.0067, 0.013, 0.025)
VARIANTS = {"baseline": {"enabled": False}, "full WLS": {"enabled": True},
            "A2 no scaling": {"enabled": True, "scaling": False}}
RATES = {"baseline": 1.0, "full WLS": 0.9, "A2 no scaling": 0.95}  # bits at equal quality, against the baseline


def _space(tmp_path: Path, auxt: str, search: str = "") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(f"""name: labelled
trial:
  model:
    backbone: mbt2018-mean
    N: 8
    M: 16
    auxt:
{auxt}
  data: {{train: {SAMPLES / 'train'}, eval: {SAMPLES / 'eval'}, crop_size: 64, batch_size: 2}}
  schedule: {{iterations: 20, eval_every: 10}}
search:
  algorithm: random
{search}""")
    return path


LABELLED = """      grid:
        - {label: baseline, enabled: false}
        - {label: full WLS, enabled: true}
        - {label: A3 avgpool, enabled: true, downsample: avgpool}"""


# ----------------------------------------------------------------------------------- labels
def test_labels_are_found_again_from_configs_and_mlflow_params(tmp_path):
    spec = load_space(_space(tmp_path, LABELLED, "  baseline: {label: baseline}"))
    assert spec.variants.labels() == ["baseline", "full WLS", "A3 avgpool"] and spec.baseline_label() == "baseline"
    configs = list(spec.configs())
    assert "label" not in json.dumps(configs)  # labels never reach Ray, TrialConfig or MLflow params
    assert [spec.variants.label_of(c) for c in configs[:3]] == ["baseline", "full WLS", "A3 avgpool"]
    params = {k: str(v) for k, v in flatten(configs[2]).items()}  # as MLflow holds them
    assert spec.variants.label_of(params) == "A3 avgpool"
    keys = R.column_keys(configs, spec.variants)
    assert R.trial_name(configs[2], ["variant", "loss.lmbda"], "A3 avgpool").startswith("A3 avgpool · λ=")
    assert keys == [R.VARIANT_KEY, R.LAMBDA_KEY]


@pytest.mark.parametrize("auxt, search, where, words", [
    ("""      grid:
        - {label: baseline, enabled: false}
        - {enabled: true}""", "", "trial.model.auxt.grid[1]", "label every variant"),
    ("""      grid:
        - {label: x, enabled: false}
        - {label: x, enabled: true}""", "", "trial.model.auxt.grid[1].label", "names two variants"),
    ("""      label: lonely
      enabled: true""", "", "trial.model.auxt.label", "inside a grid or choice"),
    ("""      grid:
        - {label: "", enabled: true}""", "", "trial.model.auxt.grid[0].label", "non-empty string"),
    (LABELLED, "  baseline: {label: nobody}", "search.baseline.label", "'baseline', 'full WLS', 'A3 avgpool'"),
    # the key's old name: refused before anything starts, naming the new one
    (LABELLED, "  anchor: {label: baseline}", "search.anchor",
     "renamed to search.baseline (same meaning: the baseline variant every other variant's rate saving"),
    ("""      grid:
        - {label: A3, enabled: true, downsample: avgpool}
        - {label: A3 without scaling, enabled: true, downsample: avgpool, scaling: false}""", "",
     "trial.model.auxt", "build the same model"),
])
def test_bad_labels_are_clear_errors_before_any_trial(tmp_path, auxt, search, where, words):
    with pytest.raises(SpaceError) as error:
        load_space(_space(tmp_path, auxt, search), check_data=False)
    assert error.value.key_path == where and words in str(error.value)


def test_a_search_recorded_before_the_rename_still_names_its_baseline():
    """Parent runs of searches started before ``search.anchor`` became ``search.baseline`` carry the old tag."""
    from search.tracking.queries import _baseline

    def parent(tags: dict) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(tags=tags))

    assert _baseline([parent({T.TAG_BASELINE_OLD: "anchor"})]) == "anchor"
    assert _baseline([parent({T.TAG_BASELINE: "baseline"}), parent({T.TAG_BASELINE: "baseline"})]) == "baseline"
    assert _baseline([parent({T.TAG_BASELINE: "baseline"}), parent({})]) is None  # they disagree: none


def test_every_ablation_preset_labels_every_variant():
    spaces = REPO / "spaces"
    presets = sorted(spaces.glob("ablation_*.yaml")) + sorted((spaces / "smoke").glob("ablation_*.yaml"))
    for path in presets:
        spec = load_space(path, check_data=False)
        labels = [spec.variants.label_of(c) for c in spec.configs()]
        assert labels and None not in labels, path
        assert spec.baseline_label() in (None, *spec.variants.labels()), path
    components = load_space(REPO / "spaces" / "ablation_components.yaml", check_data=False)
    assert components.variants.labels() == ["baseline", "full WLS", "A1 unconstrained OLP", "A2 no scaling",
                                            "A3 avgpool", "A4 strided conv"]
    assert components.baseline_label() == "baseline"


# --------------------------------------------------------------------- the model that is built
def test_a3_a4_names_and_families_claim_neither_haar_nor_scaling():
    configs = list(load_space(REPO / "spaces" / "smoke" / "ablation_components.yaml").configs())[:4]
    a3, a4 = configs[2], configs[3]
    keys = R.column_keys(configs)  # unlabelled view: every varying knob
    for config, downsample in ((a3, "avgpool"), (a4, "strided_conv")):
        name = R.trial_name(config, keys)
        assert f"auxt={downsample}" in name and "haar" not in name and "scaling=n/a" in name
    scaled = json.loads(json.dumps(a3))
    scaled["model"]["auxt"]["scaling"] = False
    assert family_key(scaled) == family_key(a3)  # scaling does nothing without a DWT: one family
    # "n/a" (does nothing) is not "left at its default": A1 leaves scaling out and shows its default
    assert R.value(configs[0], "model.auxt.scaling") == "True" and R.value(a3, "model.auxt.scaling") == "n/a"


# -------------------------------------------------------------------------- BD-rate and speed
def test_bd_rate_needs_half_of_the_shorter_quality_range():
    anchor = RDCurve("anchor", [0.1, 0.2, 0.3, 0.4], psnr=[20.0, 21.0, 22.0, 23.0])
    sliver = RDCurve("sliver", [0.1, 0.2, 0.3, 0.4], psnr=[22.96, 23.5, 24.0, 24.5])
    assert bd_rate(sliver, anchor).overlap > 0  # the plain call still computes it...
    with pytest.raises(CurveError, match=r"overlap 0.04 dB, 3% of the shorter range .* needs 50%"):
        bd_rate(sliver, anchor, min_shorter_overlap=MIN_SHORTER_OVERLAP)  # ...the ranking rule refuses it
    half = RDCurve("half", [0.1, 0.2, 0.3, 0.4], psnr=[21.5, 22.5, 23.5, 24.5])
    assert bd_rate(half, anchor, min_shorter_overlap=MIN_SHORTER_OVERLAP).bd_rate < 0


def test_speed_reached_at_the_first_evaluation_is_a_bound():
    bound = training_speed({100: 0.5, 200: 0.4, 300: 0.3, 400: 0.25}, {100: 1.0, 200: 0.8, 300: 0.7, 400: 0.6})
    assert bound.reached_at_first_eval and bound.speedup == pytest.approx(4.0)  # 400/100: only a lower bound
    measured = training_speed({100: 0.9, 200: 0.6, 300: 0.5, 400: 0.45}, {100: 1.0, 200: 0.8, 300: 0.7, 400: 0.6})
    assert not measured.reached_at_first_eval and measured.speedup == pytest.approx(2.0)


# --------------------------------------------------------------------- a labelled search's report
def _log_run(client, experiment_id, tags, params, metrics) -> None:
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, run_name=tags.get(T.TAG_TRIAL_ID, "search"), tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())],
                     metrics=[Metric(name, value, now, step) for name, history in metrics.items()
                              for step, value in history])
    return run.info.run_id


@pytest.fixture(scope="module")
def labelled_search(tmp_path_factory):
    """Figure 8(a) in miniature: baseline, full WLS, A2 × 4 λ, as the tracking logger records them."""
    from mlflow.tracking import MlflowClient

    from search.tracking.session import search_tags

    tmp = tmp_path_factory.mktemp("labelled")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("fig8a", artifact_location=(tmp / "artifacts").as_uri())
    parent = _log_run(client, experiment_id, search_tags(str(tmp), ["loss.lmbda"], "baseline", list(VARIANTS)),
                      {}, {})
    steps = (100, 200, 300, 400)
    for label, auxt in VARIANTS.items():
        for i, lmbda in enumerate(LAMBDAS):
            config = {"model": {"backbone": "mbt2018-mean", "N": 16, "M": 24, "auxt": auxt},
                      "data": {"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval")},
                      "loss": {"lmbda": lmbda}, "schedule": {"iterations": 400, "eval_every": 100}}
            bpp, psnr = 0.2 * (i + 1) * RATES[label], 24.0 + 2.0 * i
            # full WLS is at the baseline's final loss by its first evaluation: its speed-up is a bound
            losses = {"baseline": (1.0, 0.8, 0.7, 0.6), "full WLS": (0.55, 0.5, 0.45, 0.4),
                      "A2 no scaling": (0.9, 0.6, 0.5, 0.45)}[label]
            metrics = {M.EVAL_RD_LOSS: [(s, (i + 1) * v) for s, v in zip(steps, losses)],
                       M.EVAL_BPP: [(400, bpp)], M.EVAL_PSNR: [(400, psnr)],
                       M.EVAL_MS_SSIM: [(400, 0.90 + 0.02 * i)],
                       M.EVAL_TOP10_ENERGY: [(s, 0.5 + 0.1 * k) for k, s in enumerate(steps)]}
            _log_run(client, experiment_id, {
                T.TAG_PARENT: parent, T.TAG_ROLE: T.ROLE_TRIAL, T.TAG_TRIAL_ID: f"t{label[:2]}{i}",
                T.TAG_STATUS: T.STATUS_COMPLETED, T.TAG_VARIANT: label, T.TAG_FAMILY_NAME: label},
                {k: v for k, v in flatten(config).items()}, metrics)
    return {"uri": uri, "tmp": tmp, "client": client}


def test_report_names_variants_measures_them_against_the_baseline_and_colours_each(labelled_search, capsys):
    out = labelled_search["tmp"] / "report"
    assert main(["report", "fig8a", "--tracking-uri", labelled_search["uri"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 rate families (2 with a BD-rate)" in printed
    assert "AuxT speed-up full WLS vs baseline: ≥ 4.00x (a lower bound" in printed
    data = json.loads((out / "report.json").read_text())
    rows = data["families"]
    assert [r["label"] for r in rows] == list(VARIANTS)  # the space's order, the baseline first
    assert data["baseline_family"] == "baseline" and data["baseline_how"] == "search.baseline: baseline"
    baseline, full, a2 = rows
    assert baseline["is_baseline"] and baseline["rank"] is None and "baseline psnr" not in baseline["bd_rate"]
    assert full["bd_rate"]["baseline psnr"] == pytest.approx(-10.0, abs=1e-6) and full["rank"] == 1
    assert a2["bd_rate"]["baseline psnr"] == pytest.approx(-5.0, abs=1e-6) and a2["rank"] == 2
    assert full["bd_rate"]["baseline ms-ssim"] == pytest.approx(-10.0, abs=1e-6)
    # VTM was measured on Kodak, these curves on the 4 sample crops: a second column saying so
    assert full["bd_rate"]["VTM psnr"] is None
    assert any("not comparable to VTM: evaluated on 4 images (4 x 192x128)" in n for n in full["notes"])
    markdown = (out / "report.md").read_text()
    assert "## Rate savings against the baseline" in markdown and "**baseline** (search.baseline: baseline)" in markdown
    assert "| full WLS | 1 | full WLS | yes | 4 |" in markdown and "| -10.00% | -10.00% | n/a |" in markdown
    assert "| baseline | baseline | baseline | no | 4 |" in markdown
    assert "≥ 4.00× (reached at the first evaluation)" in markdown and "| ≤ 25.0% |" in markdown
    assert load_curve(out / "curves" / "A2_no_scaling.json").name == "fig8a A2 no scaling"
    # one colour per variant, AuxT or not: the legends name every variant once, in distinct colours
    legends = data["legends"]
    for plot in ("convergence.png", "energy.png", "rd_psnr.png"):
        variants = {k: v for k, v in legends[plot].items() if k in VARIANTS}
        assert set(variants) == set(VARIANTS) and len(set(variants.values())) == 3, plot
    assert legends["convergence.png"] == {k: legends["rd_psnr.png"][k] for k in VARIANTS}
    assert "VTM (clipped to the search's range)" in legends["rd_psnr.png"]


def test_best_by_family_ranks_against_the_baseline_variant_never_itself(labelled_search, capsys):
    capsys.readouterr()
    assert main(["best", "fig8a", "--tracking-uri", labelled_search["uri"], "--by", "family", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["variant"], r["rank"], r["is_baseline"]) for r in rows] == [
        ("baseline", None, True), ("full WLS", 1, False), ("A2 no scaling", 2, False)]
    assert rows[1]["bd_rate"] == pytest.approx(-10.0, abs=1e-6) and rows[1]["reference"] == "baseline"
    # a family's own saved curve as --anchor: it is the baseline, not ranked first at +0.00 %
    curve = labelled_search["tmp"] / "report" / "curves" / "full_WLS.json"
    assert main(["best", "fig8a", "--tracking-uri", labelled_search["uri"], "--by", "family", "--json",
                 "--anchor", str(curve)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["variant"] == "full WLS" and rows[0]["is_baseline"] and rows[0]["rank"] is None
    assert [r["rank"] for r in rows[1:]] == [1, 2] and all(r["bd_rate"] > 0 for r in rows[1:])


# -------------------------------------------------------------------------------- the estimate
def test_estimate_counts_evaluations_checkpoints_and_start_up():
    step = StepConfig("mbt2018-mean", 8, 16, "off", 2, 64, "none", False, False)
    trial = TrialPlan(step, 250, 100, ("a",), {})
    assert trial.evaluations(250) == [100, 200, 250]  # every eval_every and at the end, as the engine does
    cost = StepCost(iteration=0.1, evaluation=2.0, startup=3.0)
    fifo = SimpleNamespace(type="fifo")
    result = estimate([trial, trial], {step: cost}, fifo, gpus_per_trial=0, max_concurrent=1, launch=36.0)
    # per trial 3 + 250 * 0.1 + 3 * 2 = 34 s; two in a row plus a 36 s launch
    assert result.grid_hours == pytest.approx(68 / 3600) and result.grid_wall_hours == pytest.approx(104 / 3600)
    assert estimate([trial], {step: 0.1}, fifo, gpus_per_trial=0).grid_hours == pytest.approx(25 / 3600)
    # a fresh worker's imports: once per concurrent slot, in its first trial (two slots: twice)
    both = estimate([trial, trial], {step: cost}, fifo, gpus_per_trial=0, max_concurrent=2, launch=36.0,
                    worker_start=10.0)
    assert both.grid_hours == pytest.approx((68 + 2 * 10) / 3600) and both.grid_wall_hours == pytest.approx(70 / 3600)
