"""Reading run directories: every directory holding a ``metrics.json`` is one run, read with its
config (``.hydra/config.yaml``), ``params.json``, ``timing.json``, R (``matrix.csv``) and training
losses (the CSV logger's) into one flat record; :func:`load_runs` gives one row per run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from cl_bench.errors import ClBenchError
from cl_bench.summary import BASELINE_NAMES


#: per metric group, the stream-level quantities reported (metrics.json "groups")
GROUP_KEYS = ("final_average", "mft", "maa", "bwt_gem", "bwt_sefe", "forgetting_max")
ARROW = {True: "↑", False: "↓"}
#: per-run columns holding objects (R, units, raw metrics.json / params.json, the run's
#: directory, its loss curves), never reported
PRIVATE = ("_units", "_matrix", "_metrics", "_params", "_dir", "_losses", "_baselines")
#: the fixed columns of a run record that are not quantities
RUN_FIELDS = ("run", "seed", "complete", "tasks_completed", "num_tasks", "tasks", "strategy",
              "backbone", "eval_split")
#: how a baseline (metrics.json ``baselines``) is named in the report's columns and lines
MEAN_PREDICTOR = BASELINE_NAMES["mean_predictor"]  # "predicting the mean", as the summary


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


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
