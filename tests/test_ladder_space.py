"""The `ladder:` section: the start-point and fine-tune sub-spaces, fine-tune configs, and every bad ladder
refused before Ray starts with the file and key path."""

from __future__ import annotations

import pytest
import yaml

from search.errors import SpaceError
from search.experiment.store import ExperimentStore
from search.space import load_space
from search.space.ladder import fine_tune_configs, fine_tune_spec, rate_points, start_spec
from tests.conftest import SAMPLES

LAMBDAS = [0.0067, 0.013, 0.025, 0.0483]


def ladder_space(tmp_path, ladder=None, name="ladder", **sections) -> "Path":
    """A tiny ladder space: 4 λ, 2 learning rates (two families), ASHA."""
    space = {
        "name": name,
        "trial": {
            "model": {"backbone": "mbt2018-mean", "N": 8, "M": 8},
            "data": {"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval"), "crop_size": 64,
                     "batch_size": 2, "num_workers": 0, "max_eval_images": 2},
            "loss": {"lmbda": {"grid": LAMBDAS}},
            "schedule": {"iterations": 40, "eval_every": 10, "lr": {"grid": [1e-3, 3e-3]}},
        },
        "scheduler": {"type": "asha", "grace_period": 10},
        "ladder": ladder if ladder is not None else {"start": {"loss.lmbda": 0.0483},
                                                     "fine_tune": {"schedule.iterations": 10, "schedule.lr": 5e-4}},
        **sections,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def test_phases_of_a_ladder(tmp_path):
    spec = load_space(ladder_space(tmp_path))
    assert [p["loss.lmbda"] for p in rate_points(spec)] == [0.0483, 0.0067, 0.013, 0.025]  # the start point first
    starts = start_spec(spec)
    assert starts.trial_count() == 2 and starts.file.ladder is None
    assert {c["loss"]["lmbda"] for c in starts.configs()} == {0.0483}
    phase = fine_tune_spec(spec)
    assert phase.trial_count() == 3 and phase.budget() == 10  # fine_tune sets schedule.lr: one lr left
    assert {c["loss"]["lmbda"] for c in phase.configs()} == {0.0067, 0.013, 0.025}
    start = next(starts.configs())
    configs = list(fine_tune_configs(spec, start, "/ckpt/start"))
    assert [c["loss"]["lmbda"] for c in configs] == [0.0067, 0.013, 0.025]
    assert all(c["model"]["init_from"] == "/ckpt/start" and c["schedule"]["iterations"] == 10
               and c["schedule"]["lr"] == 5e-4 and c["data"] == start["data"] for c in configs)
    assert start["model"].get("init_from") is None  # the start point's config is not changed


BAD = {
    "pbt": (None, {"scheduler": {"type": "pbt", "pbt": {"perturbation_interval": 10, "mutations": {"lr": [1e-3, 3e-3]}}}},
            "ladder", "a ladder runs with scheduler type asha or fifo"),
    "start_not_a_rate_key": ({"start": {"schedule.lr": 1e-3}}, {}, "ladder.start",
                              "must give a value for each rate key that varies (loss.lmbda)"),
    "start_not_in_grid": ({"start": {"loss.lmbda": 0.1}}, {}, "ladder.start.loss.lmbda",
                           "must be one of the grid values [0.0067, 0.013, 0.025, 0.0483], got 0.1"),
    "fine_tune_model": ({"start": {"loss.lmbda": 0.0483}, "fine_tune": {"model.N": 16}}, {},
                        "ladder.fine_tune.model.N", "keeps the start point's rate family and model"),
    "fine_tune_unknown": ({"start": {"loss.lmbda": 0.0483}, "fine_tune": {"schedule.lrr": 1e-4}}, {},
                          "ladder.fine_tune.schedule.lrr", "not a trial key"),
    "fine_tune_primitive": ({"start": {"loss.lmbda": 0.0483}, "fine_tune": {"schedule.lr": {"grid": [1e-4]}}}, {},
                            "ladder.fine_tune.schedule.lr", "takes a plain value"),
    "fine_tune_invalid": ({"start": {"loss.lmbda": 0.0483}, "fine_tune": {"schedule.iterations": 0}}, {},
                          "ladder.fine_tune", "invalid at trial.schedule.iterations"),
    "grace_over_fine_tune_budget": ({"start": {"loss.lmbda": 0.0483}, "fine_tune": {"schedule.iterations": 5}}, {},
                                    "scheduler.grace_period", "in the fine-tune phase, whose budget is 5"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_ladders_are_refused(tmp_path, case):
    ladder, sections, where, message = BAD[case]
    path = ladder_space(tmp_path, ladder, **sections)
    with pytest.raises(SpaceError) as refused:
        load_space(path)
    assert refused.value.key_path == where and message in str(refused.value), str(refused.value)
    assert str(refused.value).startswith(str(path))


def test_a_ladder_needs_rate_points(tmp_path):
    path = ladder_space(tmp_path)
    space = yaml.safe_load(path.read_text())
    space["trial"]["loss"]["lmbda"] = 0.013
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(SpaceError, match="no rate key varies: make one of trial.loss.lmbda"):
        load_space(path)


def test_the_old_ladder_anchor_key_is_refused_naming_ladder_start(tmp_path):
    """``ladder.anchor`` was renamed ``ladder.start``: a space file with it stops before anything starts."""
    path = ladder_space(tmp_path, {"anchor": {"loss.lmbda": 0.0483}})
    with pytest.raises(SpaceError) as refused:
        load_space(path)
    assert refused.value.key_path == "ladder.anchor" and str(refused.value).startswith(f"{path}: ladder.anchor: ")
    assert "renamed to ladder.start (same meaning: the start point" in str(refused.value)


def test_a_search_started_before_the_rename_still_loads_its_stored_space_and_ladder_json(tmp_path):
    """A search's own stored space copy and ``ladder.json`` written with the old ``anchor`` names still read
    (resume), under the new names; a space file given by the user with them is refused (above)."""
    from search.experiment.ladder_plan import LadderPlan
    from search.space.load import load_stored_space

    store = ExperimentStore(tmp_path / "exp")
    store.create()
    stored = yaml.safe_load(ladder_space(tmp_path, {"anchor": {"loss.lmbda": 0.0483}}).read_text())
    store.write_text("space.yaml", yaml.safe_dump(stored))
    spec = load_stored_space(store, "space.yaml")
    assert spec.file.ladder.start == {"loss.lmbda": 0.0483} and start_spec(spec).trial_count() == 2
    store.write_text("ladder.json", '{"families": [{"anchor_trial": "t1", "name": "lr=0.001", "family": "f1", '
                                    '"checkpoint": "/ckpt/t1", "anchor_run": "run-1"}], "configs": [{"a": 1}]}')
    (family,) = LadderPlan.load(store).families
    assert (family.start_trial, family.start_run, family.checkpoint) == ("t1", "run-1", "/ckpt/t1")
    assert LadderPlan.load(store).lines() == ["  lr=0.001: fine-tuned from start point t1"]


def test_run_resume_if_exists_takes_a_renamed_space_as_the_one_stored_before_the_rename(tmp_path):
    """The stored copy is the full dump of the space (``search.anchor: null`` included, ``ladder.anchor``): the
    same space with the new names is the same search, and ``resume`` reads that copy too."""
    from search.experiment.state import SearchState
    from search.space.load import load_stored_space
    from search.tuning.tuner import check_same_space, space_text

    path = ladder_space(tmp_path)
    spec = load_space(path)
    store = ExperimentStore(tmp_path / "exp")
    store.create()
    SearchState(spec.name, "sqlite:///unused.db", "").save(store)
    old = yaml.safe_load(space_text(spec))
    old["search"] = {("anchor" if k == "baseline" else k): v for k, v in old["search"].items()}
    old["ladder"] = {("anchor" if k == "start" else k): v for k, v in old["ladder"].items()}
    assert "anchor" in old["search"] and "anchor" in old["ladder"]  # as the code before the rename wrote it
    store.write_text("space.yaml", yaml.safe_dump(old, sort_keys=False))
    check_same_space(spec, path, store)  # no difference: continued, not refused
    assert load_stored_space(store, "space.yaml").file == spec.file


def test_best_export_of_a_ladder_writes_a_ladder(tmp_path):
    """The winners of a ladder search (a start point and fine-tuned rate points) become a ladder space again."""
    from search.tracking.queries import ladder_template

    spec = load_space(ladder_space(tmp_path))
    start = next(start_spec(spec).configs())
    tuned = list(fine_tune_configs(spec, start, "/ckpt"))
    template, ladder = ladder_template([tuned[0], start, *tuned[1:]], ["fine_tune", "start", "fine_tune", "fine_tune"])
    assert ladder == {"start": {"loss.lmbda": 0.0483}, "fine_tune": {"schedule.iterations": 10, "schedule.lr": 5e-4}}
    assert template["loss"]["lmbda"] == {"grid": sorted(LAMBDAS)} and "init_from" not in template["model"]
    assert template["schedule"] == start["schedule"]
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump({"name": "again", "trial": template, "ladder": ladder,
                                    "scheduler": {"type": "fifo"}}))
    assert [p["loss.lmbda"] for p in rate_points(load_space(path))] == [0.0483, 0.0067, 0.013, 0.025]
    assert ladder_template([start, start], [None, None]) is None  # not a ladder: the usual export
    # runs of a ladder search started before the rename carry the old role "anchor": still the start point
    assert ladder_template([tuned[0], start], ["fine_tune", "anchor"])[1]["start"] == {"loss.lmbda": 0.0483}


def test_estimate_prices_the_ladder_beside_the_from_scratch_grid(tmp_path, capsys):
    from search.analysis.estimate import plan_ladder
    from search.cli import main

    path = ladder_space(tmp_path)
    starts, tuned = plan_ladder(load_space(path))
    assert [t.iterations for t in starts] == [40, 40] and [t.iterations for t in tuned] == [10] * 6
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "ladder (2 start point(s) from scratch, then 6 rate point(s) fine-tuned from them" in out
    assert "80 + 60 = 140 iterations" in out
    assert "from scratch (the same 8 trials, no ladder): 320 iterations" in out and "the ladder is 44% of it" in out


def test_only_finished_starts_are_fine_tuned_and_each_family_says_why(tmp_path):
    from types import SimpleNamespace

    from search.tuning.ladder import plan

    spec = load_space(ladder_space(tmp_path))
    low_lr, high_lr = list(start_spec(spec).configs())[:1] * 2
    high_lr = {**high_lr, "schedule": {**high_lr["schedule"], "lr": 3e-3}}

    from ray import tune

    def result(trial_id, config, iterations, error=None, **metrics):
        folder = tmp_path / trial_id
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"weights")  # no checksums recorded: nothing to verify
        return SimpleNamespace(config=config, error=error, path=f"/r/{trial_id}",
                               metrics={"trial_id": trial_id, "iterations": iterations, **metrics},
                               checkpoint=tune.Checkpoint(str(folder)))

    finished = plan(spec, [result("a", low_lr, 40), result("b", high_lr, 20)], {"a": "run-a"}, ExperimentStore(tmp_path))
    assert [(f.start_trial, f.checkpoint, f.start_run) for f in finished.families] == [
        ("a", str(tmp_path / "a"), "run-a"), ("b", None, None)]
    assert finished.families[1].reason == "stopped by the scheduler at iteration 20 of 40"
    assert len(finished.configs) == 3 and {c["model"]["init_from"] for c in finished.configs} == {str(tmp_path / "a")}
    assert "not fine-tuned: start point b stopped by the scheduler" in "\n".join(finished.lines())
    others = plan(spec, [result("c", low_lr, 10, error=RuntimeError("boom")),
                         result("d", high_lr, 40, diverged=1, diverged_reason="non-finite loss at iteration 7")], {},
                  ExperimentStore(tmp_path))
    assert [f.reason for f in others.families] == ["errored (RuntimeError)",
                                                   "diverged (non-finite loss at iteration 7)"]
    assert others.configs == []


def test_a_tampered_start_checkpoint_is_refused_by_checksum_and_the_fine_tunes_start_from_the_older_one(tmp_path,
                                                                                                          capsys):
    from types import SimpleNamespace

    from ray import tune

    from search.tuning.ladder import plan
    from tests.test_preemption import _trial_checkpoints
    from trainables.training.warm_start import WarmStartError, read_source

    spec = load_space(ladder_space(tmp_path))
    start = next(start_spec(spec).configs())
    older, newest = _trial_checkpoints(tmp_path, [2, 4])  # in a Ray trial folder of trial abc12_00000
    with open(newest / "state.pt", "r+b") as stream:  # same size, other bytes: only the checksums tell
        stream.seek(200)
        stream.write(b"\xff" * 8)
    source, weights, _ = read_source(newest)  # damaged by the time a fine-tune loads it: the older one loads
    assert source == str(older / "state.pt") and weights
    assert (f"model.init_from: {newest} fails its checksums (checksums.json): state.pt differs from "
            f"what was written (SHA-256 mismatch); loading {older / 'state.pt'} instead") in capsys.readouterr().out
    result = SimpleNamespace(config=start, error=None, path=str(newest.parent),
                             metrics={"trial_id": "abc12_00000", "iterations": 40},
                             checkpoint=tune.Checkpoint(str(newest)))
    ladder = plan(spec, [result], {}, ExperimentStore(tmp_path))
    (family,) = ladder.families
    assert family.checkpoint == str(older) and family.damaged == [f"{newest}: state.pt differs from what was "
                                                                  "written (SHA-256 mismatch)"]
    assert {c["model"]["init_from"] for c in ladder.configs} == {str(older)}
    assert f"passed over damaged checkpoint {newest}" in "\n".join(ladder.lines())
    with open(older / "state.pt", "r+b") as stream:  # no older one left to fall back to: refused
        stream.seek(200)
        stream.write(b"\xff" * 8)
    with pytest.raises(WarmStartError, match=r"fails its checksums \(checksums.json\): state.pt differs"):
        read_source(older)


def test_the_fine_tune_phase_gets_the_concurrency_cap_of_any_phase(tmp_path):
    """Data-parallel trials: no more fine-tune coordinators at once than the cluster's workers fit (the cap), as
    in the start phase; search.max_concurrent still applies when lower."""
    from ray.tune.search import ConcurrencyLimiter

    from search.tuning.ladder import ExplicitConfigs, search_algorithm
    from search.tuning.searchers import concurrency_limit

    spec = load_space(ladder_space(tmp_path))
    configs = list(fine_tune_configs(spec, next(start_spec(spec).configs()), "/ckpt/a"))
    capped = search_algorithm(spec, configs, cap=2)
    assert isinstance(capped, ConcurrencyLimiter) and capped.max_concurrent == 2
    assert isinstance(search_algorithm(spec, configs), ExplicitConfigs)  # no cap, no max_concurrent: no limit
    lower = load_space(ladder_space(tmp_path, name="lower", search={"max_concurrent": 1}))
    assert search_algorithm(lower, configs, cap=2).max_concurrent == 1 == concurrency_limit(lower, 2)
