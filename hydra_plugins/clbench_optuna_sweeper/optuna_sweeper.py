"""The Hydra plugin class of ``hydra/sweeper=optuna`` (conf/hydra/sweeper/optuna.yaml).

Hydra instantiates sweepers only from the ``hydra_plugins`` namespace and imports every module
in it at start-up, so this module stays light: the search itself is
:class:`cl_bench.search.sweeper.OptunaSearch`, imported when the sweeper is made.
"""

from __future__ import annotations

from typing import Any, List

from hydra.plugins.sweeper import Sweeper


class ClBenchOptunaSweeper(Sweeper):
    """Hydra ``Sweeper`` delegating to :class:`cl_bench.search.sweeper.OptunaSearch` (its
    docstring lists the arguments)."""

    def __init__(self, **kwargs: Any) -> None:
        from cl_bench.search.sweeper import OptunaSearch

        self.search = OptunaSearch(**kwargs)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.search.setup(hydra_context=hydra_context, task_function=task_function,
                          config=config)
        self.launcher = self.search.launcher

    def sweep(self, arguments: List[str]) -> Any:
        return self.search.sweep(arguments)
