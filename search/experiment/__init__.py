"""The experiment folder: where a search keeps its state, its driver records, its Ray session and its training
index. The bottom layer of ``search``: it imports nothing else of the package but :mod:`search.errors`.

Modules: :mod:`~search.experiment.store` (the folder, local or a URI), :mod:`~search.experiment.state` (the state
file and the space copy), :mod:`~search.experiment.drivers` (one record per driver process; process liveness),
:mod:`~search.experiment.ray_session` (the local Ray instance a driver started), :mod:`~search.experiment.train_index`
(the training files, listed once).
"""
