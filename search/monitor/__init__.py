"""What a person sees of a running or finished search: one progress view, the live console, ``status`` and the
best-per-rate-point summary.

Modules: :mod:`~search.monitor.progress` (the view), :mod:`~search.monitor.console` (live, a Tune callback),
:mod:`~search.monitor.status` (from the experiment folder, any terminal), :mod:`~search.monitor.summary`.
"""
