"""Answers computed from a search: R-D curves, BD-rate, rate families and training speed, cost estimates,
the report, and the LOF sweep over a finished search's winners.

Modules: :mod:`~search.analysis.curves`, :mod:`~search.analysis.bdrate`, :mod:`~search.analysis.families`,
:mod:`~search.analysis.estimate` and :mod:`~search.analysis.step_timing`, :mod:`~search.analysis.report` (computed)
and :mod:`~search.analysis.report_render` (written), :mod:`~search.analysis.lof_sweep`.
"""
