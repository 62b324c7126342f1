"""``clbench-report``: turn run directories into a paper table (mean ± std over seeds) and figures.

    clbench-report results/brain_mri_fm/brain_seg_age/2026-11-24_15-00-00 --paper brain_mri_fm
    clbench-report results/multirun/* --format latex --out paper/

Every directory holding a ``metrics.json`` under the given paths is one run. Runs are grouped by
the sweep's varying keys — always ``tasks``, ``strategy``, ``backbone``, plus every config key
whose value differs between runs (paths, ``seed``, ``results_dir``, ``resume``, ``hydra.*`` and
run-local keys excluded) — and averaged over seeds. A group with unfinished runs is shown with
status ``partial``: its ``runs`` column says how many, its metrics average the runs' completed
tasks (as in ``metrics.json``'s partial convention), never silently dropping them.

Writes into ``--out`` (default ``<first dir>/report``): ``report.md``, ``report.tex``,
``report.csv`` (numeric ``<quantity> mean`` / ``<quantity> std`` columns), ``runs.csv`` (one row
per run), ``heatmaps.png`` (the seed-mean R of each group) and ``curves.png`` (each task's metric
after every training step, mean ± std band per group). With ``--paper`` naming a paper that
states claims (:mod:`cl_bench.reference`), also ``claims.csv``: each claim and each of its tests
judged on our runs, per seed, with its margin (see :func:`claims_table`), and ``claims.md``: one
block per setting, conf/'s default first, one short row per claim (:func:`claims_markdown`),
printed after the table with ``--format markdown`` (the default).

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
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from cl_bench.config import RUN_LOCAL_KEYS
from cl_bench.errors import ClBenchError
from cl_bench.reference import PAPERS
from cl_bench.search.study import best_line, is_study_dir, load_study, write_study_report
from cl_bench.summary import decimals, fmt_value

#: config keys never used for grouping (they do not define an experiment): the run-local keys
#: (``logger`` as its ``logger.*`` leaves, below), the seed and the run's directory
IGNORED = RUN_LOCAL_KEYS + ("seed", "run_dir")
#: per metric group, the stream-level quantities reported (metrics.json "groups")
GROUP_KEYS = ("final_average", "mft", "maa", "bwt_gem", "bwt_sefe", "forgetting_max")
ARROW = {True: "↑", False: "↓"}
#: per-run columns holding objects (R, units, raw metrics.json / params.json), never reported
PRIVATE = ("_units", "_matrix", "_metrics", "_params")
#: a claim test's comparison op -> (holds(value, threshold), margin(value, threshold), symbol);
#: the margin is positive on the holding side, -|value - threshold| for "==" (0 when it holds)
OPS = {"<=": (operator.le, lambda v, t: t - v, "≤"),
       ">=": (operator.ge, lambda v, t: v - t, "≥"),
       "<": (operator.lt, lambda v, t: t - v, "<"),
       ">": (operator.gt, lambda v, t: v - t, ">"),
       "==": (operator.eq, lambda v, t: -abs(v - t), "=")}


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _ignored(key: str) -> bool:
    return (key in IGNORED or key.startswith(("hydra.", "logger.")) or key.endswith(
        ("_dir", "dir", "path", "root", "table", "weights", "_target_")))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


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
    for task, u in units.items():
        col = _task_col(task, u)
        rec[col] = m.get("per_task", {}).get(task, {}).get("final", np.nan)
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
            if key in ("final_average", "mft") and len(g.get("tasks", [])) < 2:
                continue  # one task: the same as its final / just-learned column
            rec[f"{key} {metric}"] = g.get(key, np.nan) if g.get(key) is not None else np.nan
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
    return rec


def _task_col(task: str, u: dict) -> str:
    unit = f" ({u['units']})" if u.get("units") else ""
    return f"{task} {u['metric']}{unit} {ARROW[bool(u['higher_is_better'])]}"


def load_runs(dirs: list[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """Read every run (a directory with ``metrics.json``) under ``dirs``.

    Returns:
        ``(runs, skipped)``: one row per run (group keys, ``seed``, ``complete``, one column per
        task's final metric in native units, per-metric-group BWT/forgetting/MFN/MFT/MAA,
        ``trainable %``, ``wall time (s)``, ``peak RSS (MB)`` (and ``peak GPU (MB)`` for runs on a
        GPU; ``retrieval accuracy``, the mean over seen tasks of the share of test samples whose
        task is retrieved, and ``retrieval ms / sample``, its wall time per sample, for a
        task-agnostic strategy); the R matrix in the ``_matrix`` column, ``metrics.json`` /
        ``params.json`` as dicts in ``_metrics`` / ``_params``) and
        ``"<file>: <reason>"`` for each run that could not be read.

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
    return pd.DataFrame.from_records(records), skipped


def group_keys(runs: pd.DataFrame) -> list[str]:
    """``tasks``, ``strategy``, ``backbone`` + config keys that vary between runs of the
    same strategy (so a strategy's own hyper-parameters do not split it by themselves)."""
    keys = ["tasks", "strategy", "backbone"]
    cfg_cols = [c for c in runs.columns if c.startswith("cfg:") and not _ignored(c[4:])]
    for col in cfg_cols:
        values = runs[col].astype(str)
        if values.nunique() > 1 and (runs.assign(_v=values).groupby("strategy")["_v"]
                                     .nunique() > 1).any():
            keys.append(col)
    return keys


def _quantities(runs: pd.DataFrame) -> list[str]:
    skip = {"run", "seed", "complete", "tasks_completed", "num_tasks", "tasks", "strategy",
            "backbone", "eval_split", *PRIVATE}
    cols = [c for c in runs.columns if c not in skip and not c.startswith("cfg:")]
    return [c for c in cols if "(just learned)" not in c] + [c for c in cols if
                                                             "(just learned)" in c]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per group (std with ddof=1; NaN for a single run).

    Returns:
        One row per group: the group keys, ``runs`` (``"3"`` or ``"3 (1 partial)"``),
        ``status`` (``complete`` / ``partial``), ``n`` and ``<quantity> mean`` /
        ``<quantity> std`` for every quantity of :func:`load_runs`.
    """
    keys = group_keys(runs)
    rows = []
    for values, g in runs.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        partial = int((~g["complete"]).sum())
        row["runs"] = f"{len(g)}" + (f" ({partial} partial)" if partial else "")
        row["status"] = "partial" if partial else "complete"
        if "eval_split" in g and (g["eval_split"] == "val").all():  # search trials (cl_bench.search)
            row["status"] += " (validation R)"
        row["n"] = len(g)
        for q in _quantities(runs):
            x = pd.to_numeric(g[q], errors="coerce").dropna()
            row[f"{q} mean"] = x.mean() if len(x) else np.nan
            row[f"{q} std"] = x.std(ddof=1) if len(x) > 1 else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.rename(columns={k: k[4:] for k in keys if k.startswith("cfg:")})


def _fmt(mean, std) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    digits = decimals(mean)
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(summary: pd.DataFrame, paper: str | None = None) -> pd.DataFrame:
    """The human table: ``mean ± std`` strings (``–`` where not measured), plus the paper's rows.

    Raises:
        ClBenchError: an unknown ``paper`` (lists the known ones).
    """
    quantities = [c[:-5] for c in summary.columns if c.endswith(" mean")]
    quantities = [q for q in quantities if summary[f"{q} mean"].notna().any()]
    fixed = [c for c in summary.columns if not c.endswith((" mean", " std")) and c != "n"]
    rows = []
    for _, r in summary.iterrows():
        row = {c: r[c] for c in fixed}
        row.update({q: _fmt(r[f"{q} mean"], r[f"{q} std"]) for q in quantities})
        rows.append(row)
    if paper is not None:
        if paper not in PAPERS:
            raise ClBenchError(f"--paper {paper!r}: unknown; known: {', '.join(sorted(PAPERS))}")
        for strategy, ref in PAPERS[paper]["rows"].items():
            row = {c: "" for c in fixed}
            row.update(strategy=ref["label"], status="published", runs="")
            for q in quantities:
                base = q.replace(" (years)", "").replace(" ↑", "").replace(" ↓", "")
                v = ref.get(base, ref.get(q))
                row[q] = ("–" if v is None else _fmt(*v) if isinstance(v, tuple)
                          else v if isinstance(v, str) else _fmt(float(v), None))
            rows.append(row)
    return pd.DataFrame(rows)


def plot_heatmaps(runs: pd.DataFrame, keys: list[str], path: Path) -> None:
    """A grid of seed-mean R matrices, one panel per group; each column coloured on its own
    scale from worse (dark) to better (bright), values annotated in native units."""
    groups = list(runs.groupby(keys, sort=False, dropna=False))
    ncol = min(3, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(4.6 * ncol, 3.4 * nrow))
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax, (values, g) in zip(axes.flat, groups):
        mats = [m for m in g["_matrix"]]
        index = max((m.index for m in mats), key=len)
        mean = pd.concat([m.reindex(index) for m in mats]).groupby(level=0).mean().reindex(index)
        units = g["_units"].iloc[0]
        shade = np.zeros(mean.shape)
        for j, task in enumerate(mean.columns):
            col = mean[task].to_numpy(float)
            lo, hi = np.nanmin(col), np.nanmax(col)
            frac = (col - lo) / (hi - lo) if hi > lo else np.full_like(col, 0.5)
            shade[:, j] = frac if units.get(task, {}).get("higher_is_better", True) else 1 - frac
        ax.imshow(shade, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(mean.to_numpy(float)):
            ax.text(j, i, "–" if np.isnan(v) else fmt_value(v),
                    ha="center", va="center", fontsize=8,
                    color="white" if shade[i, j] < 0.5 else "black")
        labels = [f"{t}\n{units.get(t, {}).get('metric', '')} "
                  f"{ARROW[units.get(t, {}).get('higher_is_better', True)]}" for t in mean.columns]
        ax.set_xticks(range(mean.shape[1]), labels, fontsize=8)
        ax.set_yticks(range(len(mean)), list(mean.index), fontsize=8)
        name = " / ".join(str(v) for v in (values if isinstance(values, tuple) else (values,)))
        ax.set_title(f"{name} (n={len(g)})", fontsize=9)
    fig.suptitle("R matrices, mean over seeds (colour per column: dark = worse)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(runs: pd.DataFrame, keys: list[str], path: Path) -> None:
    """One panel per task j: R[i][j] after each training step i (mean ± std band per group);
    runs of different streams in one report each draw on their own tasks' panels."""
    tasks = list(dict.fromkeys(t for m in runs["_matrix"] for t in m.columns))
    units = {k: v for u in runs["_units"] for k, v in u.items()}
    fig, axes = plt.subplots(1, len(tasks), squeeze=False, figsize=(5 * len(tasks), 3.6))
    for ax, task in zip(axes[0], tasks):
        for values, g in runs.groupby(keys, sort=False, dropna=False):
            have = [m[task].rename(i) for i, m in enumerate(g["_matrix"]) if task in m.columns]
            if not have:
                continue
            series = pd.concat(have, axis=1)
            task_rows = list(max((m.index for m in g["_matrix"] if task in m.columns), key=len))
            series = series.reindex(task_rows)
            mean, std = series.mean(axis=1), series.std(axis=1, ddof=1).fillna(0)
            x = np.arange(len(mean))
            label = " / ".join(str(v) for v in (values if isinstance(values, tuple)
                                                else (values,))[1:2])
            ax.plot(x, mean, marker="o", label=label)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
            ax.set_xticks(range(len(task_rows)), task_rows, rotation=15, fontsize=8)
        u = units.get(task, {})
        unit = f" ({u['units']})" if u.get("units") else ""
        ax.set_ylabel(f"{u.get('metric', '')}{unit} {ARROW[u.get('higher_is_better', True)]}")
        ax.set_title(task)
        ax.set_xlabel("after training")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    return f"{v:.2g}" if v and abs(v) < 5e-4 else _fmt(v, None)


def _mean_std(x: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; NaN for fewer than two values; both NaN for none)."""
    return (float(np.mean(x)) if x else math.nan,
            float(np.std(x, ddof=1)) if len(x) > 1 else math.nan)


def _pm(mean: float, std: float) -> str:
    """``mean ± std`` as :func:`_fmt`, in ``.2g`` for a tiny non-zero mean (:func:`_show`)."""
    if not (mean and abs(mean) < 5e-4):
        return _fmt(mean, std)
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
    groups = runs.groupby(keys, sort=False, dropna=False) if keys else [((), runs)]
    out = []
    for values, g in groups:
        if any(tasks <= set(m.columns) for m in g["_matrix"]):
            values = values if isinstance(values, tuple) else (values,)
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


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Config keys -> their names without the group (``backbone.decoder`` -> ``decoder``)
    where no other key of ``keys`` has that name."""
    tails = [k.split(".", 1)[-1] for k in keys]
    return {k: t if tails.count(t) == 1 else k for k, t in zip(keys, tails)}


def _headings(settings: list, exact: bool, default: dict) -> tuple[list[str], str]:
    """Each setting's heading: ``stream · backbone`` and the keys whose value differs between
    ``settings`` (short names, :func:`_short_keys`): all of them for the first, marked
    ``(default)`` if it is, for the others those where they differ from the first; and, for a
    first that is not the default, a line saying so with the default's values."""
    values = [v for _, v, _ in settings]
    keys = [k for k in values[0] if k not in ("tasks", "backbone")
            and len({str(v.get(k)) for v in values}) > 1]
    short = _short_keys(keys)
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
    ``k/n``, or ``not measured (why)`` where some tests are measured."""
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
    judged_cell = ("–" if not counted else f"not measured ({why})" if verdict == "not measured"
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
    :func:`_judge_claims`): its heading, a table of one short row per claim (:data:`CLAIM_MD`)
    and its notes but those on what was not measured (the row says why; ``claims.csv`` has
    them whole); a ``why_not`` stated in full once."""
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
        shown = []
        for n in block["notes"]:
            if re.match(r"\([\w.]+\) not measured", n):
                continue
            if re.match(r"\(\w+\) why not: ", n) and n in seen:
                n = n.split(":", 1)[0] + ": as in the first block that fails it"
            seen.add(n)
            shown.append(n)
        md += (f"\n### {block['heading']}\n\n"
               + (textwrap.fill(block["lead"], 100) + "\n\n" if block["lead"] else "")
               + rows[list(CLAIM_MD)].rename(columns=CLAIM_MD).fillna("–").to_markdown(
                   index=False) + "\n\n" + _bullets(shown))
    return md


def write_claims(runs: pd.DataFrame, paper: str, out: Path, dirs: list[Path],
                 default: dict | None = None) -> str:
    """Write ``claims.md`` (:func:`claims_markdown`) and ``claims.csv`` (:func:`claims_table`,
    :data:`CLAIM_COLUMNS`) into ``out``, with the mean predictor of ``data_checks.json`` from
    ``dirs`` (the report's inputs and ``out``) where the runs lack it; ``default`` as in
    :func:`claims_table`.

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


def write_report(dirs: list[str | Path], out: str | Path | None = None, fmt: str = "markdown",
                 paper: str | None = None) -> tuple[pd.DataFrame, str, list[str]]:
    """Load, summarise and write every report file (module docstring) into ``out``.

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
    note = f"\n\n{PAPERS[paper]['note']}. Source: {PAPERS[paper]['citation']}.\n" if paper else "\n"
    md = human.to_markdown(index=False) + note
    (out / "report.md").write_text(md)
    (out / "report.tex").write_text(human.to_latex(index=False, escape=True))
    summary.to_csv(out / "report.csv", index=False, float_format="%.6g")
    runs.drop(columns=list(PRIVATE)).to_csv(out / "runs.csv", index=False)
    keys = group_keys(runs)
    plot_heatmaps(runs, keys, out / "heatmaps.png")
    plot_curves(runs, keys, out / "curves.png")
    text = {"markdown": md, "latex": human.to_latex(index=False, escape=True),
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
    """``clbench-report DIR [DIR ...] [--format F] [--out OUT] [--paper NAME]``; user errors
    print one line and exit with code 2."""
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
