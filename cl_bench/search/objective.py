"""The objective of a hyperparameter search: a stream metric of the *validation* R, by name.

``search.objective`` names it as ``val.<stat>`` (the stream's single metric group) or
``val.<metric>.<stat>`` (one metric group of a stream that mixes metrics, e.g.
``val.dice.maa`` on brain_seg_age). ``<stat>`` is a key of a metric group of
:func:`cl_bench.metrics.cl_metrics`: ``maa``, ``final_average`` (alias ``final_mean``, MFN),
``mft``, ``bwt_gem`` (alias ``bwt``), ``bwt_sefe``, ``fwt``, ``forgetting_max`` (alias
``forgetting``), ``forgetting_last``. Only the validation split can be named: a search never
chooses on test numbers.

The direction comes from the statistic and the metric's kind (:data:`cl_bench.kinds.KINDS`):
BWT and FWT are sign-adjusted (positive = better, maximised), forgetting is a loss (minimised);
``maa``, ``final_average`` and ``mft`` are raw averages in the metric's units, maximised for
accuracy / Dice / mIoU and minimised for MAE.

Floor 1: pure functions of strings and of the ``metrics.json`` dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cl_bench.errors import ClBenchError, ConfigError
from cl_bench.kinds import KINDS

#: the statistics of a metric group (cl_bench.metrics.cl_metrics) and their direction:
#: None = the metric's own (raw averages), else fixed (sign-adjusted by s_j)
STATS: dict[str, str | None] = {
    "maa": None, "final_average": None, "mft": None,
    "bwt_gem": "maximize", "bwt_sefe": "maximize", "fwt": "maximize",
    "forgetting_max": "minimize", "forgetting_last": "minimize",
}
#: other names researchers use for the same statistics
ALIASES = {"final_mean": "final_average", "mfn": "final_average", "bwt": "bwt_gem",
           "forgetting": "forgetting_max"}
#: each metric's direction, from the task-kinds table
METRIC_DIRECTION = {spec.metric: "maximize" if spec.higher_is_better else "minimize"
                    for spec in KINDS.values()}

KEY = "search.objective"


@dataclass(frozen=True)
class Objective:
    """A parsed ``search.objective``.

    Attributes:
        text: as the user wrote it.
        stat: the metric-group key (aliases resolved).
        metric: the metric group (``accuracy``, ``dice``, ``mae``, ``miou``), or ``None`` for the
            stream's single group.
    """

    text: str
    stat: str
    metric: str | None = None

    def direction(self, stream_metrics: list[str] | None = None) -> str:
        """``"maximize"`` or ``"minimize"``.

        Args:
            stream_metrics: the stream's task metrics (``task.metric``, in order), needed only for
                a raw average (``maa``, ...) without a metric name.

        Raises:
            ConfigError: the direction depends on a metric not given, or the stream mixes
                metrics and the objective names none (naming ``search.objective``).
        """
        fixed = STATS[self.stat]
        if fixed is not None:
            return fixed
        metric = self.metric
        if metric is None:
            metric = self.stream_metric(stream_metrics)
        return METRIC_DIRECTION[metric]

    def stream_metric(self, stream_metrics: list[str] | None) -> str:
        """The one metric of a stream (``val.<stat>`` needs a single metric group).

        Raises:
            ConfigError: unknown stream, or one that mixes metrics (the message lists the
                ``val.<metric>.<stat>`` names to use instead).
        """
        metrics = list(dict.fromkeys(stream_metrics or []))
        if len(metrics) == 1:
            return metrics[0]
        if not metrics:
            raise ConfigError(f"{KEY}={self.text}: the stream's metric is unknown; name it, "
                              f"e.g. val.accuracy.{self.stat}")
        names = ", ".join(f"val.{m}.{self.stat}" for m in metrics)
        raise ConfigError(f"{KEY}={self.text}: the stream mixes metrics ({', '.join(metrics)}); "
                          f"name one: {names}")

    def value(self, metrics: dict) -> float:
        """The objective's value in a run's ``metrics.json`` dict.

        A search trial (``search.trial`` set) evaluates R on the validation split only, so its
        top-level metrics *are* the validation metrics (``eval_split: val``); a plain run with
        ``tasks.n_val > 0`` keeps them under ``val``.

        Raises:
            ClBenchError: the run has no validation metrics, is incomplete, the group is
                missing, or the value is not a finite number.
        """
        block = metrics if metrics.get("eval_split") == "val" else metrics.get("val")
        if not isinstance(block, dict):
            raise ClBenchError(f"{KEY}={self.text}: the run has no validation R (set "
                               "tasks.n_val > 0)")
        if not block.get("complete"):
            raise ClBenchError(f"{KEY}={self.text}: the run's validation R is incomplete "
                               f"({block.get('tasks_completed', 0)}/{block.get('num_tasks')} "
                               "tasks)")
        groups = block.get("groups") or {}
        if self.metric is None:
            group = block.get("stream")
            if group is None:
                self.stream_metric(list(groups))  # raises: the stream mixes metrics
        else:
            group = groups.get(self.metric)
            if group is None:
                raise ClBenchError(f"{KEY}={self.text}: the stream has no {self.metric} tasks; "
                                   f"its metrics: {', '.join(groups) or 'none'}")
        value = group.get(self.stat)
        if value is None or not math.isfinite(float(value)):
            raise ClBenchError(f"{KEY}={self.text}: not a finite number in this run ({value!r})")
        return float(value)


def parse_objective(text: str) -> Objective:
    """Parse ``search.objective`` (module docstring).

    Raises:
        ConfigError: one line naming ``search.objective``: not ``val.``, an unknown statistic
            or metric (the message lists the valid ones).
    """
    parts = str(text).strip().split(".")
    stats = ", ".join(list(STATS) + list(ALIASES))
    if parts[0] != "val":
        why = ("a search chooses on validation data only, never on test" if parts[0] == "test"
               else "it names a statistic of the validation R")
        raise ConfigError(f"{KEY}={text}: expected val.<stat> or val.<metric>.<stat> ({why}); "
                          f"stats: {stats}")
    if len(parts) not in (2, 3):
        raise ConfigError(f"{KEY}={text}: expected val.<stat> or val.<metric>.<stat>, e.g. "
                          "val.maa or val.dice.maa")
    stat = ALIASES.get(parts[-1], parts[-1])
    if stat not in STATS:
        raise ConfigError(f"{KEY}={text}: unknown statistic {parts[-1]!r}; expected one of "
                          f"{stats}")
    metric = parts[1] if len(parts) == 3 else None
    if metric is not None and metric not in METRIC_DIRECTION:
        raise ConfigError(f"{KEY}={text}: unknown metric {metric!r}; expected one of "
                          f"{', '.join(METRIC_DIRECTION)}")
    return Objective(text=str(text), stat=stat, metric=metric)
