"""``clbench-report`` (:mod:`cl_bench.report.cli`): run directories -> tables and figures.

The modules, each importing only those before it:

* :mod:`~cl_bench.report.load`: finding runs and reading each into one record (:func:`load_runs`).
* :mod:`~cl_bench.report.groups`: grouping runs by config but the seed, mean ± std per group.
* :mod:`~cl_bench.report.tables`: ``report.md`` and ``report.tex`` (numbers as text).
* :mod:`~cl_bench.report.figures`: ``heatmaps.png``, ``curves.png``, ``losses.png``.
* :mod:`~cl_bench.report.claim_settings`, :mod:`~cl_bench.report.claims`,
  :mod:`~cl_bench.report.claims_md`: a paper's claims judged on the runs, ``claims.csv`` and
  ``claims.md``.
* :mod:`~cl_bench.report.cli`: every report file (:func:`write_report`) and the command line.

Nothing is re-exported here: import each name from its module.
"""
