"""MLflow filter values are quoted in one place: a storage path holding a quote (``o'brien``, or both kinds)
finds its own search's parent run again instead of breaking the lookup or matching another search."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.experiment.state import SearchState
from search.experiment.store import ExperimentStore
from search.tracking import names as T
from search.tracking import session as tracking_session
from search.tracking.client import client_for, ensure_experiment
from search.tracking.filters import exact, quoted, tags_filter


def test_values_are_quoted_by_the_kind_they_do_not_hold():
    assert quoted("/data/results") == "'/data/results'"
    assert quoted("/data/o'brien") == '"/data/o\'brien"'
    assert quoted('/data/"x"') == "'/data/\"x\"'"
    with pytest.raises(ValueError):
        quoted("/a'b\"c")
    assert tags_filter({"k": "/a'b\"c"}) == "tags.`k` LIKE '/a_b_c'"


@pytest.mark.parametrize("folder_name", ["o'brien results", 'both \' and " here'])
def test_a_quoted_storage_path_finds_its_parent_run_once(tmp_path: Path, folder_name: str):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    # A look-alike search whose path a LIKE pattern would also match: it must not be taken for ours.
    look_alike = str(tmp_path / folder_name.replace("'", "x").replace('"', "y") / "exp")
    client.create_run(ensure_experiment(client, "quoted"), tags={T.TAG_ROLE: T.ROLE_SEARCH,
                                                                 T.TAG_SEARCH_DIR: look_alike})
    store = ExperimentStore(tmp_path / folder_name / "exp")
    store.create()
    state = SearchState("quoted", uri, "")
    state.save(store)
    tracking_session.journal_search_run(store, "quoted", "name: quoted\n", ["loss.lmbda"])
    tracking_session.sync(store, state, notify=lambda message: None)
    parent = SearchState.load(store).parent_run_id
    assert client.get_run(parent).data.tags[T.TAG_SEARCH_DIR] == store.location

    # The journal shipped again from scratch (a lost offset) finds the same parent run: no second one.
    again = ExperimentStore(tmp_path / folder_name / "exp")
    fresh = SearchState("quoted", uri, "")
    tracking_session.journal_search_run(again, "quoted", "name: quoted\n", ["loss.lmbda"])
    tracking_session.sync(again, fresh, notify=lambda message: None)
    tags = {T.TAG_ROLE: T.ROLE_SEARCH, T.TAG_SEARCH_DIR: store.location}
    experiment = ensure_experiment(client, "quoted")
    found = exact(client.search_runs([experiment], filter_string=tags_filter(tags)), tags)
    assert [run.info.run_id for run in found] == [parent]
