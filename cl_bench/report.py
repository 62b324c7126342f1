"""``clbench-report``: turn run directories into a paper table (mean ± std over seeds) and figures.

    clbench-report results/brain_mri_fm/brain_seg_age/2026-11-24_15-00-00 --paper brain_mri_fm
    clbench-report results/multirun/* --format latex --out paper/

Every directory holding a ``metrics.json`` under the given paths is one run. A group is the runs
whose configs match except for the seed (:func:`group_keys`: run-local keys and the
places data and results live aside; a key one run sets with ``+key=`` and another lacks
differs); its numbers are the mean ± std over those seeds. The report names each group ``G1``,
``G2``, ... in its tables and figures and says which config keys separate the groups. A group
with unfinished runs is shown with status ``partial``: its ``runs`` column says how many, its
metrics average the runs' completed tasks (as in ``metrics.json``'s partial convention), never
silently dropping them. A regression task's mean predictor (always answering the training
mean) stands beside its MAE, and a line says whether the model beats it.

Writes into ``--out`` (default ``<first dir>/report``): ``report.md``, ``report.tex`` (a pdflatex
document in ASCII, tables of at most 10 columns), ``report.csv`` (numeric ``<quantity> mean`` /
``<quantity> std`` columns), ``runs.csv`` (one row per run), ``heatmaps.png`` (the seed-mean R
of each group, one colour scale per metric), ``curves.png`` (each task's metric after every
training step, mean ± std band per group) and ``losses.png`` (each task's training loss per
step, from the CSV logger; not written without one). Every number is rounded as the terminal
summary rounds it (:func:`cl_bench.summary.fmt_value`). With ``--paper`` naming a paper that
states claims (:mod:`cl_bench.reference`), also ``claims.csv``: each claim and each of its
tests judged on our runs, per seed, with its margin (see :func:`claims_table`), and
``claims.md``: one block per setting, conf/'s default first, one short row per measured claim
(:func:`claims_markdown`), printed after the table with ``--format markdown`` (the default).

A directory that holds a hyperparameter search (``clbench -m hydra/sweeper=optuna``; its trials
are runs like any other, one group per trial, measured on the validation split) also gets the
study's report (:mod:`cl_bench.search.study`): ``best_config.yaml``, ``best_overrides.txt``,
``trials.csv``, ``history.png`` and ``importance.png`` in ``<sweep dir>/study/`` (with ``--out``:
``<out>/study/``, or ``<out>/study_<sweep dir name>/`` for several searches), and the best trial
printed.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import operator
import re
import sys
import textwrap
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from omegaconf import OmegaConf

from cl_bench.config import RUN_LOCAL_KEYS
from cl_bench.errors import ClBenchError
from cl_bench.reference import PAPERS
from cl_bench.search.study import best_line, is_study_dir, load_study, write_study_report
from cl_bench.summary import BASELINE_NAMES, decimals, fmt_value, metric_label, versus_baseline


# ------------------------------------------------------------------ runs and groups
# Reading run directories and grouping them: what ``clbench-report`` averages over seeds.
#
# A group is a set of runs whose configs (``.hydra/config.yaml``) match except for the seed, the
# run-local keys (:data:`cl_bench.config.RUN_LOCAL_KEYS`) and the places where data or results
# live (keys ending in ``dir`` or ``root``). A key that some runs set and others lack (``+key=``)
# differs like any value: a ``+tasks.max_tasks=1`` run never joins a full run's group. The keys
# that separate the groups are :func:`group_keys`; :func:`separating_keys` also names the keys
# that differ between groups without being group keys (a strategy's own hyper-parameters).

#: config keys never used for grouping (they do not define an experiment): the run-local keys
#: (``logger`` as its ``logger.*`` leaves, below), the seed and the run's directory
IGNORED = RUN_LOCAL_KEYS + ("seed", "run_dir")
#: per metric group, the stream-level quantities reported (metrics.json "groups")
GROUP_KEYS = ("final_average", "mft", "maa", "bwt_gem", "bwt_sefe", "forgetting_max")
ARROW = {True: "↑", False: "↓"}
#: per-run columns holding objects (R, units, raw metrics.json / params.json, the run's
#: directory, its loss curves), never reported
PRIVATE = ("_units", "_matrix", "_metrics", "_params", "_dir", "_losses", "_baselines")
#: the fixed columns of a run record that are not quantities
RUN_FIELDS = ("run", "seed", "complete", "tasks_completed", "num_tasks", "tasks", "strategy",
              "backbone", "eval_split")
#: the config groups' names, read into the ``tasks``, ``strategy`` and ``backbone`` columns
NAMES = ("tasks.name", "strategy.name", "backbone.name")
#: the text a group shows for a key its runs do not set
UNSET = "–"
#: how a baseline (metrics.json ``baselines``) is named in the report's columns and lines
MEAN_PREDICTOR = BASELINE_NAMES["mean_predictor"]  # "predicting the mean", as the summary


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _ignored(key: str) -> bool:
    """Whether config ``key`` is left out of the comparison of two runs' configs: run-local,
    Hydra's or the logger's, or where something lives on disk (``tasks.cache_dir``,
    ``tasks.root``), or a class path (``_target_``, fixed by the group's name)."""
    return (key in IGNORED or key.startswith(("hydra.", "logger."))
            or key.endswith(("dir", "root", "_target_")))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _task_col(task: str, u: dict) -> str:
    unit = f" ({u['units']})" if u.get("units") else ""
    return f"{task} {u['metric']}{unit} {ARROW[bool(u['higher_is_better'])]}"


def baseline_col(task: str, u: dict) -> str:
    """The report's column of a regression task's mean predictor.

    Args:
        task: the task's name; u: its ``units`` entry of metrics.json.

    Returns:
        ``"<task> mae (<units>), predicting the mean"``.
    """
    unit = f" ({u['units']})" if u.get("units") else ""
    return f"{task} {u['metric']}{unit}, {MEAN_PREDICTOR}"


def run_baselines(m: dict) -> dict[str, float]:
    """Each regression task's mean-predictor score recorded by a run: metrics.json's
    ``baselines`` (``{task: {"mean_predictor": v}}``), else, for runs written before it existed,
    the last row of ``details`` that has the task's ``mae_mean_predictor``.

    Args:
        m: the run's metrics.json.

    Returns:
        ``{task: value}`` for the tasks with a finite mean predictor (maybe none).
    """
    out = {}
    for task, b in (m.get("baselines") or {}).items():
        v = (b or {}).get("mean_predictor")
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[task] = float(v)
    for row in reversed(list((m.get("details") or {}).values())):
        for task, vals in (row or {}).items():
            v = (vals or {}).get("mae_mean_predictor")
            if task not in out and isinstance(v, (int, float)) and math.isfinite(v):
                out[task] = float(v)
    return out


def read_losses(run: Path) -> pd.DataFrame:
    """The training loss curves the CSV logger wrote (``<run>/logs/csv/version_*/metrics.csv``,
    columns ``<task>/task_loss`` and ``step``); a resumed run's later versions win on the steps
    they repeat.

    Args:
        run: the run directory.

    Returns:
        Columns ``task``, ``step``, ``loss`` (empty when the run logged no loss, e.g.
        ``logger=none`` or ``logger=wandb``).
    """
    parts = []
    for order, path in enumerate(sorted((run / "logs").glob("*/version_*/metrics.csv"),
                                        key=lambda p: (p.parent.parent.name,
                                                       _version(p.parent.name)))):
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if "step" not in df:
            continue
        for col in (c for c in df.columns if c.endswith("/task_loss")):
            x = df[["step", col]].dropna()
            parts.append(pd.DataFrame({"task": col[:-len("/task_loss")], "step": x["step"],
                                       "loss": x[col], "_order": order}))
    if not parts:
        return pd.DataFrame({"task": [], "step": [], "loss": []})
    out = pd.concat(parts, ignore_index=True).sort_values(["task", "step", "_order"])
    out = out.drop_duplicates(["task", "step"], keep="last")
    return out.drop(columns="_order").reset_index(drop=True)


def _version(name: str) -> int:
    try:
        return int(name.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def _load_run(metrics_path: Path) -> dict:
    """One run directory -> a flat record (config keys + results). Raises on unreadable files."""
    run = metrics_path.parent
    m = json.loads(metrics_path.read_text())
    cfg_path = run / ".hydra" / "config.yaml"
    cfg = {}
    if cfg_path.is_file():
        cfg = _flatten(OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False))
    rec = {f"cfg:{k}": (json.dumps(v) if isinstance(v, list) else v) for k, v in cfg.items()}
    rec.update(run=str(run), tasks=m.get("tasks") or cfg.get("tasks.name"),
               strategy=m.get("strategy") or cfg.get("strategy.name"),
               backbone=m.get("backbone") or cfg.get("backbone.name"),
               seed=m.get("seed", cfg.get("seed")), complete=bool(m.get("complete")),
               tasks_completed=m.get("tasks_completed", 0), num_tasks=m.get("num_tasks"),
               eval_split=m.get("eval_split", "test"))  # "val": a search trial's R
    units = m.get("units", {})
    baselines = run_baselines(m)
    for task, u in units.items():
        rec[_task_col(task, u)] = m.get("per_task", {}).get(task, {}).get("final", np.nan)
        if task in baselines and not u.get("higher_is_better", True):
            rec[baseline_col(task, u)] = baselines[task]
        rec[f"{task} {u['metric']} (just learned)"] = (
            m.get("per_task", {}).get(task, {}).get("just_learned", np.nan))
    val = m.get("val") or {}
    for task, u in (units.items() if val.get("per_task") else []):  # tasks.n_val > 0
        rec[f"{_task_col(task, u)} [val]"] = (
            val["per_task"].get(task, {}).get("final", np.nan))
    last = list(m.get("details", {}))[-1] if m.get("details") else None
    for task, vals in (m["details"][last].items() if last and last != "init" else []):
        if "mae_normalised" in vals:
            rec[f"{task} mae_normalised ↓"] = vals["mae_normalised"]
    agnostic = m.get("task_agnostic") or {}
    if "retrieval_mean_seen" in agnostic:  # a task-agnostic strategy (proteus, duallora)
        rec["retrieval accuracy"] = agnostic["retrieval_mean_seen"]
        cost = [v["retrieval_ms_per_sample"] for v in m["details"][last].values()
                if "retrieval_ms_per_sample" in v] if last else []
        rec["retrieval ms / sample"] = float(np.mean(cost)) if cost else np.nan
    for metric, g in m.get("groups", {}).items():
        for key in GROUP_KEYS:
            rec[f"{key} {metric}"] = g.get(key, np.nan) if g.get(key) is not None else np.nan
        rec[f"_tasks {metric}"] = len(g.get("tasks", []))  # dropped by load_runs
    for key, value in m.get("ciss", {}).get("last", {}).items():  # CISS: base / new / all
        rec[f"{key} (last step)"] = value if value is not None else np.nan
    params = _read_json(run / "params.json") or {}
    pct = [p["trainable_pct"] for p in params.get("tasks", {}).values()]
    rec["trainable %"] = float(np.mean(pct)) if pct else np.nan
    adapters = [p.get("adapter_pct_of_backbone", 0.0) for p in params.get("tasks", {}).values()]
    if any(adapters):
        rec["adapters % of backbone"] = float(np.mean(adapters))
    timing = _read_json(run / "timing.json") or {}
    rec["wall time (s)"] = timing.get("total_s", np.nan)
    rec["peak RSS (MB)"] = timing.get("peak_rss_mb", np.nan)
    if "peak_gpu_mb" in timing:
        rec["peak GPU (MB)"] = timing["peak_gpu_mb"]
    rec["_units"] = units
    rec["_matrix"] = pd.read_csv(run / "matrix.csv", index_col=0)
    rec["_metrics"], rec["_params"] = m, params  # raw, for the paper's claims
    rec["_dir"], rec["_losses"], rec["_baselines"] = str(run), read_losses(run), baselines
    return rec


def _drop_single_task_averages(runs: pd.DataFrame) -> pd.DataFrame:
    """Without a run that has two tasks of a metric, its stream averages MFN and MFT are its
    one task's final and just-learned columns again: dropped. A run cut to one task
    (``+tasks.max_tasks=1``) beside longer runs keeps them, so it shows its MFN too."""
    drop = []
    for col in [c for c in runs.columns if c.startswith("_tasks ")]:
        metric = col[len("_tasks "):]
        if not (pd.to_numeric(runs[col], errors="coerce") >= 2).any():
            drop += [c for c in (f"final_average {metric}", f"mft {metric}") if c in runs]
        drop.append(col)
    return runs.drop(columns=drop)


def load_runs(dirs: list[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """Read every run (a directory with ``metrics.json``) under ``dirs``.

    Args:
        dirs: run or sweep directories, searched recursively.

    Returns:
        ``(runs, skipped)``: one row per run (group keys, ``seed``, ``complete``, one column per
        task's final metric in native units, beside a regression task's its mean predictor
        (``<task> mae (years), predicting the mean``), per-metric-group BWT/forgetting/MFN/MFT/
        MAA, ``trainable %``, ``wall time (s)``, ``peak RSS (MB)`` (and ``peak GPU (MB)`` for
        runs on a GPU; ``retrieval accuracy``, the mean over seen tasks of the share of test
        samples whose task is retrieved, and ``retrieval ms / sample``, its wall time per
        sample, for a task-agnostic strategy); the R matrix in the ``_matrix`` column,
        ``metrics.json`` / ``params.json`` as dicts in ``_metrics`` / ``_params``, the run's
        directory in ``_dir``, its training losses in ``_losses`` (:func:`read_losses`) and its
        mean predictors in ``_baselines``) and ``"<file>: <reason>"`` for each run that could
        not be read.

    Raises:
        ClBenchError: a directory that does not exist or cannot be read, or no runs at all.
    """
    found = []
    for d in map(Path, dirs):
        try:
            if not d.is_dir():
                raise ClBenchError(f"cannot read results dir '{d}': "
                                   f"{'not a directory' if d.exists() else 'no such directory'}")
            found += [(d, p) for p in sorted(d.rglob("metrics.json"))]
        except PermissionError as e:
            raise ClBenchError(f"cannot read results dir '{d}': {e.strerror}") from None
    records, skipped = [], []
    for base, path in found:
        try:
            rec = _load_run(path)
            rec["run"] = str(Path(base.name) / path.parent.relative_to(base))  # no abs paths
            records.append(rec)
        except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as e:
            skipped.append(f"{path}: {type(e).__name__}: {e}")
    if not records:
        raise ClBenchError(f"no runs (metrics.json) under {', '.join(map(str, dirs))}"
                           + (f"; unreadable: {'; '.join(skipped)}" if skipped else ""))
    return _drop_single_task_averages(pd.DataFrame.from_records(records)), skipped


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

# ------------------------------------------------------------------ tables
# The report's tables: numbers as text (one rounding rule), ``report.md`` and ``report.tex``.
#
# Every number the report prints goes through :func:`cl_bench.summary.fmt_value` (the terminal
# summary's rule), a standard deviation with its mean's decimals (:func:`fmt_mean_std`).
# ``report.tex`` is a whole pdflatex document in ASCII: the groups' key table, then the
# quantities in tables of at most :data:`LATEX_COLUMNS` columns, each scaled to the text width.

#: the most columns one table of ``report.tex`` has
LATEX_COLUMNS = 10
#: what ``report.tex`` writes for the report's non-ASCII characters (anything else: ``?``)
LATEX_TEXT = {"↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "–": "--", "—": "---",
              "≤": r"$\le$", "≥": r"$\ge$", "×": r"$\times$", "≈": r"$\approx$",
              "·": r"$\cdot$", "→": r"$\to$", "✓": "yes", "✗": "no", "µ": r"$\mu$",
              "’": "'", "‘": "`", "“": "``", "”": "''", "…": "...", "°": r"$^\circ$"}
#: LaTeX's special characters, escaped
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
                 "|": r"\textbar{}"}


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fixed(v: float, digits: int) -> str:
    """``v`` with ``digits`` decimals by :func:`cl_bench.summary.fmt_value`'s rule: the value
    itself where ``digits`` is what that rule gives it; otherwise (a std beside its mean) its 6
    significant digits rounded half up in decimal arithmetic, as ``fmt_value`` does.

    Args:
        v: a finite number; digits: the decimals.

    Returns:
        The text.
    """
    if decimals(v) == digits:
        return fmt_value(v)
    d = Decimal(f"{v:.6g}").quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{d.copy_abs() if d.is_zero() else d:f}"


def fmt_mean_std(mean, std) -> str:
    """``mean ± std`` as every table of the report shows it.

    Args:
        mean: the mean (None or NaN: not measured); std: its std (None or NaN: one value).

    Returns:
        ``–`` where not measured, ``fmt_value(mean)`` for one value, else ``<mean> ± <std>``
        with the std given the mean's decimals (``16.2 ± 1.0``, ``0.400 ± 0.141``).
    """
    if _missing(mean):
        return "–"
    if _missing(std):
        return fmt_value(mean)
    return f"{fmt_value(mean)} ± {fixed(float(std), decimals(float(mean)))}"


def table(summary: pd.DataFrame, paper: str | None = None) -> pd.DataFrame:
    """The human table: ``mean ± std`` strings (``–`` where not measured), plus the paper's rows.

    Args:
        summary: from :func:`summarise`; paper: a key of
            :data:`cl_bench.reference.PAPERS` whose published rows are appended (None: none).

    Returns:
        One row per group (then per published row): the fixed columns (``group``, the group
        keys, ``runs``, ``status``; a key a group does not set as ``–``) and one text column per
        quantity measured by some group.

    Raises:
        ClBenchError: an unknown ``paper`` (lists the known ones).
    """
    quantities = [c[:-5] for c in summary.columns if c.endswith(" mean")]
    quantities = [q for q in quantities if summary[f"{q} mean"].notna().any()]
    fixed_cols = [c for c in summary.columns if not c.endswith((" mean", " std")) and c != "n"]
    rows = []
    for _, r in summary.iterrows():
        row = {c: (show_value(r[c]) if c not in ("runs", "status") else r[c])
               for c in fixed_cols}
        row.update({q: fmt_mean_std(r[f"{q} mean"], r[f"{q} std"]) for q in quantities})
        rows.append(row)
    if paper is not None:
        if paper not in PAPERS:
            raise ClBenchError(f"--paper {paper!r}: unknown; known: {', '.join(sorted(PAPERS))}")
        for strategy, ref in PAPERS[paper]["rows"].items():
            row = {c: "" for c in fixed_cols}
            row.update(strategy=ref["label"], status="published", runs="")
            for q in quantities:
                base = q.replace(" (years)", "").replace(" ↑", "").replace(" ↓", "")
                v = ref.get(base, ref.get(q))
                row[q] = ("–" if v is None else fmt_mean_std(*v) if isinstance(v, tuple)
                          else v if isinstance(v, str) else fmt_value(float(v)))
            rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(human: pd.DataFrame) -> str:
    """``human`` (:func:`table`) as a markdown table, every cell exactly as formatted (no
    re-parsing of numbers: ``0.500`` stays ``0.500``).

    Args:
        human: the table of text cells.

    Returns:
        The markdown.
    """
    return human.to_markdown(index=False, disable_numparse=True)


def baseline_lines(summary: pd.DataFrame) -> list[str]:
    """One line per group and regression task whose mean predictor the runs recorded: the
    group's final MAE beside predicting the mean, said plainly (``G2 seq_ft: brain_age MAE
    18.9 years, worse than predicting the mean (16.3 years)``), compared as both are shown.

    Args:
        summary: from :func:`summarise`.

    Returns:
        The lines (none without a mean predictor).
    """
    suffix = f", {MEAN_PREDICTOR} mean"
    lines = []
    for col in [c for c in summary.columns if c.endswith(suffix)]:
        task_metric = col[:-len(suffix)]  # "<task> mae (years)"
        value_col = f"{task_metric} ↓ mean"
        if value_col not in summary:
            continue
        task, metric = task_metric.split(" ", 1)
        unit = metric.split("(", 1)[1].rstrip(")") if "(" in metric else ""
        name = metric.split(" (", 1)[0].upper() if metric.startswith("mae") else metric
        for _, r in summary.iterrows():
            v, b = r[value_col], r[col]
            if _missing(v) or _missing(b):
                continue
            verdict = versus_baseline(v, {"mean_predictor": b}, higher_is_better=False)
            u = f" {unit}" if unit else ""
            lines.append(f"{r['group']} {r['strategy']}: {task} {name} {fmt_value(v)}{u}, "
                         f"{verdict} ({fmt_value(b)}{u})")
    return lines


def latex_escape(text) -> str:
    """``text`` as LaTeX source in ASCII: its special characters escaped, the report's symbols
    as LaTeX (:data:`LATEX_TEXT`: ``↑`` -> ``$\\uparrow$``, ``±`` -> ``$\\pm$``, ``–`` ->
    ``--``), any other non-ASCII character as ``?``; a leading ``[`` braced (after ``\\\\`` it
    would read as a length).

    Args:
        text: any value (shown with ``str``).

    Returns:
        The LaTeX source.
    """
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    out = "".join(LATEX_TEXT.get(ch, ch) for ch in out)
    out = out.encode("ascii", "replace").decode("ascii")
    return "{}" + out if out.startswith("[") else out


def _header(name: str, width: int = 14) -> str:
    """A column header in LaTeX, broken into lines of about ``width`` characters (at spaces,
    or after a ``.`` or ``_`` of a config key)."""
    lines: list[str] = []
    for piece in re.findall(r"[^ ._]*[._]?(?: |$)?|.", str(name)):
        if lines and len(lines[-1]) + len(piece.rstrip()) <= width:
            lines[-1] += piece
        elif piece:
            lines.append(piece)
    lines = [line.strip() for line in lines if line.strip()]
    if len(lines) <= 1:
        return latex_escape(name)
    return (r"\begin{tabular}[b]{@{}c@{}}" + r"\\".join(latex_escape(line) for line in lines)
            + r"\end{tabular}")


def _tabular(frame: pd.DataFrame, caption: str, left: int) -> str:
    """One LaTeX table of ``frame`` (text cells; the first ``left`` columns flush left, the
    numbers flush right), scaled to the text width."""
    spec = "l" * min(left, frame.shape[1]) + "r" * max(0, frame.shape[1] - left)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\caption{" + latex_escape(caption) + "}",
             r"\resizebox{\textwidth}{!}{%", r"\begin{tabular}{" + spec + "}", r"\hline",
             " & ".join(_header(c) for c in frame.columns) + r" \\", r"\hline"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\"
              for row in frame.astype(str).itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(lines)


def latex_document(human: pd.DataFrame, keys: list[str], notes: list[str],
                   title: str = "clbench-report") -> str:
    """``report.tex``: a pdflatex document (``article``, ``graphicx`` only) in ASCII.

    The columns every group shares one value of (``tasks``, ``backbone`` of a one-stream
    report) go into the first caption; the groups' keys (``group``, ``strategy``, the other
    group keys, ``runs``, ``status``) form a key table; the quantities follow in tables of
    ``group``, ``strategy`` and at most :data:`LATEX_COLUMNS` - 2 quantities. A table whose
    key columns alone exceed :data:`LATEX_COLUMNS` is split the same way.

    Args:
        human: from :func:`table`; keys: its columns that are not quantities (``group``, the
            group keys, ``runs``, ``status``); notes: paragraphs printed under the title (the groups'
            keys, baselines, the paper's note); title: the section title.

    Returns:
        The document's source.
    """
    keys = [c for c in human.columns if c in keys]
    qty = [c for c in human.columns if c not in keys]
    ours = human[human["status"] != "published"] if "status" in human else human
    shared = {c: ours[c].iloc[0] for c in keys
              if c not in ("group", "strategy") and len(ours) > 1
              and ours[c].astype(str).nunique() == 1 and str(ours[c].iloc[0]) not in ("", UNSET)}
    keys = [c for c in keys if c not in shared]
    lead = ["group", "strategy"] if "strategy" in keys else ["group"]
    body = [r"\documentclass{article}", r"\usepackage{graphicx}", r"\begin{document}",
            r"\sloppy",
            r"\section*{" + latex_escape(title) + "}", ""]
    body += [latex_escape(n) + "\n" for n in notes]
    groups_caption = "Groups" + ("; all: " + ", ".join(f"{k} {v}" for k, v in shared.items())
                                 if shared else "")
    rest = [c for c in keys if c not in lead]
    step = LATEX_COLUMNS - len(lead)
    for i in range(0, max(len(rest), 1), step):
        part = ours[lead + rest[i:i + step]]
        body.append(_tabular(part, groups_caption + (" (continued)" if i else ""),
                             part.shape[1]))
    for k, i in enumerate(range(0, len(qty), step)):
        part = human[lead + qty[i:i + step]]
        body.append(_tabular(part, f"Results ({k + 1}/{math.ceil(len(qty) / step)}): mean "
                                   f"± std over seeds", len(lead)))
    body.append(r"\end{document}")
    return "\n".join(body) + "\n"

# ------------------------------------------------------------------ figures
# The report's figures: ``heatmaps.png`` (each group's seed-mean R), ``curves.png`` (each
# task's metric after every training step) and ``losses.png`` (the training loss of each task).
#
# Every figure names a group as the tables do (``G1``, ``G2``, ...) with a short label (the values
# that differ between groups) and ends in a key: each group's full setting, the values all groups
# share and the abbreviations. In ``heatmaps.png`` a metric has one colour scale in every panel,
# shown by its colour bar (bright = better whatever the metric's direction), so one value has one
# colour; a regression task's mean predictor is a row of its own.

#: colour maps of the first, second, ... metric of a report (reversed for lower-is-better)
CMAPS = ("viridis", "cividis", "plasma", "magma")
#: the label of a heatmap's mean-predictor row
BASELINE_ROW = "predicting the mean"
#: points per character of the figures' text, roughly (DejaVu Sans): what fits a panel
_CHAR_PT = 0.6


def describe_groups(runs: pd.DataFrame, keys: list[str]) -> tuple[list[dict], list[str]]:
    """The groups as the figures name them.

    Args:
        runs: from :func:`load_runs`; keys: the group keys.

    Returns:
        ``(groups, shared)``: per group ``{"name": "G1", "label": "lora · max_tasks=1",
        "runs": its runs}`` (the label: the group keys' values that differ between groups,
        a config key as ``short name=value``, a key the group does not set left out), and the
        values every group shares (``tasks digits``, ``backbone vit2d_digits``).
    """
    groups = iter_groups(runs, keys)
    varying = [k for k in keys if len({_compared(k.removeprefix("cfg:"), v[k])
                                       for v, _ in groups}) > 1]
    short = short_keys([k for k in varying if k.startswith("cfg:")])
    out = []
    for i, (values, g) in enumerate(groups, start=1):
        parts = []
        for k in varying:
            if k.startswith("cfg:"):
                if not _missing(values[k]):
                    parts.append(f"{short[k]}={show_value(values[k])}")
            else:
                parts.append(show_value(values[k]))
        out.append({"name": f"G{i}", "label": " · ".join(parts), "runs": g})
    first = groups[0][0] if groups else {}
    shared = [f"{short_keys([k])[k] if k.startswith('cfg:') else k} {show_value(first[k])}"
              for k in keys if k not in varying and not _missing(first.get(k))]
    return out, shared


def _fits(text: str, width_in: float, fontsize: float) -> bool:
    return len(text) * fontsize * _CHAR_PT <= width_in * 72


def panel_title(group: dict, width_in: float, fontsize: float = 9) -> str:
    """A panel's title: ``G1 lora · max_tasks=1 (n=2)``, shortened to its name, first value
    and run count, then its name and run count, until it fits ``width_in`` inches (the key
    under the figure says the rest).

    Args:
        group: from :func:`describe_groups`; width_in: the panel's width; fontsize: in points.

    Returns:
        The title.
    """
    n = f"(n={len(group['runs'])})"
    parts = group["label"].split(" · ") if group["label"] else []
    for text in (" ".join([group["name"], group["label"], n]),
                 " ".join([group["name"], parts[0] + " …" if len(parts) > 1 else "", n])
                 if parts else "", f"{group['name']} {n}"):
        if text and _fits(text.replace("  ", " "), width_in, fontsize):
            return text.replace("  ", " ")
    return group["name"]


def short_label(group: dict, max_chars: int = 30) -> str:
    """A group's name in a legend: ``G1 lora · max_tasks=1``, or ``G1 lora …`` (its first
    value) when longer than ``max_chars`` (the figure's key says the rest).

    Args:
        group: from :func:`describe_groups`; max_chars: the longest label.

    Returns:
        The label.
    """
    text = f"{group['name']} {group['label']}".strip()
    if len(text) <= max_chars:
        return text
    first = group["label"].split(" · ")[0]
    text = f"{group['name']} {first} …"
    return text if len(text) <= max_chars else group["name"]


def figure_key(groups: list[dict], shared: list[str], extra: list[str], width_in: float,
               fontsize: float = 8) -> list[str]:
    """The lines of a figure's key: each group's full label and run count, the values every
    group shares, then ``extra`` (abbreviations), wrapped to ``width_in`` inches.

    Args:
        groups, shared: from :func:`describe_groups`; extra: more lines; width_in: the
            figure's width; fontsize: in points.

    Returns:
        The lines.
    """
    lines = [f"{g['name']}: {g['label'] or 'the others'} ({len(g['runs'])} run"
             f"{'s' if len(g['runs']) != 1 else ''})" for g in groups]
    if shared:
        lines.append("all groups: " + ", ".join(shared))
    lines += extra
    width = max(int(width_in * 72 / (fontsize * _CHAR_PT)), 30)
    return [w for line in lines for w in textwrap.wrap(line, width, subsequent_indent="    ",
                                                       break_long_words=False,
                                                       break_on_hyphens=False)]


def _mean_matrix(g: pd.DataFrame) -> pd.DataFrame:
    """The seed-mean R of a group (the longest run's rows; a partial run's missing rows are
    NaN, left out of the mean)."""
    mats = list(g["_matrix"])
    index = max((m.index for m in mats), key=len)
    return pd.concat([m.reindex(index) for m in mats]).groupby(level=0).mean().reindex(index)


def _mean_baselines(g: pd.DataFrame) -> dict[str, float]:
    """Per regression task, the group's mean predictor (the mean over its runs)."""
    found: dict[str, list[float]] = {}
    for b in g["_baselines"]:
        for task, v in (b or {}).items():
            found.setdefault(task, []).append(v)
    return {t: float(np.mean(v)) for t, v in found.items()}


def _metric_of(units: dict, task: str) -> tuple[str, str, bool]:
    u = units.get(task, {})
    return u.get("metric", ""), u.get("units", ""), bool(u.get("higher_is_better", True))


def metric_scales(runs: pd.DataFrame, keys: list[str]) -> dict[tuple, dict]:
    """One colour scale per metric (name, units, direction) for every heatmap panel.

    A higher-is-better metric whose values all lie in [0, 1] (Dice, accuracy) runs from 0 to 1;
    a lower-is-better one with a mean predictor from 0 (perfect) to the largest mean predictor
    (as bad as always guessing the mean: the worst colour, whatever the other cells); any other
    from the smallest to the largest seed-mean value of any group.

    Args:
        runs: from :func:`load_runs`; keys: the group keys.

    Returns:
        ``{(metric, units, higher_is_better): {"vmin", "vmax", "cmap", "extend"}}`` in the order
        the metrics first appear; ``cmap`` is reversed for lower-is-better, so bright is better.
    """
    values: dict[tuple, list[float]] = {}
    bases: dict[tuple, list[float]] = {}
    for _, g in iter_groups(runs, keys):
        units = {k: v for u in g["_units"] for k, v in u.items()}
        mean = _mean_matrix(g)
        for task in mean.columns:
            key = _metric_of(units, task)
            values.setdefault(key, []).extend(mean[task].to_numpy(float).tolist())
        for task, b in _mean_baselines(g).items():
            bases.setdefault(_metric_of(units, task), []).append(b)
    scales = {}
    for i, (key, vals) in enumerate(values.items()):
        x = np.array([v for v in vals if np.isfinite(v)], float)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
        extend = "neither"
        if key[2] and x.size and lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0
        elif not key[2] and bases.get(key):
            lo, hi = min(0.0, lo), max(bases[key])
            extend = "max" if x.size and x.max() > hi else "neither"
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        cmap = CMAPS[i % len(CMAPS)] + ("" if key[2] else "_r")
        scales[key] = {"vmin": lo, "vmax": hi, "cmap": cmap, "extend": extend}
    return scales


def _scale_label(key: tuple) -> str:
    metric, units, hib = key
    return f"{metric_label(metric)}{f' ({units})' if units else ''} {ARROW[hib]}"


def _versus(v: float, b: float) -> str:
    """A lower-is-better value against its mean predictor, compared as both are shown."""
    verdict = versus_baseline(v, {"mean_predictor": b}, higher_is_better=False) or ""
    return "= the mean" if verdict.startswith("no better") else (
        "worse than the mean" if verdict.startswith("worse") else "")


def plot_heatmaps(runs: pd.DataFrame, keys: list[str], path: Path) -> dict:
    """A grid of seed-mean R matrices, one panel per group, titled by the group's short name
    (:func:`panel_title`), with one colour scale and colour bar per metric
    (:func:`metric_scales`), values annotated in native units by
    :func:`cl_bench.summary.fmt_value`; a regression task's mean predictor as a last row, and a
    cell no better than it marked so; the key (:func:`figure_key`) under the grid.

    Args:
        runs: from :func:`load_runs`; keys: the group keys; path: the PNG.

    Returns:
        What was drawn: ``titles`` (per panel), ``scales`` (:func:`metric_scales`), ``cells``
        (``{(group, row, task): (text, RGBA colour)}``), ``key`` (its lines) and ``colorbars``
        (each colour bar's label, one per metric).
    """
    groups, shared = describe_groups(runs, keys)
    scales = metric_scales(runs, keys)
    mats = [_mean_matrix(g["runs"]) for g in groups]
    bases = [_mean_baselines(g["runs"]) for g in groups]
    ncol = min(3, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    n_tasks = max(m.shape[1] for m in mats)
    n_rows = max(len(m) + bool(b) for m, b in zip(mats, bases))
    panel_w, panel_h = 1.9 + 1.15 * n_tasks, 1.3 + 0.42 * n_rows
    width = panel_w * ncol + 1.1 * len(scales)
    extra = ["n: runs (seeds) averaged; a key missing from a group's line: its runs do not "
             "set it",
             "rows: R after training each task (init: before any); colour: bright = better, "
             "one scale per metric (colour bars)"]
    if any(bases):
        extra.append(f"{BASELINE_ROW}: the MAE of always answering the training mean; a value "
                     "no better than it says so")
    key = figure_key(groups, shared, extra, width)
    key_h = 0.2 + 0.16 * len(key)
    fig = plt.figure(figsize=(width, panel_h * nrow + key_h + 0.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[panel_h * nrow + 0.5, key_h])
    axes = top.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    titles, cells = [], {}
    for ax, group, mean, base in zip(axes.flat, groups, mats, bases):
        units = {k: v for u in group["runs"]["_units"] for k, v in u.items()}
        rows = list(mean.index) + ([BASELINE_ROW] if base else [])
        rgba = np.ones((len(rows), mean.shape[1], 4))
        for j, task in enumerate(mean.columns):
            s = scales[_metric_of(units, task)]
            norm, cmap = Normalize(s["vmin"], s["vmax"], clip=True), plt.get_cmap(s["cmap"])
            col = list(mean[task].to_numpy(float)) + ([base.get(task, np.nan)] if base else [])
            for i, v in enumerate(col):
                colour = (0.92, 0.92, 0.92, 1.0) if not np.isfinite(v) else cmap(norm(v))
                rgba[i, j] = colour
                text = "–" if not np.isfinite(v) else fmt_value(v)
                if (np.isfinite(v) and task in base and rows[i] != BASELINE_ROW
                        and _versus(v, base[task])):
                    text += "\n" + _versus(v, base[task])
                if rows[i] == BASELINE_ROW and not np.isfinite(v):
                    text = ""
                lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
                ax.text(j, i, text, ha="center", va="center", fontsize=8 if "\n" not in text
                        else 6.5, color="white" if lum < 0.5 else "black")
                cells[(group["name"], rows[i], task)] = (text, tuple(float(c) for c in colour))
        ax.imshow(rgba, aspect="auto", interpolation="nearest")
        if base:
            ax.axhline(len(mean) - 0.5, color="white", linewidth=2)
        ax.set_xticks(range(mean.shape[1]), [f"{t}\n{_scale_label(_metric_of(units, t))}"
                                             for t in mean.columns], fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        title = panel_title(group, panel_w - 1.2)
        ax.set_title(title, fontsize=9)
        titles.append(title)
    colorbars = []
    for k, s in reversed(scales.items()):  # each bar goes outside the last: the first nearest
        bar = top.colorbar(ScalarMappable(Normalize(s["vmin"], s["vmax"]), s["cmap"]),
                           ax=axes.ravel().tolist(), label=_scale_label(k), extend=s["extend"],
                           shrink=0.7, aspect=25)
        colorbars.insert(0, bar.ax.get_ylabel())
    top.suptitle("R, mean over seeds", fontsize=10)
    bottom.text(0.01, 0.98, "\n".join(key), ha="left", va="top", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"titles": titles, "scales": scales, "cells": cells, "key": key,
            "colorbars": colorbars}


def _figure_with_key(width: float, main_h: float, key: list[str], ncols: int, n_lines: int):
    """A figure of one row of ``ncols`` panels above its key's lines: ``(fig, top subfigure,
    axes)``, the axes drawing ``n_lines`` lines in as many colours (``tab20`` beyond 10)."""
    key_h = 0.2 + 0.15 * len(key)
    fig = plt.figure(figsize=(width, main_h + key_h), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[main_h, key_h])
    bottom.text(0.01, 0.98, "\n".join(key), ha="left", va="top", fontsize=8)
    axes = top.subplots(1, ncols, squeeze=False)[0]
    colours = plt.get_cmap("tab10" if n_lines <= 10 else "tab20").colors
    for ax in axes:
        ax.set_prop_cycle(color=colours)
    return fig, top, axes


def _legend(fig, handles: dict) -> list[str]:
    """One legend for the whole figure, each group once, under the panels."""
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center",
               ncols=min(3, len(labels)), fontsize=8, frameon=False)
    return labels


def plot_curves(runs: pd.DataFrame, keys: list[str], path: Path) -> list[str]:
    """One panel per task j: R[i][j] after each training step i (mean ± std band per group);
    runs of different streams in one report each draw on their own tasks' panels. One legend,
    each group once (``G1 lora``, as in the tables), and the key under it.

    Args:
        runs: from :func:`load_runs`; keys: the group keys; path: the PNG.

    Returns:
        The legend's labels, in order.
    """
    groups, shared = describe_groups(runs, keys)
    tasks = list(dict.fromkeys(t for m in runs["_matrix"] for t in m.columns))
    units = {k: v for u in runs["_units"] for k, v in u.items()}
    width = max(4.2 * len(tasks), 6.0)
    key = figure_key(groups, shared, ["band: ± std over the group's runs"], width)
    fig, top, axes = _figure_with_key(width, 3.6 + 0.25 * math.ceil(len(groups) / 3), key,
                                      len(tasks), len(groups))
    handles = {}
    for ax, task in zip(axes, tasks):
        for group in groups:
            g = group["runs"]
            have = [m[task].rename(i) for i, m in enumerate(g["_matrix"]) if task in m.columns]
            if not have:
                continue
            task_rows = list(max((m.index for m in g["_matrix"] if task in m.columns), key=len))
            series = pd.concat(have, axis=1).reindex(task_rows)
            mean, std = series.mean(axis=1), series.std(axis=1, ddof=1).fillna(0)
            x = np.arange(len(mean))
            label = short_label(group)
            (line,) = ax.plot(x, mean, marker="o", label=label)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
            handles.setdefault(label, line)
            ax.set_xticks(range(len(task_rows)), task_rows, rotation=15, fontsize=7)
        ax.set_ylabel(_scale_label(_metric_of(units, task)))
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("after training")
    labels = _legend(top, handles)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return labels


def plot_losses(runs: pd.DataFrame, keys: list[str], path: Path) -> list[str] | None:
    """One panel per task: its training loss against the step (the CSV logger's
    ``<task>/task_loss``, :func:`read_losses`), the mean over each group's
    runs, one line per group, one legend.

    Args:
        runs: from :func:`load_runs`; keys: the group keys; path: the PNG.

    Returns:
        The legend's labels, or ``None`` when no run logged a loss (nothing is written).
    """
    if not any(len(x) for x in runs["_losses"]):
        return None
    groups, shared = describe_groups(runs, keys)
    tasks = list(dict.fromkeys(t for x in runs["_losses"] for t in x["task"]))
    width = max(4.2 * len(tasks), 6.0)
    key = figure_key(groups, shared, ["loss: the task's training loss (the strategy's own "
                                      "terms left out), mean over the group's runs"], width)
    fig, top, axes = _figure_with_key(width, 3.4 + 0.25 * math.ceil(len(groups) / 3), key,
                                      len(tasks), len(groups))
    handles = {}
    for ax, task in zip(axes, tasks):
        for group in groups:
            curves = [x[x["task"] == task].set_index("step")["loss"] for x in group["runs"]["_losses"]
                      if len(x) and (x["task"] == task).any()]
            if not curves:
                continue
            mean = pd.concat(curves, axis=1).mean(axis=1).sort_index()
            label = short_label(group)
            (line,) = ax.plot(mean.index, mean.to_numpy(), label=label)
            handles.setdefault(label, line)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("train loss")
    labels = _legend(top, handles)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return labels

# ------------------------------------------------------------------ claims
# The paper's claims judged on our runs: ``claims.csv`` and ``claims.md``
# (``clbench-report --paper NAME`` for a paper of :data:`cl_bench.reference.PAPERS` that states
# claims).
#
# ``claims.md`` has one block per setting (stream, backbone and the shared config values the
# strategies are compared on; conf/'s default first), the setting named once in its heading, one
# short row per claim measured there; the claims no setting measured are listed in one line at
# the end. ``claims.csv`` keeps every test of every claim in every setting.

#: a claim test's comparison op -> (holds(value, threshold), margin(value, threshold), symbol);
#: the margin is positive on the holding side, -|value - threshold| for "==" (0 when it holds)
OPS = {"<=": (operator.le, lambda v, t: t - v, "≤"),
       ">=": (operator.ge, lambda v, t: v - t, "≥"),
       "<": (operator.lt, lambda v, t: t - v, "<"),
       ">": (operator.gt, lambda v, t: v - t, ">"),
       "==": (operator.eq, lambda v, t: -abs(v - t), "=")}

#: the columns of ``claims.csv``, the full table (one row per claim and per test of a claim)
CLAIM_COLUMNS = ("setting", "claim", "statement", "strategy", "quantity", "value mean", "value std",
                 "per seed", "op", "threshold", "threshold mean", "margin mean", "margin std",
                 "seeds holding", "seeds measured", "verdict", "note")
#: strings per test row: the value, per seed and margin as text, ``holds`` as ``k/n``
CLAIM_TEXT = ("value", "per seed ✓ holds", "margin (> 0: holds side)", "holds")
#: the columns of a ``claims.md`` block (one row per claim) -> their headers there
CLAIM_MD = {"claim": "claim", "md statement": "statement", "md ours": "ours (mean ± std, n)",
            "md paper": "paper", "md holds": "holds"}
#: the longest line ``claims.md`` should have (notes are wrapped to fit)
CLAIM_MD_WIDTH = 160


def _number(v) -> float:
    """A JSON value as a float: NaN for None, a missing key, a boolean or a non-number."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _seed(seed) -> int | str:
    try:
        return int(seed) if float(seed).is_integer() else str(seed)
    except (TypeError, ValueError):
        return str(seed)


def _show(v: float) -> str:
    """One number as in the tables, but a tiny non-zero one (|v| < 5e-4) in ``.2g`` so that it
    never reads as 0 (an "exactly 0" claim)."""
    return f"{v:.2g}" if v and abs(v) < 5e-4 else fmt_mean_std(v, None)


def _mean_std(x: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; NaN for fewer than two values; both NaN for none)."""
    return (float(np.mean(x)) if x else math.nan,
            float(np.std(x, ddof=1)) if len(x) > 1 else math.nan)


def _pm(mean: float, std: float) -> str:
    """``mean ± std`` as :func:`fmt_mean_std`, in ``.2g`` for a tiny
    non-zero mean (:func:`_show`)."""
    if not (mean and abs(mean) < 5e-4):
        return fmt_mean_std(mean, std)
    return _show(mean) + ("" if math.isnan(std) else f" ± {std:.2g}")


def _verdict(holds: list[bool]) -> str:
    """``holds`` (every seed), ``fails`` (no seed), ``mixed (k/n)`` or ``not measured``."""
    k, n = sum(holds), len(holds)
    return ("not measured" if not n else "holds" if k == n else "fails" if not k
            else f"mixed ({k}/{n})")


def _measure(rec: pd.Series, spec: dict, checks: dict | None) -> tuple[float, bool]:
    """One run's value of a claim quantity ``spec`` (vocabulary: :mod:`cl_bench.reference`).

    Returns:
        ``(value, from_checks)``: a float in the quantity's own units (Dice, MAE in years, % of
        the backbone, or a ratio of two), NaN where the run's files do not record it or a ratio's
        denominator is 0; ``from_checks``: the value came from ``data_checks.json``.

    Raises:
        ValueError: an unknown ``spec`` (a mistake in :mod:`cl_bench.reference`).
    """
    if "ratio" in spec:
        (num, c1), (den, c2) = (_measure(rec, q, checks) for q in spec["ratio"])
        return (num / den if den else math.nan), c1 or c2
    m, metrics = rec["_matrix"], rec["_metrics"]
    last = f"after_{m.columns[-1]}" if len(m.columns) else None  # after the stream's last task

    def cell(row, task):
        return float(m.at[row, task]) if row in m.index and task in m.columns else math.nan

    if "final" in spec:
        return cell(last, spec["final"]), False
    if "just_learned" in spec:
        return cell(f"after_{spec['just_learned']}", spec["just_learned"]), False
    if "bwt" in spec:
        task = spec["bwt"]
        sign = 1.0 if rec["_units"].get(task, {}).get("higher_is_better", True) else -1.0
        return sign * (cell(last, task) - cell(f"after_{task}", task)), False
    if "group" in spec:
        return _number(metrics.get("groups", {}).get(spec["group"], {}).get(spec["key"])), False
    if "detail" in spec:
        row = metrics.get("details", {}).get(last, {}).get(spec["task"], {})
        v = _number(row.get(spec["detail"]))
        if math.isnan(v) and checks and spec.get("data_checks"):
            v = _number(checks.get(spec["task"], {}).get(spec["data_checks"]))
            return v, not math.isnan(v)
        return v, False
    if "params" in spec:
        task = rec["_params"].get("tasks", {}).get(spec["task"], {})
        return _number(task.get(spec["params"])), False
    raise ValueError(f"unknown claim quantity {spec!r}")


def _per_seed(runs: pd.DataFrame, strategy: str, spec: dict, checks: dict | None
              ) -> tuple[dict, bool]:
    """``({seed: value}, from_checks)``: quantity ``spec`` of ``strategy``'s runs, the mean of a
    seed's runs (normally one), for the seeds where it is measured."""
    values, from_checks = {}, False
    for seed, g in runs[runs["strategy"] == strategy].groupby("seed", sort=True, dropna=False):
        got = [_measure(r, spec, checks) for _, r in g.iterrows()]
        x = [v for v, _ in got if math.isfinite(v)]
        from_checks |= any(c for v, c in got if math.isfinite(v))
        if x:
            values[_seed(seed)] = float(np.mean(x))
    return values, from_checks


def _judge(runs: pd.DataFrame, test: dict, checks: dict | None,
           partial: frozenset = frozenset()) -> dict:
    """One claim test, seed by seed (``runs``: the complete runs of one setting; ``partial``:
    the strategies of its partial runs).

    Returns:
        ``{"value", "threshold", "margin", "holds"}`` (each ``{seed: ...}`` over the seeds where
        both value and threshold are measured), ``notes``: why it is not measured, where a
        value came from ``data_checks.json``, which seeds compare with a reference mean; and
        ``why``: why it is not measured in <= 6 words (``""`` when it is).
    """
    strategy, thr = test["strategy"], test["threshold"]
    ref_strategy = thr.get("strategy", strategy) if isinstance(thr, dict) else strategy
    values, from_checks = _per_seed(runs, strategy, test["value"], checks)
    notes = [f"{test['quantity']} from data_checks.json (not in the runs' metrics.json)"
             ] if from_checks else []
    if isinstance(thr, dict):
        ref, ref_checks = _per_seed(runs, ref_strategy, thr["of"], checks)
        if ref_checks:
            notes.append(f"the {thr['label']} from data_checks.json (not in the runs' "
                         f"metrics.json)")
        mean = float(np.mean(list(ref.values()))) if ref else math.nan
        thresholds = {s: thr.get("times", 1.0) * ref.get(s, mean) for s in values}
        unmatched = [s for s in values if ref and s not in ref]
        if unmatched:
            notes.append(f"seed(s) {', '.join(map(str, unmatched))}: no seed-matched "
                         f"{ref_strategy} value, compared with the {thr['label']} averaged over "
                         f"{ref_strategy}'s seeds")
    else:
        thresholds = {s: float(thr) for s in values}
    holds, margin, _ = OPS[test["op"]]
    seeds = [s for s in values if math.isfinite(thresholds[s])]
    why = ""
    if not (runs["strategy"] == strategy).any():
        notes.append(f"not measured: no complete {strategy} runs")
        why = f"no {'complete ' if strategy in partial else ''}{strategy} runs"
    elif not values:
        notes.append(f"not measured: the {strategy} runs do not record {test['quantity']}")
        why = f"not recorded by the {strategy} runs"
    elif not seeds and not (runs["strategy"] == ref_strategy).any():
        notes.append(f"not measured: no complete {ref_strategy} runs for the {thr['label']}")
        why = f"no {'complete ' if ref_strategy in partial else ''}{ref_strategy} runs"
    elif not seeds:
        notes.append(f"not measured: the {ref_strategy} runs do not record the {thr['label']}"
                     + (", nor does any data_checks.json" if "data_checks" in thr["of"] else ""))
        why = f"no {thr['label']}"
    return {"value": {s: values[s] for s in seeds}, "threshold": {s: thresholds[s] for s in seeds},
            "margin": {s: margin(values[s], thresholds[s]) for s in seeds},
            "holds": {s: bool(holds(values[s], thresholds[s])) for s in seeds}, "notes": notes,
            "why": why}


def _test_row(tid: str, test: dict, j: dict, stream: str | None = None) -> dict:
    """A claim test's row: the ``claims.csv`` numbers and their strings (:data:`CLAIM_TEXT`);
    the threshold names the ``stream``'s floor where the test states one."""
    seeds, thr, sym = list(j["value"]), test["threshold"], OPS[test["op"]][2]
    (v, v_sd), (t, _), (mg, mg_sd) = (_mean_std(list(j[k].values()))
                                      for k in ("value", "threshold", "margin"))
    if isinstance(thr, dict):
        times = thr.get("times", 1.0)
        threshold = f"{sym} {'' if times == 1 else f'{times:g} × '}{thr['label']}"
        threshold += f" = {_pm(*_mean_std(list(j['threshold'].values())))}" if seeds else ""
    else:
        threshold = f"{sym} {thr:g}"
    if stream in test.get("floor", {}):
        threshold += f" ({test['floor'][stream]['label']})"
    per_seed = ", ".join(
        f"s{s} {_show(j['value'][s])}"
        + (f" ({sym} {_show(j['threshold'][s])})" if isinstance(thr, dict) else "")
        + (" ✓" if j["holds"][s] else " ✗") for s in seeds)
    k = sum(j["holds"].values())
    return {"claim": tid, "statement": "", "strategy": test["strategy"],
            "quantity": test["quantity"], "value mean": v, "value std": v_sd,
            "per seed": json.dumps({str(s): j["value"][s] for s in seeds}), "op": test["op"],
            "threshold": threshold, "threshold mean": t, "margin mean": mg, "margin std": mg_sd,
            "seeds holding": k, "seeds measured": len(seeds),
            "verdict": _verdict(list(j["holds"].values())), "note": "; ".join(j["notes"]),
            "value": _pm(v, v_sd), "per seed ✓ holds": per_seed or "–",
            "margin (> 0: holds side)": _pm(mg, mg_sd),
            "holds": f"{k}/{len(seeds)}" if seeds else "–"}


class _CfgValues(dict):
    """``{cfg[key]}`` in a claim's ``why_not``: the config key's values over ``runs``."""

    def __init__(self, runs: pd.DataFrame):
        super().__init__()
        self.runs = runs

    def __missing__(self, key: str) -> str:
        col = self.runs[f"cfg:{key}"].dropna() if f"cfg:{key}" in self.runs else []
        values = dict.fromkeys(f"{v:g}" if isinstance(v, float) else str(v) for v in col)
        return ", ".join(values) or "?"


def _claim_tasks(spec) -> set[str]:
    """Every task a claim definition (or a part of one) reads."""
    if isinstance(spec, list):
        return set().union(*map(_claim_tasks, spec)) if spec else set()
    if not isinstance(spec, dict):
        return set()
    found = {spec[k] for k in ("final", "just_learned", "bwt", "task")
             if isinstance(spec.get(k), str)}
    return found.union(*map(_claim_tasks, spec.values()))


def _settings(runs: pd.DataFrame, tasks: set[str]) -> list[tuple[str, dict, pd.DataFrame]]:
    """The runs split by the group keys but ``strategy``, the config groups' names (``tasks``,
    ``backbone`` again) and any key some runs lack (a strategy's own hyper-parameter): one
    stream, backbone and shared settings each, where the strategies are compared; only those
    whose runs measured ``tasks`` (maybe none). Each as ``(label, values, runs)``: the label
    ``stream / backbone`` (`` / key=value`` for any other key) and ``{key: value}`` (``tasks``,
    ``backbone`` and config keys)."""
    keys = [k for k in group_keys(runs) if k != "strategy" and not k.endswith(".name")
            and runs[k].notna().all()]
    groups = iter_groups(runs, keys) if keys else [({}, runs)]
    out = []
    for found, g in groups:
        if any(tasks <= set(m.columns) for m in g["_matrix"]):
            values = tuple(found[k] for k in keys)
            named = {k.removeprefix("cfg:"): v for k, v in zip(keys, values)}
            out.append((" / ".join(f"{k[4:]}={v}" if k.startswith("cfg:") else str(v)
                                   for k, v in zip(keys, values)) or "all runs", named, g))
    return out


@functools.lru_cache(maxsize=1)
def _conf_default() -> dict:
    """The default config of conf/ (Hydra's compose API, no overrides), flattened as
    :func:`_load_run` reads a run's (``group.key`` -> value, lists as JSON), plus ``tasks`` and
    ``backbone``: the groups' names; ``{}`` where conf/ cannot be composed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from cl_bench.cli import CONF_DIR

    if GlobalHydra.instance().is_initialized():  # an app ran in this process before (tests)
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config")
        flat = _flatten(OmegaConf.to_container(cfg, resolve=False))
    except (HydraException, OmegaConfBaseException, OSError, ValueError):
        return {}
    flat = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in flat.items()}
    return dict(flat, tasks=flat.get("tasks.name"), backbone=flat.get("backbone.name"))


def _default_first(settings: list, default: dict) -> tuple[list, bool]:
    """``settings`` (:func:`_settings`) with the default one first: the one whose every value
    equals ``default``'s (keys the default lacks are not compared); then by how many values
    equal it, more runs first, as found. Returns the order and whether the first is the
    default."""
    def same(key, value) -> bool:
        return key in default and (value == default[key]
                                   or str(value) == str(default[key]))  # lists: JSON

    def agree(setting) -> int:
        return sum(same(k, v) for k, v in setting[1].items())

    order = [s for _, s in sorted(enumerate(settings),
                                  key=lambda p: (-agree(p[1]), -len(p[1][2]), p[0]))]
    exact = bool(default) and bool(order) and all(same(k, v) for k, v in order[0][1].items()
                                                  if k in default)
    return order, exact


def _headings(settings: list, exact: bool, default: dict) -> tuple[list[str], str]:
    """Each setting's heading: ``stream · backbone`` and the keys whose value differs between
    ``settings`` (short names, :func:`short_keys`): all of them for the first, marked
    ``(default)`` if it is, for the others those where they differ from the first; and, for a
    first that is not the default, a line saying so with the default's values."""
    values = [v for _, v, _ in settings]
    keys = [k for k in values[0] if k not in ("tasks", "backbone")
            and len({str(v.get(k)) for v in values}) > 1]
    short = short_keys(keys)
    heads = [" · ".join([str(v.get("tasks", "–")), str(v.get("backbone", "–"))]
                        + [f"{short[k]}={v.get(k)}" for k in keys
                           if not i or str(v.get(k)) != str(values[0].get(k))])
             for i, v in enumerate(values)]
    lead = ""
    if exact:
        heads[0] += " (default)"
    elif default and heads:
        off = [f"{short.get(k, k)}={default[k]}" for k, v in values[0].items()
               if k in default and str(v) != str(default[k])]
        lead = (f"The setting closest to the default: no setting here is conf/'s default "
                f"({', '.join(off)}).")
    return heads, lead


def _judge_claims(runs: pd.DataFrame, paper: str, checks: dict | None, default: dict | None
                  ) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """:func:`claims_table`'s work, by setting: ``(claims, blocks, notes)``, each block
    ``{"setting", "heading", "lead", "stream", "notes"}`` in the table's order (the default
    setting first; ``lead``: a line under the heading), ``notes`` those about no setting in
    particular."""
    if paper not in PAPERS:
        raise ClBenchError(f"--paper {paper!r}: unknown; known: {', '.join(sorted(PAPERS))}")
    claims = PAPERS[paper].get("claims", [])
    tasks = _claim_tasks(claims)
    settings, notes = _settings(runs, tasks), []
    default = _conf_default() if default is None else default
    settings, exact = _default_first(settings, default)
    if not settings:  # every claim "not measured", on no runs
        settings, exact = [("–", {}, runs.iloc[0:0])], False
        notes.append(f"no run measured all of {', '.join(sorted(tasks))}: nothing to judge")
        heads, lead = ["–"], ""
    else:
        heads, lead = _headings(settings, exact, default)
    rows, blocks = [], []
    for (setting, values, g), heading in zip(settings, heads):
        stream = values.get("tasks")
        done = g[g["complete"]]
        partial = [f"{r.strategy} seed {_seed(r.seed)}" for r in g[~g["complete"]].itertuples()]
        block = {"setting": setting, "heading": heading, "lead": "" if blocks else lead,
                 "stream": stream, "notes": []}
        if partial:
            block["notes"].append("partial runs left out (claims are about the whole stream): "
                                  + ", ".join(partial))
        for claim in claims:
            claim_rows, claim_notes = _claim_rows(claim, done, checks,
                                                  frozenset(g[~g["complete"]]["strategy"]), stream)
            rows += [dict(r, setting=setting) for r in claim_rows]
            block["notes"] += claim_notes
        floors: dict[str, list[str]] = {}
        for claim in claims:
            for t in claim["tests"]:
                if stream in t.get("floor", {}):
                    floor = t["floor"][stream]
                    floors.setdefault(f"{floor['label']}: {floor['why']}", []).append(claim["id"])
        block["notes"] += [f"({', '.join(dict.fromkeys(ids))}) {text}"
                           for text, ids in floors.items()]
        blocks.append(block)
    columns = list(dict.fromkeys(CLAIM_COLUMNS + CLAIM_TEXT + tuple(CLAIM_MD)))
    return pd.DataFrame(rows).reindex(columns=columns), blocks, notes


def claims_table(runs: pd.DataFrame, paper: str, checks: dict | None = None,
                 default: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Judge each claim of ``paper`` (``PAPERS[paper]["claims"]``, e.g. those of the brain-MRI
    foundation-model paper, arXiv 2602.23533) on our runs, seed by seed.

    Per setting (:func:`_settings`; normally one sweep: one; the default setting first, then the
    closest to it: :func:`_default_first`), every test of a claim takes its quantity from each
    complete run of its strategy (partial runs are left out and counted in the notes), compares
    it per seed with its threshold and counts the seeds where it holds; a claim holds on a seed
    where all its tests do. Verdicts: ``holds`` (every measured seed), ``fails`` (none),
    ``mixed (k/n)``, ``not measured`` (no seed with a value, e.g. a strategy's runs are
    missing) — reported whichever way they come out.

    Args:
        runs: from :func:`load_runs`; paper: a key of ``PAPERS``; checks: a ``data_checks.json``
            (``scripts/brain_data_checks.py``), used where the runs do not record a ``detail``;
            default: the default config, flattened (``{"tasks": ..., "backbone": ...,
            "backbone.decoder": ...}``; ``None``: conf/'s, :func:`_conf_default`; ``{}``: none).

    Returns:
        ``(claims, notes)``: one row per claim, plus one per test (``b.1``, ``b.2``) for a claim
        of several tests, columns :data:`CLAIM_COLUMNS` + :data:`CLAIM_TEXT` (values, thresholds
        and margins in the quantity's units: Dice, MAE in years, %; ``margin`` = value -
        threshold signed so that > 0 is the holding side, -|value - threshold| for ``==``;
        ``per seed`` is ``{"<seed>": value}`` JSON) + the keys of :data:`CLAIM_MD` (a claim's
        row in ``claims.md``), and the notes (reasons, sources, each failing claim's
        ``why_not``, the floors; prefixed ``[setting]`` where there are several settings).

    Raises:
        ClBenchError: an unknown ``paper``.
        ValueError: a claim quantity :mod:`cl_bench.reference` does not define.
    """
    table, blocks, notes = _judge_claims(runs, paper, checks, default)
    where = len(blocks) > 1
    return table, notes + [f"[{b['setting']}] {n}" if where else n for b in blocks
                           for n in ([b["lead"]] if b["lead"] else []) + b["notes"]]


def _claim_rows(claim: dict, runs: pd.DataFrame, checks: dict | None,
                partial: frozenset = frozenset(), stream: str | None = None
                ) -> tuple[list[dict], list[str]]:
    """One claim on the complete ``runs`` of one setting (``partial``: the strategies of its
    partial runs; ``stream``: its stream): its row (its only test's, or a summary of all tests
    over the seeds measured by every test, with its ``claims.md`` cells) and, for several
    tests, one row each; and the notes, prefixed with the test's id."""
    tests = claim["tests"]
    ids = [claim["id"]] if len(tests) == 1 else [f"{claim['id']}.{i}"
                                                 for i in range(1, len(tests) + 1)]
    judged = [_judge(runs, t, checks, partial) for t in tests]
    parts = [_test_row(i, t, j, stream) for i, t, j in zip(ids, tests, judged)]
    seeds = [s for s in judged[0]["holds"] if all(s in j["holds"] for j in judged)]
    holds = {s: all(j["holds"][s] for j in judged) for s in seeds}
    k = sum(holds.values())
    head = dict(parts[0]) if len(tests) == 1 else {
        "claim": claim["id"], "strategy": ", ".join(dict.fromkeys(t["strategy"] for t in tests)),
        "quantity": " and ".join(ids), "seeds holding": k, "seeds measured": len(holds),
        "holds": f"{k}/{len(holds)}" if holds else "–",
        "per seed ✓ holds": ", ".join(f"s{s} {'✓' if h else '✗'}" for s, h in holds.items())
        or "–"}
    head.update(statement=claim["claim"], verdict=_verdict(list(holds.values())))
    head.update(_md_cells(claim, parts, judged, head))
    notes = [f"({i}) {n}" for i, j in zip(ids, judged) for n in j["notes"]]
    if head["verdict"].startswith(("fails", "mixed")) and claim.get("why_not"):
        mine = runs[runs["strategy"].isin([t["strategy"] for t in tests])]
        notes.append(f"({claim['id']}) why not: " + claim["why_not"].format(cfg=_CfgValues(mine)))
    return [head] + (parts if len(tests) > 1 else []), notes


def _md_cells(claim: dict, parts: list[dict], judged: list[dict], head: dict) -> dict:
    """A claim's ``claims.md`` cells (:data:`CLAIM_MD`): its ``short`` statement; ours: each
    test's mean ± std (MAE with `` y``), ``;`` between, and the seeds counted (``(n=3)``; per
    test where they differ), or ``not measured (why)``; the paper's numbers; the verdict with
    ``k/n``, or ``not judged (why)`` where only some tests are measured."""
    why = next((j["why"] for j in judged if j["why"]), "") or "no seed measured by all"
    counts = [p["seeds measured"] for p in parts]
    cells = ["–" if not n else p["value"] + (" y" if "(years)" in p["quantity"] else "")
             for p, n in zip(parts, counts)]
    counted = sorted({n for n in counts if n})
    if not counted:
        ours = f"not measured ({why})"
    elif len(counted) == 1:
        ours = "; ".join(cells) + f" (n={counted[0]})"
    else:
        ours = "; ".join(c + (f" (n={n})" if n else "") for c, n in zip(cells, counts))
    verdict = head["verdict"]
    judged_cell = ("–" if not counted else f"not judged ({why})" if verdict == "not measured"
                   else verdict if verdict.startswith("mixed") else f"{verdict} ({head['holds']})")
    return {"md statement": claim.get("short", claim["claim"]), "md ours": ours,
            "md paper": claim.get("paper", "–"), "md holds": judged_cell}


def _data_checks(dirs: list[Path]) -> tuple[dict | None, str | None, list[str]]:
    """The first readable ``data_checks.json`` directly in ``dirs`` (``None`` if none), where it
    is (``<dir name>/data_checks.json``) and a note for each one that could not be read (it is
    then passed over)."""
    problems = []
    for f in (d / "data_checks.json" for d in dirs):
        if f.is_file():
            try:
                checks = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                problems.append(f"{f.parent.name}/data_checks.json unreadable "
                                f"({type(e).__name__}: {e}): not used")
                continue
            if isinstance(checks, dict):
                return checks, f"{f.parent.name}/data_checks.json", problems
            problems.append(f"{f.parent.name}/data_checks.json is not a JSON object: not used")
    return None, None, problems


def _bullets(notes: list[str]) -> str:
    """Markdown list items, wrapped to 100 characters."""
    return "".join(textwrap.fill(n, 100, initial_indent="- ", subsequent_indent="  ",
                                 break_on_hyphens=False, break_long_words=False) + "\n"
                   for n in notes)


def claims_markdown(claims: pd.DataFrame, blocks: list[dict], notes: list[str], paper: str
                    ) -> str:
    """``claims.md``: the legend and ``notes``, then one block per setting (``blocks`` of
    :func:`_judge_claims`): its heading (the setting, named once), a table of one short row per
    claim measured there (:data:`CLAIM_MD`) and its notes but those on what was not measured;
    a ``why_not`` stated in full once. The claims measured in no test of a setting get no row:
    one line at the end of its block lists them, with why.

    Args:
        claims: from :func:`_judge_claims`; blocks: its blocks; notes: lines for the top;
        paper: a key of :data:`cl_bench.reference.PAPERS`.

    Returns:
        The markdown.
    """
    ids = [c["id"] for c in PAPERS[paper].get("claims", [])]
    legend = (
        "One block per setting, the default first, the others named by how they differ from "
        "it; one row per claim. ours: mean ± std over "
        "seeds (sample std) of each quantity the claim tests, in the statement's order, `;` "
        "between, over n seeds; MAE in years (y); mean pred.: always predicting the training "
        "mean age. paper: its numbers (norm.: MAE on its unstated normalised scale). holds: the "
        "seeds where every test holds. Each test per seed, its threshold and margin: claims.csv.")
    md = ("## The paper's claims on our runs\n\n" + _bullets(
        [legend, f"Source: {PAPERS[paper]['citation']}."] + notes))
    seen: set[str] = set()
    for block in blocks:
        rows = claims[(claims["setting"] == block["setting"]) & claims["claim"].isin(ids)]
        missing = rows["md ours"].fillna("").str.startswith("not measured")
        whys: dict[str, list[str]] = {}
        for cid, ours in zip(rows.loc[missing, "claim"], rows.loc[missing, "md ours"]):
            why = re.sub(r"^not measured \((.*)\)$", r"\1", ours)
            whys.setdefault(why, []).append(cid)
        rows = rows[~missing]
        shown = []
        for n in block["notes"]:
            if re.match(r"\([\w.]+\) not measured", n):
                continue
            if re.match(r"\(\w+\) why not: ", n) and n in seen:
                n = n.split(":", 1)[0] + ": as in the first block that fails it"
            seen.add(n)
            shown.append(n)
        if whys:
            shown.append("Not measured here: " + "; ".join(
                f"{', '.join(cids)} ({why})" for why, cids in whys.items()) + ".")
        md += (f"\n### {block['heading']}\n\n"
               + (textwrap.fill(block["lead"], 100) + "\n\n" if block["lead"] else "")
               + (rows[list(CLAIM_MD)].rename(columns=CLAIM_MD).fillna("–").to_markdown(
                   index=False, disable_numparse=True) + "\n\n" if len(rows) else "")
               + _bullets(shown))
    return md


def write_claims(runs: pd.DataFrame, paper: str, out: Path, dirs: list[Path],
                 default: dict | None = None) -> str:
    """Write ``claims.md`` (:func:`claims_markdown`) and ``claims.csv`` (:func:`claims_table`,
    :data:`CLAIM_COLUMNS`) into ``out``, with the mean predictor of ``data_checks.json`` from
    ``dirs`` (the report's inputs and ``out``) where the runs lack it; ``default`` as in
    :func:`claims_table`.

    Args:
        runs: from :func:`load_runs`; paper: a key of :data:`cl_bench.reference.PAPERS`;
        out: the report's directory; dirs: where to look for ``data_checks.json``; default:
        the default config, flattened (None: conf/'s).

    Returns:
        The markdown of ``claims.md``.

    Raises:
        ClBenchError: an unknown ``paper``.
    """
    checks, where, problems = _data_checks(dirs)
    claims, blocks, notes = _judge_claims(runs, paper, checks, default)
    used = claims["note"].fillna("").str.contains("from data_checks.json", regex=False)
    if where and used.any():
        problems.append(f"data_checks.json read: {where}")
    md = claims_markdown(claims, blocks, problems + notes, paper)
    (out / "claims.md").write_text(md)
    claims[list(CLAIM_COLUMNS)].to_csv(out / "claims.csv", index=False, float_format="%.6g")
    return md

# ------------------------------------------------------------------ the command
# Every report file from the runs, and the command line.

def groups_line(runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The line above the report's table: how many groups, which keys separate them (and the
    other config keys that differ between them, each strategy's own), and what a group is.

    Args:
        runs: from :func:`load_runs`; summary: from :func:`summarise`.

    Returns:
        The line, e.g. ``"Groups G1-G2: the runs of one config but for the seed. Separated by:
        tasks.max_tasks (– = not set)."``.
    """
    split, others = separating_keys(runs)
    names = list(summary["group"])
    line = (f"Group {names[0]}: the runs of one config but for the seed." if len(names) == 1
            else f"Groups {names[0]}-{names[-1]}: each the runs of one config but for the seed.")
    shown = [k.removeprefix("cfg:") for k in split]
    if shown:
        line += f" Separated by: {', '.join(shown)}."
    if others:
        own = [k.removeprefix("cfg:") for k in others]
        if len(own) > 6:
            own = own[:6] + [f"{len(others) - 6} more"]
        line += f" Also differing between them (constant within a strategy): {', '.join(own)}."
    if any(summary[k].isna().any() for k in shown if k in summary):
        line += " –: the key is not set."
    return line


def write_report(dirs: list[str | Path], out: str | Path | None = None, fmt: str = "markdown",
                 paper: str | None = None) -> tuple[pd.DataFrame, str, list[str]]:
    """Load, summarise and write every report file (module docstring) into ``out``.

    Args:
        dirs: run or sweep directories; out: the output directory (None: ``<first dir>/report``);
        fmt: what to return as text (markdown, latex or csv); paper: a key of
        :data:`cl_bench.reference.PAPERS` (its published rows, and its claims if it states any).

    Returns:
        ``(summary, text, skipped)``: the numeric summary, the table rendered in ``fmt``
        (markdown, latex or csv; in markdown followed by ``claims.md`` when ``paper`` states
        claims) and the runs that could not be read.

    Raises:
        ClBenchError: unreadable dirs, no runs, an unknown ``paper`` or ``fmt``.
    """
    if fmt not in ("markdown", "latex", "csv"):
        raise ClBenchError(f"--format {fmt!r}: expected markdown, latex or csv")
    runs, skipped = load_runs(dirs)
    summary = summarise(runs)
    human = table(summary, paper)
    out = Path(out) if out else Path(dirs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    claims = (write_claims(runs, paper, out, [*map(Path, dirs), out])
              if paper and PAPERS[paper].get("claims") else "")
    keys = group_keys(runs)
    plot_heatmaps(runs, keys, out / "heatmaps.png")
    plot_curves(runs, keys, out / "curves.png")
    losses = plot_losses(runs, keys, out / "losses.png")
    if losses is None and (out / "losses.png").exists():
        (out / "losses.png").unlink()  # an older report's: not these runs'
    notes = [groups_line(runs, summary)]
    versus = baseline_lines(summary)
    if versus:
        notes.append("Against the mean predictor (always answering the training mean): "
                     + "; ".join(versus) + ".")
    notes.append("Figures: heatmaps.png, curves.png"
                 + (", losses.png" if losses is not None else
                    " (no losses.png: no run logged its loss; logger=csv does)") + ".")
    if paper:
        notes.append(f"{PAPERS[paper]['note']}. Source: {PAPERS[paper]['citation']}.")
    md = "\n\n".join([notes[0], markdown_table(human), *notes[1:]]) + "\n"
    fixed = [c for c in summary.columns if not c.endswith((" mean", " std")) and c != "n"]
    tex = latex_document(human, fixed, notes)
    (out / "report.md").write_text(md)
    (out / "report.tex").write_text(tex)
    summary.to_csv(out / "report.csv", index=False, float_format="%.6g")
    runs.drop(columns=list(PRIVATE)).to_csv(out / "runs.csv", index=False)
    text = {"markdown": md, "latex": tex,
            "csv": summary.to_csv(index=False, float_format="%.6g")}[fmt]
    if claims and fmt == "markdown":
        text += "\n" + claims
    return summary, text, skipped


def _study_reports(dirs: list[str], out: str | None) -> tuple[list[str], list[str]]:
    """The study report (:func:`cl_bench.search.study.write_study_report`) of every search
    among ``dirs``: the lines to print (one per file, then the best trial) and the errors (one
    line per search whose study could not be read; the other reports are still written)."""
    studies = [d for d in dirs if is_study_dir(d)]
    lines, errors = [], []
    for d in studies:
        where = (None if out is None else Path(out) / "study" if len(studies) == 1
                 else Path(out) / f"study_{Path(d).resolve().name}")
        try:
            study = load_study(d)
            written = write_study_report(d, where, study=study)
        except ClBenchError as e:
            errors.append(f"study {d}: {e}")
            continue
        for name, path in written.items():
            why = ""
            if name.endswith("_note"):
                why = " (" + path.read_text().strip().split(": ", 1)[-1] + ")"
            lines.append(f"clbench-report: wrote {path}{why}")
        lines.append(f"clbench-report: {study.study_name}: "
                     + (best_line(study) or "best: no complete trial yet"))
    return lines, errors


def main(argv: list[str] | None = None) -> None:
    """``clbench-report DIR [DIR ...] [--format F] [--out OUT] [--paper NAME]``: write the
    report (:func:`write_report`), print it and where it went.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        Nothing; exits with code 2 after one line per user error (unreadable directories, no
        runs, an unknown paper or format, a search whose study cannot be read).
    """
    p = argparse.ArgumentParser(prog="clbench-report", description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively)")
    p.add_argument("--format", default="markdown", choices=["markdown", "latex", "csv"])
    p.add_argument("--out", default=None, help="output directory (default: <first dir>/report; "
                   "a search's study report: <sweep dir>/study)")
    p.add_argument("--paper", default=None, help=f"add published numbers: {', '.join(PAPERS)}")
    args = p.parse_args(argv)
    study_lines, study_errors = _study_reports(args.dirs, args.out)
    try:
        _, text, skipped = write_report(args.dirs, args.out, args.format, args.paper)
    except ClBenchError as e:
        print("\n".join(study_lines), end="\n" if study_lines else "")
        for line in study_errors + [str(e)]:
            print(f"clbench-report: error: {line}", file=sys.stderr)
        sys.exit(2)
    print(text)
    for s in skipped:
        print(f"clbench-report: skipped: {s}", file=sys.stderr)
    out = args.out or str(Path(args.dirs[0]) / "report")
    print(f"clbench-report: wrote {out}")
    for line in study_lines:
        print(line)
    for line in study_errors:
        print(f"clbench-report: error: {line}", file=sys.stderr)
    if study_errors:
        sys.exit(2)


if __name__ == "__main__":
    main()
