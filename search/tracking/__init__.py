"""MLflow recording and queries of a search: tag names, the client, the journal every record goes through first,
its sender, the Tune callback that records trials, readable run names, and the queries ``best``/``report`` make.

Modules: :mod:`~search.tracking.names` (tags and artifacts, defined once), :mod:`~search.tracking.client`
(connection, experiment, filter quoting), :mod:`~search.tracking.journal` (the records, appended first),
:mod:`~search.tracking.sender` (ships the journal), :mod:`~search.tracking.trial_logger` (the Tune callback),
:mod:`~search.tracking.session` (one run's journal + sender + callback), :mod:`~search.tracking.run_names`,
:mod:`~search.tracking.queries`.
"""
