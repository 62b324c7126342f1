"""The end-of-run summary printed to the terminal and to ``cli.log``: what the run exists for.

:func:`run_summary` reads a run directory's result files (``matrix.csv``, ``metrics.json``,
``params.json``, ``timing.json``), so it works the same for a finished run, a failed or interrupted
one (the rows it has) and a run read back later. It shows R with each metric's direction and
units, per metric group MFN (final average), MFT, MAA, BWT in both conventions (GEM, arXiv
1706.08840; SEFE, arXiv 2505.02486), forgetting (Chaudhry et al., arXiv 1801.10112) and FWT, the
trainable share of the model per task, the wall time and the paths of the files.
:func:`job_line` is the one-line form a multirun prints per job.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("cl_bench.summary")

#: how a task's metric is written for a reader (the field's spelling)
METRIC_NAMES = {"dice": "Dice", "mae": "MAE", "accuracy": "accuracy", "miou": "mIoU",
                "miou_all": "mIoU"}


def metric_label(metric: str) -> str:
    """``"dice"`` -> ``"Dice"``; unknown names are returned unchanged."""
    return METRIC_NAMES.get(metric, metric)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def decimals(v: float) -> int:
    """Decimals every table, heatmap and terminal line gives a metric value: 3 below 10
    (Dice 0.612), 1 above (MAE 16.0)."""
    return 3 if abs(v) < 10 else 1


def fmt_value(v) -> str:
    """A metric value as the terminal shows it (:func:`decimals`); ``–`` for None."""
    if v is None:
        return "–"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if v != v:
        return "nan"
    return f"{v:.{decimals(v)}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def _header(task: str, units: dict) -> str:
    """Two header lines: the task, then its metric, units and direction."""
    u = units.get(task, {})
    unit = f" ({u['units']})" if u.get("units") else ""
    arrow = "↑" if u.get("higher_is_better", True) else "↓"
    return f"{task}\n{metric_label(u.get('metric', ''))}{unit} {arrow}"


def run_summary(run_dir: str | Path) -> str:
    """The multi-line summary of the run in ``run_dir`` (see the module docstring).

    Returns:
        The text; a short line saying no row was written if ``matrix.csv`` is missing.
    """
    import pandas as pd
    from tabulate import tabulate

    run_dir = Path(run_dir)
    matrix = run_dir / "matrix.csv"
    if not matrix.is_file():
        return f"no row of R was written; nothing to summarise in {run_dir}"
    R = pd.read_csv(matrix, index_col=0)
    m = _read_json(run_dir / "metrics.json")
    params = _read_json(run_dir / "params.json").get("tasks", {})
    timing = _read_json(run_dir / "timing.json")
    units = m.get("units", {})
    done, total = m.get("tasks_completed", len(R) - 1), m.get("num_tasks", R.shape[1])
    state = "complete" if m.get("complete") else f"INCOMPLETE: {done}/{total} tasks"
    lines = [f"{m.get('strategy', '?')} on {m.get('tasks', '?')} (backbone "
             f"{m.get('backbone', '?')}, seed {m.get('seed', '?')}"
             + (f", {m['precision']}" if m.get("precision") else "")
             + f"): {state}, wall time {_duration(timing.get('total_s'))}"]
    body = [[row, *map(fmt_value, values)] for row, values in zip(R.index, R.to_numpy())]
    lines += ["", tabulate(body, headers=["R: after \\ on", *(_header(c, units) for c in R.columns)],
                           colalign=("left",) + ("right",) * R.shape[1], disable_numparse=True), ""]
    groups = m.get("groups") or {}
    if groups:
        cols = [("MFN", "final_average"), ("MFT", "mft"), ("MAA", "maa"), ("BWT gem", "bwt_gem"),
                ("BWT sefe", "bwt_sefe"), ("forgetting", "forgetting_max"), ("FWT", "fwt")]
        table = {}
        for name, g in groups.items():
            any_task = (g.get("tasks") or [None])[0]
            u = units.get(any_task, {})
            unit = f" ({u['units']})" if u.get("units") else ""
            arrow = "↑" if g.get("higher_is_better", True) else "↓"
            table[f"{metric_label(name)}{unit} {arrow}"] = {c: fmt_value(g.get(k)) for c, k in cols}
        body = [[name, *row.values()] for name, row in table.items()]
        lines += [tabulate(body, headers=["metric group", *(c for c, _ in cols)],
                           colalign=("left",) + ("right",) * len(cols), disable_numparse=True),
                  "(BWT, FWT > 0 = better, forgetting > 0 = worse, whatever the metric's direction)",
                  ""]
    elif m.get("error"):
        lines += [m["error"], ""]
    if params:
        lines.append("trainable: " + ", ".join(
            f"{task} {p['trainable_pct']:.2f} % ({p['trainable']:,} params"
            + (f": adapters {p['adapter']:,} = {p['adapter_pct_of_backbone']:.2f} % of the "
               f"backbone, head {p.get('head', 0):,}" if p.get("adapter") else "") + ")"
            for task, p in params.items()))
    files = ["heatmap.png", "matrix.csv"] + [f for f in ("matrix_val.csv", "probes.json")
                                             if (Path(run_dir) / f).is_file()] + ["metrics.json"]
    lines.append(f"files: {run_dir}/{{{', '.join(files)}}}")
    return "\n".join(lines)


def job_line(run_dir: str | Path) -> str:
    """``lora seed 0: tumour_seg Dice 0.612, brain_age MAE 16.0 years -> <run_dir>``: the last
    row of R of the run in ``run_dir`` (one line per multirun job)."""
    import pandas as pd

    run_dir = Path(run_dir)
    m = _read_json(run_dir / "metrics.json")
    try:
        R = pd.read_csv(run_dir / "matrix.csv", index_col=0)
    except (OSError, ValueError):
        return f"{m.get('strategy', '?')} seed {m.get('seed', '?')}: no row written -> {run_dir}"
    units = m.get("units", {})
    last = R.iloc[-1]
    parts = []
    for task, v in last.items():
        u = units.get(task, {})
        unit = f" {u['units']}" if u.get("units") else ""
        parts.append(f"{task} {metric_label(u.get('metric', ''))} {fmt_value(v)}{unit}")
    state = "" if m.get("complete") else f" [{R.index[-1]}, incomplete]"
    split = " (validation)" if m.get("eval_split") == "val" else ""
    return (f"{m.get('strategy', '?')} seed {m.get('seed', '?')}{split}: " + ", ".join(parts)
            + f"{state} -> {run_dir}")


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks.sweep_summary``): at the end of a multirun, one line per
    job (:func:`job_line`) and the ``clbench-report`` command that aggregates the sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        runs = sorted({p.parent for p in sweep.rglob("matrix.csv")
                       if "task_agnostic" not in p.parent.parts})
        lines = [f"sweep {sweep}: {len(runs)} run(s) wrote results"]
        lines += [f"  {job_line(run_dir)}" for run_dir in runs]
        lines.append(f"aggregate (mean ± std over seeds): clbench-report {sweep}")
        print("\n".join(lines), flush=True)  # the launcher's process: Hydra's logging is not ours
