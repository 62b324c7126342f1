"""Writing a run's result files atomically (tmp file + rename) after every row of R.

Files (docs/architecture.md §1): ``matrix.csv`` (rows ``init`` and ``after_<task>``, one column
per task, native units; ``pd.read_csv(path, index_col=0)`` gives the matrix), ``metrics.json``
(with ``baselines``: per task the score of a model that learned nothing, e.g.
``{"brain_age": {"mean_predictor": 16.3}, "mnist_0_1": {"chance": 0.5, "classes": 2}}``,
:func:`cl_bench.kinds.task_baselines`), ``heatmap.png`` (each value beside its baseline),
``params.json``, ``timing.json``; for a class-incremental segmentation stream also ``ciss.csv``
(after each step: ``miou_base`` = background + step-0 classes, ``miou_new`` = classes of later
steps, ``miou_all``; STAR's "old / new / all"). An interrupted run keeps every completed row:
the text files are rewritten after every row, the figures (matplotlib, the slow part) are drawn
at the end of the run or when it stops on an error (``clbench-report`` redraws from the files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cl_bench.data.base import Task
from cl_bench.files import atomic_write, write_json
from cl_bench.kinds import kind_spec, task_baselines
from cl_bench.metrics import cl_metrics
from cl_bench.summary import BASELINE_NAMES, fmt_value, versus_baseline


def matrix_frame(rows: dict[str, list[float]], stream: list[Task]) -> pd.DataFrame:
    """R as a DataFrame: index ``init``, ``after_<task>``…; columns task names."""
    df = pd.DataFrame.from_dict(rows, orient="index", columns=[t.name for t in stream])
    df.index.name = "row"
    return df


def write_results(run_dir: Path, stream: list[Task], rows: dict[str, list[float]],
                  details: dict[str, dict[str, dict[str, float]]], extra: dict[str, Any],
                  figures: bool = True, val_rows: dict[str, list[float]] | None = None,
                  val_details: dict | None = None) -> dict:
    """Write matrix.csv, metrics.json (and heatmap.png) for the rows computed so far.

    Args:
        run_dir: the run's output directory.
        stream: the tasks (columns).
        rows: ``{"init": [T values], "after_<task>": [T values], ...}`` in training order.
        details: per row, per task, every measured value (e.g. per-label Dice).
        extra: merged into metrics.json (strategy name, seed, ...).
        figures: also draw heatmap.png (matplotlib, ~0.1 s; the runner draws it once at the end
            of a run, or when it stops on an error, and after every row only for a logger that
            uploads images).
        val_rows, val_details: the same on the validation sets (``tasks.n_val``), or ``None``:
            written to ``matrix_val.csv`` and as metrics.json's ``val`` block (the stream metrics
            of the validation R and its details).

    Returns:
        The metrics dict written to metrics.json. Its ``baselines`` (and ``val.baselines``):
        ``{task: {"mean_predictor": MAE of always answering the training mean}}`` for a
        regression task, ``{task: {"chance": 1/k, "classes": k}}`` for a classification task
        (:func:`cl_bench.kinds.task_baselines`), in the metric's units; no entry for Dice or mIoU.
    """
    run_dir = Path(run_dir)
    df = matrix_frame(rows, stream)
    atomic_write(run_dir / "matrix.csv", lambda tmp: df.to_csv(tmp, float_format="%.6g"))
    metrics = _stream_metrics(df, stream)
    if val_rows is not None:
        val = matrix_frame(val_rows, stream)
        atomic_write(run_dir / "matrix_val.csv",
                     lambda tmp: val.to_csv(tmp, float_format="%.6g"))
        metrics["val"] = {**_stream_metrics(val, stream), "details": val_details or {},
                          "baselines": task_baselines(stream, val_details or {})}
    metrics["units"] = {t.name: {"metric": t.metric, "units": t.units,
                                 "higher_is_better": t.higher_is_better} for t in stream}
    baselines = metrics["baselines"] = task_baselines(stream, details)
    metrics["details"] = details
    ciss = ciss_summary(stream, details)
    if ciss is not None:
        atomic_write(run_dir / "ciss.csv", lambda tmp: ciss.to_csv(tmp, float_format="%.6g"))
        metrics["ciss"] = {"per_step": ciss.to_dict(orient="index"),
                           "last": ciss.iloc[-1].to_dict() if len(ciss) else {}}
    metrics.update(extra)
    write_json(run_dir / "metrics.json", metrics)
    if figures:
        title = f"{extra.get('strategy')} on {extra.get('tasks')} (seed {extra.get('seed')})"
        atomic_write(run_dir / "heatmap.png",
                     lambda tmp: plot_heatmap(df, stream, tmp, title, baselines))
    return metrics


def recorded_timing(run_dir: Path) -> dict:
    """``run_dir/timing.json`` as recorded so far (seconds; see :func:`cl_bench.runner.run`).

    Returns:
        Its content; ``{}`` when it is missing, unreadable or not a JSON object.
    """
    import json

    try:
        found = json.loads((Path(run_dir) / "timing.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_probes(run_dir: Path, probes: dict) -> None:
    """Write ``probes.json`` (:mod:`cl_bench.probes`: ``movement`` and ``reliance`` per row of
    R) and its two tables: ``probes_movement.csv`` (row, stage, rel_change[, adapter_rel]) and
    ``probes_reliance.csv`` (row, input, Dice; input ``none`` = nothing replaced)."""
    run_dir = Path(run_dir)
    write_json(run_dir / "probes.json", probes)
    move = pd.DataFrame([{"row": row, "stage": stage, **v}
                         for row, stages in probes.get("movement", {}).items()
                         for stage, v in stages.items()])
    atomic_write(run_dir / "probes_movement.csv",
                 lambda tmp: move.to_csv(tmp, index=False, float_format="%.6g"))
    rel = probes.get("reliance", {})
    if rel:
        df = pd.DataFrame([{"row": row, "task": r["task"], "split": r["split"], "input": k,
                            "dice": d} for row, r in rel.items() for k, d in r["dice"].items()])
        atomic_write(run_dir / "probes_reliance.csv",
                     lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))


def _stream_metrics(df: pd.DataFrame, stream: list[Task]) -> dict:
    """:func:`~cl_bench.metrics.cl_metrics` of the R rows in ``df`` (``init`` is the
    untrained row); a partial-run dict before any task finished, an ``error`` entry where the
    metrics cannot be computed (a NaN Dice: no labelled voxel at all), the matrix kept."""
    trained = df.drop(index="init", errors="ignore")
    init = df.loc["init"].to_numpy(float) if "init" in df.index else None
    metrics = {"complete": False, "tasks_completed": 0, "num_tasks": len(stream)}
    if len(trained):
        try:
            metrics = cl_metrics(trained.to_numpy(float), init,
                                 higher_is_better=[t.higher_is_better for t in stream],
                                 task_names=[t.name for t in stream],
                                 metric_names=[t.metric for t in stream])
        except ValueError as e:
            metrics["error"] = f"metrics not computed: {e}"
    return metrics


def ciss_summary(stream: list[Task], details: dict) -> pd.DataFrame | None:
    """Per trained step of a CISS stream: ``miou_base``, ``miou_new``, ``miou_all`` (0..1).

    Rows ``after_<step>``, read from step i's own evaluation after step i (the classes seen so
    far). ``None`` if the stream has no class-incremental segmentation step (no step of a kind
    whose scorer reads the active classes: :attr:`cl_bench.kinds.KindSpec.active_classes`)."""
    if not any(kind_spec(t.kind).active_classes for t in stream):
        return None
    rows = {}
    for t in stream:
        d = details.get(f"after_{t.name}", {}).get(t.name)
        if d is not None:
            rows[f"after_{t.name}"] = {k: d.get(k, float("nan"))
                                       for k in ("miou_base", "miou_new", "miou_all")}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["miou_base", "miou_new", "miou_all"])


def write_task_agnostic(out_dir: Path, stream: list[Task], rows: dict[str, list[float]],
                        retrieval: dict[str, list[float]], mode: str, extra: dict[str, Any],
                        figures: bool = True) -> dict:
    """Write a task-agnostic strategy's second R matrix and its retrieval-accuracy matrix.

    Files in ``out_dir``: ``matrix_<mode>.csv`` (R measured with the other task-id mode than
    ``matrix.csv``), ``retrieval.csv`` (share of task j's test samples the strategy routed to task
    j, after each task; rows as in R) and ``retrieval.png``.

    Returns:
        The summary merged into metrics.json under ``task_agnostic``: the other mode's CL metrics,
        the last retrieval row and its mean over the tasks trained so far.
    """
    out_dir = Path(out_dir)
    df = matrix_frame(rows, stream)
    atomic_write(out_dir / f"matrix_{mode}.csv", lambda tmp: df.to_csv(tmp, float_format="%.6g"))
    ret = matrix_frame(retrieval, stream)
    atomic_write(out_dir / "retrieval.csv", lambda tmp: ret.to_csv(tmp, float_format="%.6g"))
    trained = df.drop(index="init", errors="ignore")
    summary: dict[str, Any] = {"other_mode": mode}
    if len(trained):
        try:
            summary[f"metrics_{mode}"] = cl_metrics(
                trained.to_numpy(float), df.loc["init"].to_numpy(float) if "init" in df.index else None,
                higher_is_better=[t.higher_is_better for t in stream],
                task_names=[t.name for t in stream], metric_names=[t.metric for t in stream])
        except ValueError as e:
            summary["error"] = f"metrics not computed: {e}"
        last = ret.drop(index="init", errors="ignore").iloc[-1]
        summary["retrieval_last_row"] = {k: float(v) for k, v in last.items()}
        summary["retrieval_mean_seen"] = float(last.iloc[:len(trained)].mean())
    if figures:
        title = f"task retrieval accuracy: {extra.get('strategy')} (seed {extra.get('seed')})"
        shown = [Task(t.name, "classification", [], []) for t in stream]  # one 0..1 panel
        atomic_write(out_dir / "retrieval.png", lambda tmp: plot_heatmap(ret, shown, tmp, title))
    return summary


def plot_heatmap(df: pd.DataFrame, stream: list[Task], path: str,
                 title: str | None = None, baselines: dict | None = None) -> None:
    """Annotated heatmap of R, one panel and colour scale per metric (Dice, MAE, ...).

    Colours run from worse to better in every panel (reversed for lower-is-better metrics).
    With ``baselines`` (metrics.json's, :func:`cl_bench.kinds.task_baselines`) each panel's
    title names its tasks' baseline (``predicting the mean: 16.3``, ``chance: 0.500``), the
    colour bar marks it, a cell no better than it says so under its value (``worse than the
    mean``, ``no better than chance``), and a mean-predictor panel's colour scale runs from 0
    to the baseline: an error as large as always guessing the mean gets the worst colour,
    however it compares with the other cells.

    Args:
        df: R (rows × tasks, native units); stream: the tasks (the columns' kinds, metrics and
            units); path: where the PNG goes; title: the figure's title; baselines:
            ``{task: {"mean_predictor": v} | {"chance": v, "classes": k}}`` (None: none shown).
    """
    baselines = baselines or {}
    groups: dict[str, list[int]] = {}
    for j, t in enumerate(stream):
        groups.setdefault(t.metric, []).append(j)
    widths = [2.2 + 1.1 * len(cols) for cols in groups.values()]
    fig, axes = plt.subplots(1, len(groups), squeeze=False, width_ratios=widths,
                             figsize=(1.4 + sum(widths), 1.6 + 0.5 * len(df)))
    for k, (ax, (metric, cols)) in enumerate(zip(axes[0], groups.items())):
        sub = df.iloc[:, cols].to_numpy(float)
        task0 = stream[cols[0]]
        cmap = "viridis" if task0.higher_is_better else "viridis_r"
        finite = sub[np.isfinite(sub)]
        vmin, vmax = (finite.min(), finite.max()) if finite.size else (0, 1)
        if metric in ("dice", "accuracy"):
            vmin, vmax = 0.0, 1.0
        found = {key: [baselines[stream[c].name][key] for c in cols
                       if baselines.get(stream[c].name, {}).get(key) is not None]
                 for key in BASELINE_NAMES}
        if found["mean_predictor"] and not task0.higher_is_better:
            vmin, vmax = 0.0, max(found["mean_predictor"])  # 0 = perfect, the mean = worst
        im = ax.imshow(sub, cmap=cmap, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1,
                       aspect="auto")
        for (i, j), v in np.ndenumerate(sub):
            txt = "–" if not np.isfinite(v) else fmt_value(v)
            versus = versus_baseline(v, baselines.get(stream[cols[j]].name),
                                     task0.higher_is_better) if np.isfinite(v) else None
            if versus and not versus.startswith("better"):
                txt += "\n" + versus.replace("predicting the mean", "the mean")
            frac = 0.5 if vmax == vmin or not np.isfinite(v) else (v - vmin) / (vmax - vmin)
            dark = frac < 0.5 if task0.higher_is_better else frac > 0.5
            ax.text(j, i, txt, ha="center", va="center", fontsize=9 if "\n" not in txt else 7,
                    color="white" if dark else "black")
        ax.set_xticks(range(len(cols)), [stream[c].name for c in cols], rotation=20)
        ax.set_yticks(range(len(df)), list(df.index) if k == 0 else [])
        unit = f" ({task0.units})" if task0.units else ""
        arrow = "↑" if task0.higher_is_better else "↓"
        heading = f"{metric}{unit} {arrow}"
        bar = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.03)
        for key, values in found.items():
            if values:
                shown = sorted({fmt_value(b) for b in values})
                heading += f"\n{BASELINE_NAMES[key]}: {', '.join(shown)}"
                for b in set(values):
                    bar.ax.axhline(b, color="red", linewidth=1.5)
        ax.set_title(heading, fontsize=10)
        ax.set_xlabel("evaluated task")
    axes[0][0].set_ylabel("after training")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
