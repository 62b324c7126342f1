"""Grouping runs: what ``clbench-report`` averages over seeds (:func:`summarise`).

A group is a set of runs whose configs (``.hydra/config.yaml``) match except for the seed, the
run-local keys (:data:`cl_bench.config.RUN_LOCAL_KEYS`) and the places where data or results
live (keys ending in ``dir`` or ``root``). A key that some runs set and others lack (``+key=``)
differs like any value: a ``+tasks.max_tasks=1`` run never joins a full run's group. The keys
that separate the groups are :func:`group_keys`; :func:`separating_keys` also names the keys
that differ between groups without being group keys (a strategy's own hyper-parameters).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cl_bench.config import RUN_LOCAL_KEYS
from cl_bench.report.load import PRIVATE, RUN_FIELDS


#: config keys never used for grouping (they do not define an experiment): the run-local keys
#: (``logger`` as its ``logger.*`` leaves, below), the seed and the run's directory
IGNORED = RUN_LOCAL_KEYS + ("seed", "run_dir")
#: the config groups' names, read into the ``tasks``, ``strategy`` and ``backbone`` columns
NAMES = ("tasks.name", "strategy.name", "backbone.name")
#: the text a group shows for a key its runs do not set
UNSET = "–"


def _ignored(key: str) -> bool:
    """Whether config ``key`` is left out of the comparison of two runs' configs: run-local,
    Hydra's or the logger's, or where something lives on disk (``tasks.cache_dir``,
    ``tasks.root``), or a class path (``_target_``, fixed by the group's name)."""
    return (key in IGNORED or key.startswith(("hydra.", "logger."))
            or key.endswith(("dir", "root", "_target_")))


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _compared(key: str, v) -> str:
    """A config value as two runs' values are compared: unset (a key the run lacks, or null)
    as one value of its own, a checkpoint (``*weights``) by its file name (the same checkpoint
    in two places is one), anything else as its text."""
    if _missing(v):
        return "\0unset"
    if key.endswith("weights") and isinstance(v, str) and "/" in v:
        return Path(v).name
    if isinstance(v, float) and v.is_integer():  # 1 and 1.0 (a column with NaNs): one value
        return str(int(v))
    return str(v)


def _compare_frame(runs: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """``runs[cols]`` as compared (:func:`_compared`), one string per cell."""
    return pd.DataFrame({c: [_compared(c.removeprefix("cfg:"), v) for v in runs[c]]
                         for c in cols}, index=runs.index)


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The ``cfg:`` columns that define an experiment (all but :func:`_ignored` ones and the
    config groups' names, :data:`NAMES`: the ``tasks``, ``strategy`` and ``backbone`` columns).

    Args:
        runs: from :func:`load_runs`.

    Returns:
        The column names, in the runs' order.
    """
    return [c for c in runs.columns if c.startswith("cfg:") and not _ignored(c[4:])
            and c[4:] not in NAMES]


def group_keys(runs: pd.DataFrame) -> list[str]:
    """The keys whose values make a group: ``tasks``, ``strategy``, ``backbone`` and every
    config key (``cfg:<key>``) whose value differs between two runs of one strategy (a key one
    run lacks counts as a value: unset). A key that differs only between strategies (a
    strategy's own hyper-parameter) is not one: the strategy already separates it. Runs of one
    group have the same config but for the seed (and :func:`_ignored` keys).

    Args:
        runs: from :func:`load_runs`.

    Returns:
        The column names of ``runs``.
    """
    keys = ["tasks", "strategy", "backbone"]
    cols = config_columns(runs)
    compared = _compare_frame(runs, cols)
    by_strategy = runs["strategy"].astype(str)
    for col in cols:
        if compared[col].nunique() > 1 and (compared[col].groupby(by_strategy).nunique()
                                            > 1).any():
            keys.append(col)
    return keys


def iter_groups(runs: pd.DataFrame, keys: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    """The groups of ``runs`` by ``keys``, in the order their first run appears.

    Args:
        runs: from :func:`load_runs`; keys: from :func:`group_keys`.

    Returns:
        ``[(values, runs of the group)]``, ``values`` ``{key: the first run's value}`` (NaN or
        None for a key the group's runs do not set).
    """
    if not len(runs):
        return []
    compared = _compare_frame(runs, keys)
    out = []
    for _, g in runs.groupby([compared[k] for k in keys], sort=False, dropna=False):
        first = g.iloc[0]
        out.append(({k: first[k] for k in keys}, g))
    return out


def show_value(v) -> str:
    """A config value as the report shows it: :data:`UNSET` for a key the runs do not set,
    ``1`` for 1.0.

    Args:
        v: the value.

    Returns:
        The text.
    """
    if _missing(v):
        return UNSET
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def short_keys(keys: list[str]) -> dict[str, str]:
    """Config keys -> their names without the group (``backbone.decoder`` -> ``decoder``,
    ``cfg:tasks.max_tasks`` -> ``max_tasks``) where no other key of ``keys`` has that name.

    Args:
        keys: config keys, with or without the ``cfg:`` prefix.

    Returns:
        ``{key: short name}``.
    """
    bare = [k.removeprefix("cfg:") for k in keys]
    tails = [k.split(".", 1)[-1] for k in bare]
    return {k: t if tails.count(t) == 1 else b for k, b, t in zip(keys, bare, tails)}


def separating_keys(runs: pd.DataFrame) -> tuple[list[str], dict[str, list[str]]]:
    """Which keys separate the groups, for the line above the report's table.

    Args:
        runs: from :func:`load_runs`.

    Returns:
        ``(keys, others)``: the group keys (:func:`group_keys`) whose value differs between
        groups, and the other config keys that differ between them (each strategy's own
        hyper-parameters, constant within a strategy), each with its values in group order.
    """
    keys = group_keys(runs)
    compared = _compare_frame(runs, keys + config_columns(runs))
    split = [k for k in keys if compared[k].nunique() > 1]
    others = {}
    for col in config_columns(runs):
        if col not in keys and compared[col].nunique() > 1:
            values = [show_value(g.iloc[0][col]) for _, g in iter_groups(runs, keys)]
            others[col] = values
    return split, others


def quantities(runs: pd.DataFrame) -> list[str]:
    """The numeric columns the report averages over seeds: the final metrics (a mean predictor
    right after its task), stream metrics and costs, then the just-learned values.

    Args:
        runs: from :func:`load_runs`.

    Returns:
        The column names.
    """
    skip = {*RUN_FIELDS, *PRIVATE}
    cols = [c for c in runs.columns if c not in skip and not c.startswith("cfg:")]
    return [c for c in cols if "(just learned)" not in c] + [c for c in cols if
                                                             "(just learned)" in c]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per group (std with ddof=1; NaN for a single run).

    Args:
        runs: from :func:`load_runs`.

    Returns:
        One row per group (:func:`iter_groups` by :func:`group_keys`): ``group`` (``G1``,
        ``G2``, ...; the figures' panels carry the same names), the group keys (config keys
        without ``cfg:``), ``runs`` (``"3"`` or ``"3 (1 partial)"``), ``status`` (``complete``
        / ``partial``), ``n`` and ``<quantity> mean`` / ``<quantity> std`` for every quantity
        of :func:`load_runs`.
    """
    keys = group_keys(runs)
    rows = []
    for i, (values, g) in enumerate(iter_groups(runs, keys), start=1):
        row = {"group": f"G{i}", **values}
        partial = int((~g["complete"]).sum())
        row["runs"] = f"{len(g)}" + (f" ({partial} partial)" if partial else "")
        row["status"] = "partial" if partial else "complete"
        if "eval_split" in g and (g["eval_split"] == "val").all():  # search trials (cl_bench.search)
            row["status"] += " (validation R)"
        row["n"] = len(g)
        for q in quantities(runs):
            x = pd.to_numeric(g[q], errors="coerce").dropna()
            row[f"{q} mean"] = x.mean() if len(x) else np.nan
            row[f"{q} std"] = x.std(ddof=1) if len(x) > 1 else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.rename(columns={k: k[4:] for k in keys if k.startswith("cfg:")})
