"""Hyperparameter search on the validation R (``clbench -m hydra/sweeper=optuna``).

* :mod:`cl_bench.search.objective`: ``search.objective`` (``val.maa``, ...) and its direction;
* :mod:`cl_bench.search.space`: Hydra sweep overrides as Optuna distributions;
* :mod:`cl_bench.search.sweeper`: the sweeper (study in the sweep directory, resumable);
* :mod:`cl_bench.search.study`: ``clbench-report`` on a study (best config, trials, plots);
* :mod:`cl_bench.search.best`: ``clbench-best <sweep> seed=0,1,2``, the best config on test.
"""
