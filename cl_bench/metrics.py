"""Continual-learning metrics computed from the result matrix R (pure functions, numpy in).

Notation
--------
``R[i][j]`` (1-based, as in the papers) is the performance on task ``j`` after training task ``i``
(rows ``i = 1..T``, columns ``j = 1..T``); ``R[0][j] = b_j`` is the ``init`` row, measured before
any training. All values are in the units of the task's metric (Dice in [0, 1], MAE in years, ...),
and so is every metric below. In code, arrays are 0-based: row ``i - 1`` of ``R`` is "after task i",
and ``init`` is a separate ``(T,)`` vector.

Direction
---------
Each task has a direction ``s_j = +1`` (higher is better, e.g. Dice, accuracy) or ``s_j = -1``
(lower is better, e.g. MAE). Every *gain* is multiplied by ``s_j`` (``g(x) = s_j * x``), so that
positive BWT/FWT always means improvement and positive forgetting always means loss, whatever the
metric. Plain averages of R (final average, MFT, MAA) are reported raw, without sign flip.

Definitions (T tasks)
---------------------
* final average, "MFN" in SEFE (Chen et al. 2025, arXiv 2505.02486): ``mean_j R[T][j]``.
* MFT, "mean fine-tune" (SEFE): ``mean_j R[j][j]``, each task just after it was learned.
* MAA, mean average accuracy: ``mean_i ( mean_{j<=i} R[i][j] )``.
* BWT, GEM convention (Lopez-Paz & Ranzato 2017, arXiv 1706.08840):
  ``1/(T-1) * sum_{j<T} g(R[T][j] - R[j][j])``; 0.0 when T == 1.
* BWT, SEFE convention (= MFN - MFT for a higher-is-better metric):
  ``1/T * sum_{j<=T} g(R[T][j] - R[j][j])``.
* FWT, GEM convention (Lopez-Paz & Ranzato 2017): ``1/(T-1) * sum_{j>=2} g(R[j-1][j] - R[0][j])``;
  needs the init row; None without it or when T == 1.
* forgetting, max convention (Chaudhry et al. 2018, arXiv 1801.10112):
  ``f_j = max_{j<=l<=T-1} s_j R[l][j] - s_j R[T][j]`` for ``j < T`` (rows before ``j`` are skipped:
  the task was unseen), averaged over ``j < T``; 0.0 when T == 1.
* forgetting, "last" convention (Avalanche-style): ``f_j = s_j R[j][j] - s_j R[T][j]``
  for ``j < T``, averaged over ``j < T``; 0.0 when T == 1.

Metric groups
-------------
Tasks with different metrics (Dice, MAE) are never averaged together. Aggregates are computed
per group of tasks sharing a metric name, on the sub-matrix of the group's columns, with rows kept
in the original training order of the whole stream:

* ``R[j][j]`` is the row after training task ``j`` itself; ``R[T]`` is the last completed row.
* "``j < T``" (GEM BWT, forgetting) means "a group task trained before the last completed
  task of the stream", i.e. every group task followed by at least one more training step. If the
  group's last task is not the stream's last task, it therefore counts.
* ``R[j-1][j]`` (FWT) is the row after the task preceding ``j`` in the stream (which may belong to
  another group); the stream's first task has no preceding row and is skipped, as in GEM.
* MAA: mean over rows ``i`` of the mean of ``R[i][j]`` over the group's tasks ``j <= i``; rows where
  the group has no seen task yet are skipped.
* An average over an empty set of tasks is 0.0 for BWT (GEM) and forgetting, None for FWT.

A whole-stream aggregate (``stream``) is given only if every task of the stream shares one metric
name (and it then equals that single group).

Partial runs
------------
``R`` may have ``k < T`` completed rows (an interrupted run). Everything is then computed for the
stream truncated to its first ``k`` tasks (columns ``0..k-1``) and reported with
``"complete": False, "tasks_completed": k``. Cells of unseen tasks beyond the first superdiagonal
(``R[i][j]`` with ``j > i + 1``, 0-based) are not read and may be NaN; every other cell of a
completed row must be finite.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = [
    "CONVENTIONS",
    "bwt_gem",
    "bwt_sefe",
    "cl_metrics",
    "final_average",
    "forgetting_last",
    "forgetting_max",
    "fwt",
    "maa",
    "mft",
]

CONVENTIONS: dict[str, str] = {
    "notation": "R[i][j] = performance on task j after training task i (i, j = 1..T, in the "
                "metric's own units); R[0][j] = init row before any training; R[T] = last "
                "completed row.",
    "sign": "s_j = +1 if task j is higher-is-better, -1 if lower-is-better (e.g. MAE); gains are "
            "multiplied by s_j so positive bwt/fwt = improvement and positive forgetting = loss. "
            "final_average, mft and maa are raw averages (no sign flip).",
    "final_average": "MFN (SEFE, Chen et al. 2025, arXiv 2505.02486): mean_j R[T][j].",
    "mft": "mean fine-tune (SEFE, arXiv 2505.02486): mean_j R[j][j], each task just after "
           "learning it.",
    "maa": "mean average accuracy: mean_i ( mean_{j<=i} R[i][j] ).",
    "bwt_gem": "GEM (Lopez-Paz & Ranzato 2017, arXiv 1706.08840): 1/(T-1) sum_{j<T} "
               "s_j (R[T][j] - R[j][j]); 0.0 if T == 1.",
    "bwt_sefe": "SEFE (arXiv 2505.02486): 1/T sum_{j<=T} s_j (R[T][j] - R[j][j]) "
                "(= MFN - MFT when higher is better).",
    "fwt": "GEM (arXiv 1706.08840): 1/(T-1) sum_{j>=2} s_j (R[j-1][j] - R[0][j]); "
           "null without init row or if T == 1.",
    "forgetting_max": "Chaudhry et al. 2018 (arXiv 1801.10112): mean_{j<T} "
                      "[max_{j<=l<=T-1} s_j R[l][j] - s_j R[T][j]]; 0.0 if T == 1.",
    "forgetting_last": "Avalanche-style: mean_{j<T} [s_j R[j][j] - s_j R[T][j]]; 0.0 if T == 1.",
    "groups": "aggregates are per metric name (tasks with different metrics are never averaged "
              "together), on the group's columns with rows in the stream's training order: "
              "R[j][j] = after task j itself, R[T] = last completed row, R[j-1][j] = after the "
              "task preceding j in the stream, 'j<T' = group tasks trained before the last "
              "completed task; MAA skips rows where the group has no seen task. 'stream' is given "
              "only if every task shares one metric name.",
    "partial": "with k < T completed rows, everything is computed for the first k tasks "
               "(complete = false, tasks_completed = k).",
}


# ----------------------------------------------------------------------------------------------
# validation helpers

def _as_2d(R: Any, name: str = "R") -> np.ndarray:
    try:
        arr = np.asarray(R, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a numeric 2-D array, got {type(R).__name__} "
                         f"({exc})") from None
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows = after each task, columns = tasks), "
                         f"got {arr.ndim}-D with shape {arr.shape}")
    return arr


def _check_needed_finite(R: np.ndarray, names: Sequence[str] | None = None) -> None:
    """Raise if a cell read by some metric (R[i][j] with j <= i + 1, j < k) is not finite."""
    k = R.shape[0]
    for i in range(k):
        for j in range(min(i + 2, k)):
            if not math.isfinite(R[i, j]):
                where = (f" (after task {names[i]!r}, on task {names[j]!r})"
                         if names is not None else "")
                raise ValueError(f"R[{i}][{j}]{where} is {R[i, j]}: every completed cell read by "
                                 f"the metrics must be finite")


def _square(R: Any) -> np.ndarray:
    arr = _as_2d(R)
    if arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"R: expected a non-empty square (T, T) array, got shape {arr.shape}")
    _check_needed_finite(arr)
    return arr


def _signs(s: Any, T: int) -> np.ndarray:
    arr = np.asarray(s, dtype=float)
    if arr.ndim == 0:
        arr = np.full(T, float(arr))
    if arr.shape != (T,):
        raise ValueError(f"s: expected a scalar or {T} per-column signs, got shape {arr.shape}")
    if not np.all(np.isin(arr, (1.0, -1.0))):
        raise ValueError(f"s: every sign must be +1 (higher is better) or -1 (lower is better), "
                         f"got {arr.tolist()}")
    return arr


def _cols(cols: Sequence[int] | None, T: int) -> list[int]:
    if cols is None:
        return list(range(T))
    out = sorted(int(c) for c in cols)
    if not out or len(set(out)) != len(out) or out[0] < 0 or out[-1] >= T:
        raise ValueError(f"cols: expected distinct column indices in 0..{T - 1}, got {list(cols)}")
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def _mean_over_old_tasks(per_task, R: Any, s: Any, cols: Sequence[int] | None) -> float:
    """The mean of ``per_task(R, s, j)`` over the (selected) tasks j before the last one;
    0.0 when there is none (BWT and forgetting: the last task cannot have lost anything)."""
    R = _square(R)
    T = R.shape[0]
    s = _signs(s, T)
    c = [j for j in _cols(cols, T) if j < T - 1]
    return _mean([per_task(R, s, j) for j in c]) if c else 0.0


# ----------------------------------------------------------------------------------------------
# per-task values (0-based j)

def _bwt_j(R: np.ndarray, s: np.ndarray, j: int) -> float:
    return float(s[j] * (R[-1, j] - R[j, j]))


def _forgetting_max_j(R: np.ndarray, s: np.ndarray, j: int) -> float:
    T = R.shape[0]
    if j >= T - 1:
        return 0.0
    best = max(s[j] * R[k, j] for k in range(j, T - 1))
    return float(best - s[j] * R[-1, j])


def _forgetting_last_j(R: np.ndarray, s: np.ndarray, j: int) -> float:
    if j >= R.shape[0] - 1:
        return 0.0
    return float(s[j] * R[j, j] - s[j] * R[-1, j])


def _fwt_j(R: np.ndarray, init: np.ndarray | None, s: np.ndarray, j: int) -> float | None:
    if init is None or j == 0:
        return None
    return float(s[j] * (R[j - 1, j] - init[j]))


# ----------------------------------------------------------------------------------------------
# public pure functions (square R)

def final_average(R: Any, cols: Sequence[int] | None = None) -> float:
    """Final average, "MFN" in SEFE (arXiv 2505.02486): ``mean_j R[T][j]``, raw (no sign flip).

    Args:
        R: ``(T, T)`` array, row ``i`` = after training task ``i`` (0-based), same units as R.
        cols: optional subset of columns (a metric group); default all ``T`` tasks.

    Returns:
        A float in the same units as R.

    Raises:
        ValueError: R is not a non-empty square 2-D array, a needed cell is not finite, or
            ``cols`` is invalid.
    """
    R = _square(R)
    c = _cols(cols, R.shape[0])
    return _mean([R[-1, j] for j in c])


def mft(R: Any, cols: Sequence[int] | None = None) -> float:
    """MFT, mean fine-tune (SEFE, arXiv 2505.02486): ``mean_j R[j][j]``, raw (no sign flip).

    Each task is measured right after it was learned. Args, errors as :func:`final_average`.

    Returns:
        A float in the same units as R.
    """
    R = _square(R)
    c = _cols(cols, R.shape[0])
    return _mean([R[j, j] for j in c])


def maa(R: Any, cols: Sequence[int] | None = None) -> float:
    """MAA, mean average accuracy: ``mean_i ( mean_{j<=i} R[i][j] )``, raw (no sign flip).

    With ``cols``, row ``i`` averages the group's tasks ``j <= i``; rows where the group has no
    seen task are skipped. Args, errors as :func:`final_average`.

    Returns:
        A float in the same units as R.
    """
    R = _square(R)
    c = _cols(cols, R.shape[0])
    row_means = [_mean([R[i, j] for j in c if j <= i]) for i in range(R.shape[0])
                 if any(j <= i for j in c)]
    return _mean(row_means)


def bwt_gem(R: Any, s: Any = 1, cols: Sequence[int] | None = None) -> float:
    """Backward transfer, GEM convention (Lopez-Paz & Ranzato 2017, arXiv 1706.08840).

    ``1/(T-1) * sum_{j<T} s_j (R[T][j] - R[j][j])``; positive = improvement on old tasks.
    With ``cols``, the sum runs over the group's tasks trained before the last row's task.

    Args:
        R: ``(T, T)`` array, row ``i`` = after training task ``i`` (0-based).
        s: +1 (higher is better) / -1 (lower is better), scalar or one per column.
        cols: optional subset of columns (a metric group); default all.

    Returns:
        A float in the same units as R; 0.0 when no task precedes the last one (T == 1).

    Raises:
        ValueError: R is not a non-empty square 2-D array, a needed cell is not finite, ``s``
            is not +-1 or has the wrong length, or ``cols`` is invalid.
    """
    return _mean_over_old_tasks(_bwt_j, R, s, cols)


def bwt_sefe(R: Any, s: Any = 1, cols: Sequence[int] | None = None) -> float:
    """Backward transfer, SEFE convention (arXiv 2505.02486).

    ``1/T * sum_{j<=T} s_j (R[T][j] - R[j][j])``.

    Equals MFN - MFT for a higher-is-better metric (the last task contributes 0).
    Args, errors as :func:`bwt_gem`.

    Returns:
        A float in the same units as R.
    """
    R = _square(R)
    T = R.shape[0]
    s = _signs(s, T)
    return _mean([_bwt_j(R, s, j) for j in _cols(cols, T)])


def fwt(R: Any, init: Any, s: Any = 1, cols: Sequence[int] | None = None) -> float | None:
    """Forward transfer, GEM convention (Lopez-Paz & Ranzato 2017, arXiv 1706.08840).

    ``1/(T-1) * sum_{j>=2} s_j (R[j-1][j] - b_j)``.

    ``b_j = init[j]`` is the performance before any training; ``R[j-1][j]`` is measured after
    training the task preceding ``j`` in the stream. The stream's first task is skipped.

    Args:
        R: ``(T, T)`` array, row ``i`` = after training task ``i`` (0-based).
        init: ``(T,)`` array (the init row) or None.
        s: +1 / -1, scalar or one per column.
        cols: optional subset of columns (a metric group); default all.

    Returns:
        A float in the same units as R, or None if ``init`` is None or no task has a
        predecessor (T == 1, or the group is only the first task).

    Raises:
        ValueError: as :func:`bwt_gem`, or ``init`` has the wrong length or a non-finite value
            that is needed.
    """
    R = _square(R)
    T = R.shape[0]
    s = _signs(s, T)
    c = [j for j in _cols(cols, T) if j >= 1]
    if init is None or not c:
        return None
    b = _init_vector(init, T)
    return _mean([_fwt_j(R, b, s, j) for j in c])


def forgetting_max(R: Any, s: Any = 1, cols: Sequence[int] | None = None) -> float:
    """Forgetting, Chaudhry et al. 2018 (arXiv 1801.10112): mean_{j<T} of f_j.

    ``f_j = max_{j<=l<=T-1} s_j R[l][j] - s_j R[T][j]`` (best value seen from learning task j
    up to the row before last, minus the final value); positive = loss.
    Args, errors as :func:`bwt_gem`.

    Returns:
        A float in the same units as R; 0.0 when no task precedes the last one.
    """
    return _mean_over_old_tasks(_forgetting_max_j, R, s, cols)


def forgetting_last(R: Any, s: Any = 1, cols: Sequence[int] | None = None) -> float:
    """Forgetting, "last" (Avalanche-style) convention: mean_{j<T} of ``s_j R[j][j] - s_j R[T][j]``.

    Positive = loss since the task was learned. Args, errors as :func:`bwt_gem`.

    Returns:
        A float in the same units as R; 0.0 when no task precedes the last one.
    """
    return _mean_over_old_tasks(_forgetting_last_j, R, s, cols)


# ----------------------------------------------------------------------------------------------
# the dict

def _init_vector(init: Any, T: int, names: Sequence[str] | None = None) -> np.ndarray:
    b = np.asarray(init, dtype=float)
    if b.shape != (T,):
        raise ValueError(f"init: expected shape ({T},) (one value per task), got {b.shape}")
    for j in range(1, T):  # init[0] is never read (the first task has no FWT)
        if not math.isfinite(b[j]):
            where = f" (task {names[j]!r})" if names is not None else ""
            raise ValueError(f"init[{j}]{where} is {b[j]}: the init row must be finite")
    return b


def _clean(x: Any) -> Any:
    """Plain Python, JSON-serialisable; NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) + 0.0 if math.isfinite(x) else None  # + 0.0: no "-0.0" in JSON
    return x


def _names(values: Any, T: int, what: str, default: list[str]) -> list[str]:
    if values is None:
        return default
    if isinstance(values, str):
        raise ValueError(f"{what}: expected a list of {T} strings, got a single string")
    out = list(values)
    if len(out) != T:
        raise ValueError(f"{what}: expected {T} entries (one per task column), got {len(out)}")
    if not all(isinstance(v, str) for v in out):
        raise ValueError(f"{what}: every entry must be a str, got {out}")
    return out


def _directions(higher_is_better: Any, T: int) -> list[bool]:
    if isinstance(higher_is_better, (bool, np.bool_)):
        return [bool(higher_is_better)] * T
    if isinstance(higher_is_better, str):
        raise ValueError("higher_is_better: expected a bool or a sequence of bools, got a str")
    out = list(higher_is_better)
    if len(out) != T:
        raise ValueError(f"higher_is_better: expected {T} entries (one per task column), "
                         f"got {len(out)}")
    if not all(isinstance(v, (bool, np.bool_)) for v in out):
        raise ValueError(f"higher_is_better: every entry must be a bool, got {out}")
    return [bool(v) for v in out]


def cl_metrics(R: Any, init: Any = None, higher_is_better: bool | Sequence[bool] = True,
               task_names: Sequence[str] | None = None,
               metric_names: Sequence[str] | None = None) -> dict:
    """All continual-learning metrics of one run, per task, per metric group and for the stream.

    Args:
        R: ``(k, T)`` array-like, row ``i`` = performance on every task after training task ``i``
            (0-based, training order); ``k < T`` for an interrupted run. Cells ``R[i][j]`` with
            ``j <= i + 1`` and ``j < k`` must be finite; others are not read.
        init: ``(T,)`` array-like measured before any training, or None (then FWT is None).
        higher_is_better: one bool for all tasks or one per task (False for MAE, ...).
        task_names: ``T`` distinct names (default ``task0``, ``task1``, ...).
        metric_names: ``T`` metric names (default all ``"metric"``); tasks sharing a name form a
            group and must share a direction.

    Returns:
        A JSON-serialisable dict (plain floats, NaN -> None)::

            {"complete", "tasks_completed", "num_tasks", "conventions",
             "per_task": {name: {"metric", "higher_is_better", "final", "just_learned", "bwt",
                                 "forgetting_max", "forgetting_last", "fwt", "init"}},
             "groups": {metric: {"tasks", "higher_is_better", "final_average", "mft", "maa",
                                 "bwt_gem", "bwt_sefe", "fwt", "forgetting_max",
                                 "forgetting_last"}},
             "stream": <the single group's dict if all T tasks share one metric, else None>}

        With ``k < T``, ``per_task`` and ``groups`` cover only the first ``k`` tasks. All values
        are in the same units as R (per metric). Definitions: see the module docstring.

    Raises:
        ValueError: R is not 2-D, has no rows or more rows than columns; a needed cell of R or
            init is not finite; init has the wrong length; ``task_names``, ``metric_names`` or
            ``higher_is_better`` have the wrong length or type; task names repeat; or tasks with
            the same metric name have different directions.
    """
    full = _as_2d(R)
    k, T = full.shape
    if T == 0 or k == 0:
        raise ValueError(f"R: expected at least one completed row and one task, got shape "
                         f"{full.shape}")
    if k > T:
        raise ValueError(f"R: has {k} rows but only {T} task columns; expected at most one row "
                         f"per task (rows = after each task, columns = tasks)")
    names = _names(task_names, T, "task_names", [f"task{j}" for j in range(T)])
    if len(set(names)) != T:
        raise ValueError(f"task_names: names must be distinct, got {names}")
    metrics = _names(metric_names, T, "metric_names", ["metric"] * T)
    hib = _directions(higher_is_better, T)
    if init is not None:
        b_full = np.asarray(init, dtype=float)
        if b_full.shape != (T,):
            raise ValueError(f"init: expected shape ({T},) (one value per task), "
                             f"got {b_full.shape}")
    for m in set(metrics):
        dirs = {hib[j] for j in range(T) if metrics[j] == m}
        if len(dirs) > 1:
            raise ValueError(f"metric {m!r}: its tasks disagree on higher_is_better; a metric "
                             f"group must have one direction")

    Rk = full[:, :k]
    _check_needed_finite(Rk, names)
    b = _init_vector(b_full[:k], k, names) if init is not None else None
    s = np.array([1.0 if h else -1.0 for h in hib[:k]])

    per_task = {}
    for j in range(k):
        per_task[names[j]] = {
            "metric": metrics[j],
            "higher_is_better": hib[j],
            "final": float(Rk[-1, j]),
            "just_learned": float(Rk[j, j]),
            "bwt": _bwt_j(Rk, s, j),
            "forgetting_max": _forgetting_max_j(Rk, s, j),
            "forgetting_last": _forgetting_last_j(Rk, s, j),
            "fwt": _fwt_j(Rk, b, s, j),
            "init": float(b[j]) if b is not None else None,
        }

    groups: dict[str, dict] = {}
    for m in dict.fromkeys(metrics[:k]):  # first-seen order
        cols = [j for j in range(k) if metrics[j] == m]
        groups[m] = {
            "tasks": [names[j] for j in cols],
            "higher_is_better": hib[cols[0]],
            "final_average": final_average(Rk, cols),
            "mft": mft(Rk, cols),
            "maa": maa(Rk, cols),
            "bwt_gem": bwt_gem(Rk, s, cols),
            "bwt_sefe": bwt_sefe(Rk, s, cols),
            "fwt": fwt(Rk, b, s, cols),
            "forgetting_max": forgetting_max(Rk, s, cols),
            "forgetting_last": forgetting_last(Rk, s, cols),
        }

    stream = dict(groups[metrics[0]]) if len(set(metrics)) == 1 else None
    return _clean({
        "complete": k == T,
        "tasks_completed": k,
        "num_tasks": T,
        "conventions": dict(CONVENTIONS),
        "per_task": per_task,
        "groups": groups,
        "stream": stream,
    })


def iou_from_confusion(cm: Any) -> np.ndarray:
    """Per-class intersection over union from a confusion matrix.

    Args:
        cm: ``(K, K)`` counts, rows = ground truth, columns = prediction (torchmetrics'
            ``MulticlassConfusionMatrix`` layout).

    Returns:
        ``(K,)`` float array: ``cm[c, c] / (sum_row_c + sum_col_c - cm[c, c])``, NaN for a class
        absent from both ground truth and prediction (it is left out of means, as in the
        evaluators of MiB, arXiv 2002.00718, and STAR).

    Raises:
        ValueError: ``cm`` not square.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def mean_iou(iou: Any, classes: Sequence[int]) -> float:
    """Mean of ``iou[c]`` over ``classes``, ignoring NaN (absent classes); NaN if all are."""
    vals = np.asarray(iou, dtype=np.float64)[list(classes)] if len(classes) else np.array([])
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if len(vals) else float("nan")
