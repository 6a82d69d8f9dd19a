"""An Optuna search on Optuna's own storage, for real: `lic-search run` killed with SIGKILL mid-search, then
`lic-search resume` continues the same studies from the journal file in the experiment folder, and
`lic-search ui --optuna` serves optuna-dashboard on them (checked in headless Chromium)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import requests

from tests.test_faults_and_clusters import (
    LIC_SEARCH,
    free_port,
    kill_orphaned_ray,
    kill_session,
    ray_daemons,
    start,
    wait_for,
)
from tests.test_search_e2e import write_space

REPO = Path(__file__).resolve().parents[1]
COMPLETE, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
STUDIES = ["optuna-killed: loss.lmbda=0.0067", "optuna-killed: loss.lmbda=0.013"]


def _journal(folder: Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(folder / "optuna_journal.log")))


def _told(folder: Path) -> dict[str, dict[str, tuple]]:
    """Per study, Ray trial id -> (Optuna number, state, value) of every trial the journal holds."""
    if not (folder / "optuna_journal.log").is_file():
        return {}
    storage = _journal(folder)
    return {summary.study_name: {t.user_attrs["ray_trial_id"]: (t.number, t.state, t.value)
                                 for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials}
            for summary in optuna.get_all_study_summaries(storage)}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Two λ strata x two sampled learning rates; the driver is killed with SIGKILL once a trial is told
    COMPLETE, then resumed. The experiment folder, the journal before the kill and after the resume."""
    tmp_path = tmp_path_factory.mktemp("optuna-journal")
    space = write_space(tmp_path, "optuna-killed", {
        "model.auxt.enabled": False, "loss.lmbda": {"grid": [0.0067, 0.013]},
        "schedule.lr": {"loguniform": [1e-4, 1e-2]}, "schedule.iterations": 60, "schedule.eval_every": 10},
        {"algorithm": "optuna", "num_samples": 2, "max_concurrent": 2, "seed": 0}, {"type": "fifo"})
    results, uri = tmp_path / "results", f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = results / "optuna-killed"
    daemons = ray_daemons()
    driver = start(LIC_SEARCH + ["run", str(space), "--storage-path", str(results), "--tracking-uri", uri],
                   tmp_path / "driver.log")
    try:
        try:
            wait_for(lambda: any(state == COMPLETE for study in _told(folder).values()
                                 for _, state, _ in study.values()), 600, "a trial told COMPLETE", interval=0.5)
        except BaseException:
            kill_session(driver)
            raise
        os.kill(driver.pid, signal.SIGKILL)  # the driver only, mid-search
        driver.wait(timeout=30)
        before = _told(folder)
        resumed = subprocess.run(LIC_SEARCH + ["resume", str(folder)], capture_output=True, text=True, timeout=900,
                                 env={**os.environ, "CI": "1"})
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        kill_orphaned_ray(daemons)
    return folder, before, _told(folder)


@pytest.mark.slow
def test_a_killed_optuna_search_resumes_its_studies_from_the_journal(killed_and_resumed):
    from ray.tune import ExperimentAnalysis

    folder, before, after = killed_and_resumed
    assert sorted(after) == STUDIES  # the same two studies, one per λ, nothing created anew
    ray_trials = {trial.trial_id: trial for trial in ExperimentAnalysis(str(folder)).trials}
    assert len(ray_trials) == 4 and all(t.status == "TERMINATED" for t in ray_trials.values())
    for name, trials in after.items():
        ran = {trial_id: told for trial_id, told in trials.items() if told[1] != FAIL}
        # each study holds its two trials, told COMPLETE once; a trial asked after Ray's last save (if any) is FAIL
        assert len(ran) == 2 and all(state == COMPLETE for _, state, _ in ran.values()), (name, trials)
        assert set(ran) <= set(ray_trials)
        for trial_id, (number, state, value) in before[name].items():
            if state == COMPLETE:  # told before the kill: kept as it was, not trained or told again
                assert after[name][trial_id] == (number, state, value)
    assert set().union(*(set(t) for t in after.values())) >= set(ray_trials)  # every Ray trial is in a study
    assert any(state == COMPLETE for study in before.values() for _, state, _ in study.values())


@pytest.mark.slow
def test_ui_optuna_serves_each_stratum_study_in_optuna_dashboard(killed_and_resumed):
    sys.path.insert(0, str(REPO / "bench"))
    import ui_check

    folder, _, after = killed_and_resumed
    if ui_check.browser() is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")
    port = free_port()
    ui = subprocess.Popen(LIC_SEARCH + ["ui", "--optuna", str(folder), "--port", str(port)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        printed = []
        for line in ui.stdout:  # it prints the URL once the dashboard answers
            printed.append(line.rstrip())
            if line.startswith("http://"):
                break
        url = printed[-1]
        assert url == f"http://127.0.0.1:{port}/dashboard", printed
        assert str(folder / "optuna_journal.log") in "\n".join(printed)
        summaries = requests.get(f"http://127.0.0.1:{port}/api/studies", timeout=30).json()["study_summaries"]
        assert sorted(s["study_name"] for s in summaries) == STUDIES
        text = ""
        for _ in range(ui_check.ATTEMPTS):  # a loaded machine may need a second render
            text = ui_check.page_text(ui_check.chromium(ui_check.browser(), url, "--dump-dom"))
            if all(name in text for name in STUDIES):
                break
            time.sleep(2)
        for name in STUDIES:
            assert any(line.endswith(name) for line in text.splitlines()), (name, text[-2000:])
        study = next(s for s in summaries if s["study_name"] == STUDIES[0])
        detail = requests.get(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=30).json()
        assert sum(1 for t in detail["trials"] if t["state"] == "Complete") == 2, detail["trials"]
    finally:
        ui.terminate()  # SIGTERM: the command stops the dashboard's process group, then exits
        try:
            ui.wait(timeout=60)
        finally:
            kill_session(ui)


def _folder(tmp_path: Path, search: dict) -> Path:
    """An experiment folder as `run` leaves it before Ray: the state file and the resolved space."""
    import yaml

    from search.experiment.state import SearchState
    from search.experiment.store import ExperimentStore

    store = ExperimentStore(tmp_path / "exp")
    store.create()
    SearchState("exp", "sqlite:///unused.db", "").save(store)
    store.write_text("space.yaml", yaml.safe_dump({"name": "exp", "search": search}))
    return tmp_path / "exp"


def test_ui_optuna_names_the_journal_or_says_why_there_is_none(tmp_path: Path):
    from search.commands.ui import experiment_optuna_storage
    from search.errors import LicSearchError

    random = _folder(tmp_path / "r", {"algorithm": "random"})
    with pytest.raises(LicSearchError, match="is not an Optuna search .*search.algorithm: random"):
        experiment_optuna_storage(str(random), "unused")
    fresh = _folder(tmp_path / "o", {"algorithm": "optuna"})
    with pytest.raises(LicSearchError, match="no Optuna journal .*optuna_journal.log"):
        experiment_optuna_storage(str(fresh), "unused")
    (fresh / "optuna_journal.log").write_text("")
    assert experiment_optuna_storage(str(fresh), "unused") == str(fresh / "optuna_journal.log")
    given = _folder(tmp_path / "g", {"algorithm": "optuna", "optuna_storage": "postgresql://db/optuna"})
    assert experiment_optuna_storage(str(given), "unused") == "postgresql://db/optuna"


def test_an_optuna_search_on_s3_needs_an_optuna_storage_url():
    from types import SimpleNamespace

    from search.tuning.searchers import optuna_storage
    from trainables.errors import LicSearchError

    spec = SimpleNamespace(file=SimpleNamespace(search=SimpleNamespace(optuna_storage=None)))
    with pytest.raises(LicSearchError, match="search.optuna_storage: the Optuna journal file cannot live in s3://"):
        optuna_storage(spec, "s3://bucket/results/exp")
    assert optuna_storage(spec, "/results/exp/") == "/results/exp/optuna_journal.log"
    assert optuna_storage(spec, None) is None  # no experiment folder: in memory
