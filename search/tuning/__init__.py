"""Running a search on Ray Tune: the Tuner built from a space, run/resume, the stratified schedulers, the search
algorithms, the cluster fit check and Ctrl-C handling.

Modules: :mod:`~search.tuning.tuner` (build, run, resume), :mod:`~search.tuning.schedulers` (ASHA/FIFO/PBT by rate
point), :mod:`~search.tuning.searchers` (grid/random, Optuna), :mod:`~search.tuning.resource_check`,
:mod:`~search.tuning.interrupt`.
"""
