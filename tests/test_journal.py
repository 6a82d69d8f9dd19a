"""The tracking journal and its sender, against a real SQLite MLflow store behind a client that fails
on demand (an outage, an answer lost after the request landed, a crash before the offset was saved)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from search.experiment.store import ExperimentStore
from search.tracking import journal as J
from search.tracking import names as T
from search.tracking.client import client_for
from search.tracking.trial_logger import MlflowTrialLogger
from search.tracking.sender import Sender
from tests.conftest import tiny_trial
from trainables import metrics as M


class Down(Exception):
    """What MLflow's client raises when the server does not answer (no error_code: transient)."""


class FlakyClient:
    """A real MLflow client that raises while ``down``; ``lose_answers`` calls land, then raise."""

    def __init__(self, uri: str, delay: float = 0.0):
        self.real = client_for(uri)
        self.down = False
        self.lose_answers = 0
        self.delay = delay
        self.calls: list[str] = []

    def __getattr__(self, name):
        method = getattr(self.real, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            if self.down:
                time.sleep(self.delay)
                raise Down(f"{name}: connection refused")
            result = method(*args, **kwargs)
            if self.lose_answers and name == "log_batch":
                self.lose_answers -= 1
                raise Down(f"{name}: read timed out")
            return result
        return call


class Trial:
    def __init__(self, trial_id: str):
        self.trial_id, self.config = trial_id, tiny_trial(**{"schedule.iterations": 8})
        self.latest_checkpoint_result, self.last_result, self.path = None, {}, f"/r/{trial_id}"

    def __str__(self) -> str:
        return self.trial_id


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """One SQLite store for the module (creating one takes seconds); each test has its own parent run."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = client_for(uri)
    experiment_id = client.create_experiment("outage", artifact_location=(folder / "artifacts").as_uri())
    return uri, client, experiment_id


@pytest.fixture
def mlflow_store(mlflow_db, tmp_path):
    uri, client, experiment_id = mlflow_db
    parent = client.create_run(experiment_id, tags={T.TAG_ROLE: T.ROLE_SEARCH}).info.run_id
    folder = ExperimentStore(tmp_path / "experiment")
    folder.create()
    return uri, client, parent, folder


def _logger(uri, parent, folder, flaky, **sender_options):
    journal = J.Journal(folder)
    journal.create()
    sender = Sender(journal, uri, "outage", parent, client_factory=lambda: flaky, **sender_options)
    return MlflowTrialLogger(uri, "outage", parent, journal=journal, sender=sender, recover_from_mlflow=False), sender


def _report(logger, trial, step: int) -> None:
    logger.on_trial_result(0, [], trial, {M.ITERATIONS: step, M.EVAL_RD_LOSS: 1.0 / step, "trial_id": trial.trial_id})


def _steps(client, run_id: str, metric: str = M.EVAL_RD_LOSS) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, metric))


def _runs(client, parent: str) -> dict[str, object]:
    experiment = client.get_experiment_by_name("outage")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{T.TAG_PARENT}` = '{parent}'")
    return {r.data.tags[T.TAG_TRIAL_ID]: r for r in runs}


def test_outage_keeps_records_in_order_then_replays_them_once(mlflow_store):
    uri, client, parent, folder = mlflow_store
    flaky = FlakyClient(uri)
    logger, sender = _logger(uri, parent, folder, flaky)
    a, b = Trial("a"), Trial("b")
    logger.on_trial_start(0, [], a)
    _report(logger, a, 2)
    sender.ship_pending()
    flaky.down = True
    logger.on_trial_start(0, [], b)  # a trial that starts during the outage: its run is created later
    for step in (4, 6):
        _report(logger, a, step)
        _report(logger, b, step - 2)
    a.last_result = {M.ITERATIONS: 8}
    _report(logger, a, 8)
    logger.on_trial_complete(0, [], a)
    with pytest.raises(Down):
        sender.ship_pending()
    assert J.Journal(folder).shipped == sender.journal.shipped == 2  # a's run and its step 2

    # the offset is durable: a new journal over the same folder (a later `sync`) picks up there
    flaky.down = False
    again = J.Journal(folder)
    total = len(again.records())
    assert again.pending == total - 2
    shipped = Sender(again, uri, "outage", parent, client_factory=lambda: flaky).ship_pending()
    assert shipped == total - 2 and again.pending == 0 and J.Journal(folder).pending == 0
    runs = _runs(client, parent)
    assert set(runs) == {"a", "b"}
    assert _steps(client, runs["a"].info.run_id) == [2, 4, 6, 8]
    assert _steps(client, runs["b"].info.run_id) == [2, 4]
    assert runs["a"].info.status == "FINISHED" and runs["a"].data.tags[T.TAG_STATUS] == T.STATUS_COMPLETED
    assert runs["b"].data.params["schedule.iterations"] == "8"
    assert J.Journal(folder).run_ids == {J.PARENT: parent, "a": runs["a"].info.run_id, "b": runs["b"].info.run_id}


def test_a_batch_whose_answer_was_lost_is_not_logged_twice(mlflow_store):
    uri, client, parent, folder = mlflow_store
    flaky = FlakyClient(uri)
    logger, sender = _logger(uri, parent, folder, flaky)
    a = Trial("a")
    logger.on_trial_start(0, [], a)
    _report(logger, a, 2)
    sender.ship_pending()
    _report(logger, a, 4)
    _report(logger, a, 6)
    flaky.lose_answers = 1  # MLflow stored steps 4 and 6, the client never heard back
    with pytest.raises(Down):
        sender.ship_pending()
    sender.ship_pending()
    assert _steps(client, _runs(client, parent)["a"].info.run_id) == [2, 4, 6]
    assert _steps(client, _runs(client, parent)["a"].info.run_id, M.ITERATIONS) == [2, 4, 6]


def test_a_crash_before_the_offset_was_saved_creates_no_second_run_and_no_duplicate_steps(mlflow_store):
    uri, client, parent, folder = mlflow_store
    flaky = FlakyClient(uri)
    logger, sender = _logger(uri, parent, folder, flaky)
    a = Trial("a")
    logger.on_trial_start(0, [], a)
    for step in (2, 4):
        _report(logger, a, step)
    sender.ship_pending()
    # the driver died after MLflow took everything but before tracking_shipped.json said so
    (Path(folder.location) / J.SHIPPED_FILE).write_text('{"shipped": 0, "runs": {}}')
    restarted = J.Journal(folder)
    assert restarted.pending == len(restarted.records())
    Sender(restarted, uri, "outage", parent, client_factory=lambda: FlakyClient(uri)).ship_pending()
    runs = _runs(client, parent)
    assert len(runs) == 1
    assert _steps(client, runs["a"].info.run_id) == [2, 4]


def test_a_resumed_logger_knows_its_trials_from_the_journal_without_asking_mlflow(mlflow_store):
    uri, client, parent, folder = mlflow_store
    flaky = FlakyClient(uri)
    logger, sender = _logger(uri, parent, folder, flaky)
    a = Trial("a")
    logger.on_trial_start(0, [], a)
    for step in (2, 4):
        _report(logger, a, step)
    flaky.down = True  # the server is down across the driver restart: nothing was shipped yet
    resumed, resumed_sender = _logger(uri, parent, folder, flaky)
    resumed.on_trial_start(0, [], a)  # restored from its checkpoint at 4: it re-reports 4 exactly
    _report(resumed, a, 4)
    _report(resumed, a, 6)
    creations = [r for r in J.Journal(folder).records() if r["op"] == J.CREATE_RUN]
    assert len(creations) == 1
    flaky.down = False
    resumed_sender.ship_pending()
    assert _steps(client, _runs(client, parent)["a"].info.run_id) == [2, 4, 6]


def test_the_background_sender_never_blocks_hooks_backs_off_and_says_so_once(mlflow_store):
    uri, client, parent, folder = mlflow_store
    flaky = FlakyClient(uri, delay=0.3)  # each failing request takes a while, like a real timeout
    messages: list[str] = []
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        time.sleep(0.05)

    logger, sender = _logger(uri, parent, folder, flaky, notify=messages.append, backoff=(1.0, 4.0), sleep=sleep)
    a = Trial("a")
    flaky.down = True
    sender.start()
    started = time.time()
    logger.on_trial_start(0, [], a)
    for step in range(2, 42, 2):
        _report(logger, a, step)
    assert time.time() - started < 1.0  # 21 hooks while every MLflow call fails after 0.3 s
    deadline = time.time() + 10
    while len(delays) < 5 and time.time() < deadline:
        time.sleep(0.05)
    assert delays[:5] == [1.0, 2.0, 4.0, 4.0, 4.0]  # exponential backoff, capped
    unreachable = [m for m in messages if "unreachable" in m]
    assert len(unreachable) == 1 and "records pending" in unreachable[0]
    flaky.down = False
    assert sender.close(timeout=20) == 0
    assert [m for m in messages if "caught up" in m]
    assert _steps(client, _runs(client, parent)["a"].info.run_id) == list(range(2, 42, 2))


def test_a_search_started_offline_gets_its_parent_run_when_the_server_answers(mlflow_store, tmp_path):
    from search.experiment.state import SearchState
    from search.tracking import session as tracking_session

    uri, client, _, folder = mlflow_store
    state = SearchState("outage", uri, "")
    state.save(folder)
    tracking_session.journal_search_run(folder, "outage", "search:\n  metric: eval/rd_loss\n", ["loss.lmbda"])
    flaky = FlakyClient(uri)
    journal = J.Journal(folder)
    sender = Sender(journal, uri, "outage", None, client_factory=lambda: flaky)
    logger = MlflowTrialLogger(uri, "outage", None, journal=journal, sender=sender, recover_from_mlflow=False)
    a = Trial("a")
    logger.on_trial_start(0, [], a)
    _report(logger, a, 2)
    tracking_session.sync(folder, state, notify=lambda message: None)
    parent = SearchState.load(folder).parent_run_id
    assert parent and client.get_run(parent).data.tags[T.TAG_SEARCH_DIR] == folder.location
    assert _steps(client, _runs(client, parent)["a"].info.run_id) == [2]


def test_concurrent_appends_keep_one_line_per_record(tmp_path):
    folder = ExperimentStore(tmp_path / "experiment")
    folder.create()
    journal = J.Journal(folder)

    def write(trial: str) -> None:
        for step in range(200):
            journal.append(J.BATCH, trial, metrics=[[M.ITERATIONS, float(step), 0, step]])

    threads = [threading.Thread(target=write, args=(t,)) for t in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = J.Journal(folder).records()
    assert [r["seq"] for r in records] == list(range(600))
    for trial in "abc":
        assert [r["metrics"][0][3] for r in records if r["trial"] == trial] == list(range(200))


def test_a_line_cut_short_by_a_crash_is_dropped_and_the_next_record_starts_clean(tmp_path):
    folder = ExperimentStore(tmp_path / "experiment")
    folder.create()
    journal = J.Journal(folder)
    journal.append(J.STATUS, None, status="RUNNING", time=1)
    with open(Path(folder.location) / J.JOURNAL_FILE, "a") as stream:
        stream.write('{"seq": 1, "op": "batch", "trial": "a", "metr')  # the driver died mid-append
    reopened = J.Journal(folder)
    assert [r["seq"] for r in reopened.records()] == [0]
    reopened.append(J.STATUS, None, status="FINISHED", time=2)
    assert [(r["seq"], r["status"]) for r in J.Journal(folder).records()] == [(0, "RUNNING"), (1, "FINISHED")]


def test_a_search_recorded_before_the_journal_existed_continues_its_runs(mlflow_store):
    uri, client, parent, folder = mlflow_store
    a = Trial("a")
    direct = MlflowTrialLogger(uri, "outage", parent)  # what older versions wrote: straight to MLflow
    direct.on_trial_start(0, [], a)
    for step in (2, 4):
        _report(direct, a, step)
    journal = J.Journal(folder)  # resumed by this version: no journal yet, the runs are in MLflow
    sender = Sender(journal, uri, "outage", parent, client_factory=lambda: FlakyClient(uri))
    resumed = MlflowTrialLogger(uri, "outage", parent, journal=journal, sender=sender, recover_from_mlflow=True)
    resumed.on_trial_start(0, [], a)
    _report(resumed, a, 4)  # recomputed after the restore: already in MLflow
    _report(resumed, a, 6)
    sender.ship_pending()
    assert len(_runs(client, parent)) == 1
    assert _steps(client, _runs(client, parent)["a"].info.run_id) == [2, 4, 6]
    assert not [r for r in journal.records() if r["op"] == J.CREATE_RUN]


def _summary_fields(lmbdas=(0.0035, 0.013)) -> dict:
    """The end-of-search summary of two rate points, as print_summary journals it."""
    from search.monitor import summary

    entries = [summary.Entry(f"t{i}", tiny_trial(**{"loss.lmbda": lmbda}),
                             {M.EVAL_RD_LOSS: 0.5 + i, M.EVAL_BPP: 0.25 * (i + 1), M.EVAL_PSNR: 30.0 + i})
               for i, lmbda in enumerate(lmbdas)]
    best = summary.best_per_rate_point(entries)
    assert len(best) == 2
    return summary.parent_summary(best, summary.Ranking(), J.PARENT_RUN_PLACEHOLDER)


def _parent_summary_in_mlflow(client, parent: str) -> tuple[dict, dict, str, str]:
    """The summary's tags, metric histories (key -> steps), artifact text and experiment note."""
    run = client.get_run(parent)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(T.TAG_BEST_PREFIX)}
    histories = {k: [(int(m.step), m.value) for m in client.get_metric_history(parent, k)]
                 for k in run.data.metrics if k.startswith(T.METRIC_BEST_PREFIX)}
    names = [f.path for f in client.list_artifacts(parent)]
    text = Path(client.download_artifacts(parent, T.ARTIFACT_BEST_TABLE)).read_text() \
        if T.ARTIFACT_BEST_TABLE in names else ""
    note = client.get_experiment(run.info.experiment_id).tags.get("mlflow.note.content", "")
    return tags, histories, text, note


def test_the_summary_survives_an_outage_and_a_lost_answer_and_arrives_once(mlflow_store):
    uri, client, parent, folder = mlflow_store
    flaky = FlakyClient(uri)
    journal = J.Journal(folder)
    journal.create()
    sender = Sender(journal, uri, "outage", parent, client_factory=lambda: flaky)
    fields = _summary_fields()
    journal.append(J.SUMMARY, None, **fields)
    flaky.down = True  # the outage print_summary used to lose the summary to
    with pytest.raises(Down):
        sender.ship_pending()
    assert J.Journal(folder).pending == 1 and _parent_summary_in_mlflow(client, parent)[0] == {}
    flaky.down, flaky.lose_answers = False, 1  # log_batch lands, its answer is lost
    with pytest.raises(Down):
        sender.ship_pending()
    assert J.Journal(folder).pending == 1
    # a later `lic-search sync`: a new sender over the same folder replays the record
    assert Sender(J.Journal(folder), uri, "outage", parent, client_factory=lambda: flaky).ship_pending() == 1
    assert J.Journal(folder).pending == 0
    tags, histories, text, note = _parent_summary_in_mlflow(client, parent)
    assert tags == fields["tags"] and len(tags) == 2
    assert tags[T.TAG_BEST_PREFIX + "λ_0.0035 distortion_mse"].endswith("(trial t0, eval/rd_loss 0.5)")
    assert set(histories) == {m[0] for m in fields["metrics"]} and len(histories) == 6
    assert all(len(points) == 1 for points in histories.values())  # once, despite the replay
    assert histories[f"{T.METRIC_BEST_PREFIX}λ_0.013 distortion_mse/{M.EVAL_PSNR}"] == [(0, 31.0)]
    assert text == fields["text"] and "| λ=0.013, distortion=mse | t1 | 1.5 |" in text
    assert f"parent run `{parent}`" in note and J.PARENT_RUN_PLACEHOLDER not in note


def test_record_summary_waits_behind_an_outage_and_ships_with_sync(mlflow_store):
    from types import SimpleNamespace

    from search.tracking import session as tracking_session

    uri, client, parent, folder = mlflow_store
    state = SimpleNamespace(tracking_uri=uri, name="outage", parent_run_id=parent)
    journal = J.Journal(folder)
    journal.create()
    journal.append(J.BATCH, None, tags={"left": "over"})  # what the search could not ship during an outage
    fields = _summary_fields()
    assert tracking_session.record_summary(folder, state, fields) == 2  # queued behind it, in order
    assert _parent_summary_in_mlflow(client, parent)[0] == {}
    assert tracking_session.sync(folder, state, notify=lambda message: None) == 2
    assert _parent_summary_in_mlflow(client, parent)[0] == fields["tags"]
    assert client.get_run(parent).data.tags["left"] == "over"
    # nothing pending and the server answers: record_summary ships at once
    assert tracking_session.record_summary(folder, state, {**fields, "tags": {T.TAG_BEST_PREFIX + "x": "y"}}) == 0
    assert client.get_run(parent).data.tags[T.TAG_BEST_PREFIX + "x"] == "y"
