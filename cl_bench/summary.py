"""The end-of-run summary printed to the terminal and to ``cli.log``: what the run exists for.

:func:`run_summary` reads a run directory's result files (``matrix.csv``, ``metrics.json``,
``params.json``, ``timing.json``), so it works the same for a finished run, a failed or interrupted
one (the rows it has) and a run read back later. It shows R with each metric's direction and
units, per metric group MFN (final average), MFT, MAA, BWT in both conventions (GEM, arXiv
1706.08840; SEFE, arXiv 2505.02486), forgetting (Chaudhry et al., arXiv 1801.10112) and FWT, the
trainable share of the model per task, the wall time and where it went (:func:`time_budget`) and
the paths of the files.
:func:`job_line` is the one-line form a multirun prints per job.
"""

from __future__ import annotations

import json
import logging
import shutil
import textwrap
from decimal import ROUND_HALF_UP, Decimal
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


#: significant digits of a value in the result files (``matrix.csv``: ``%.6g``): the first step
#: of :func:`fmt_value`'s rule, so a value reads the same from memory, a file or a float32
SIGNIFICANT = 6


def decimals(v: float) -> int:
    """Decimals every table, heatmap and terminal line gives a metric value: 3 below 10
    (Dice 0.612), 1 from 10 on (MAE 16.0).

    Args:
        v: the value (its magnitude decides).

    Returns:
        3 or 1.
    """
    return 3 if abs(v) < 10 else 1


def fmt_value(v) -> str:
    """A metric value as every terminal line, sweep line, heatmap and report shows it.

    The one rounding rule: the value is first rounded to :data:`SIGNIFICANT` (6) significant
    digits, what ``matrix.csv`` holds (``%.6g``), then to :func:`decimals` places, half away
    from zero, in decimal arithmetic (``decimal.ROUND_HALF_UP`` on the decimal digits, not on
    the binary float). So 0.9625 shows as ``0.963`` whether it comes from the run's memory (a
    float32 accuracy, 0.96249998), from ``matrix.csv`` (``0.9625``) or from ``metrics.json``
    (0.9625000000000000222); Python's ``f"{0.9625:.3f}"`` rounds the binary float and
    ``round()`` rounds half to even, which is why they disagreed. A negative value that rounds
    to zero shows as ``0.000``, not ``-0.000``.

    Args:
        v: a number (int, float, NumPy scalar, numeric string), ``None`` or anything else.

    Returns:
        The text: ``–`` for None, ``nan``, ``inf`` / ``-inf``, ``str(v)`` for a non-number.
    """
    if v is None:
        return "–"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if v != v:
        return "nan"
    if v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return f"{_rounded(v):f}"


def _rounded(v: float) -> Decimal:
    """``v`` by :func:`fmt_value`'s rule, as a Decimal with :func:`decimals` places."""
    d = Decimal(f"{v:.{SIGNIFICANT}g}")
    places = decimals(float(d))
    q = d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if decimals(float(q)) != places:  # 9.9996 -> 10.000: a value of 10 or more gets 1 place
        q = d.quantize(Decimal(1).scaleb(-decimals(float(q))), rounding=ROUND_HALF_UP)
    return q.copy_abs() if q.is_zero() else q


def terminal_width() -> int:
    """The width the run's lines are wrapped to: ``COLUMNS`` if set, else the terminal's
    width, else 100 (a pipe, a SLURM log).

    Returns:
        The number of columns (at least 40).
    """
    return max(shutil.get_terminal_size((100, 24)).columns, 40)


def wrap_parts(head: str, parts: list[str], tail: str = "", width: int | None = None,
               sep: str = ", ", indent: str = "    ") -> str:
    """``head`` + ``parts`` joined by ``sep`` + ``tail``, broken between parts into lines of at
    most ``width`` characters (continuation lines indented); a part too long for a line by
    itself is broken at its spaces (a word longer than the line, such as a path, is kept whole).

    Args:
        head: the start of the first line (``"row init: "``); parts: the items;
        tail: appended to the last item; width: the line width (:func:`terminal_width` if
        None); sep: between items; indent: the start of every continuation line.

    Returns:
        The text, one or more lines joined by newlines.
    """
    width = width or terminal_width()
    items = [p + (sep.rstrip() if i < len(parts) - 1 else tail) for i, p in enumerate(parts)]
    space = " " if sep.endswith(" ") else ""
    lines, line, gap = [], head, ""
    for item in items:
        if line.strip() and len(line) + len(gap) + len(item) > width:  # the next line
            lines.append(line.rstrip())
            line, gap = indent, ""
        if len(line) + len(gap) + len(item) > width:  # too long for a line of its own
            pieces = textwrap.wrap(item, width=max(width - len(indent), 20),
                                   break_long_words=False, break_on_hyphens=False)
            line += gap + pieces[0]
            for piece in pieces[1:]:
                lines.append(line.rstrip())
                line = indent + piece
        else:
            line += gap + item
        gap = space
    lines.append(line.rstrip())
    return "\n".join(lines)


#: how metrics.json's ``baselines`` are named for a reader (:func:`cl_bench.kinds.task_baselines`)
BASELINE_NAMES = {"mean_predictor": "predicting the mean", "chance": "chance"}


def baseline_text(baseline: dict | None, units: str | None = None) -> str | None:
    """A task's baseline as a reader sees it: ``predicting the mean: 16.3 years``,
    ``chance: 0.500 (2 classes)``.

    Args:
        baseline: the task's entry of metrics.json's ``baselines`` (``None``: none);
        units: the metric's units, shown after the value.

    Returns:
        The text, or ``None`` if there is no baseline.
    """
    for key, name in BASELINE_NAMES.items():
        if (baseline or {}).get(key) is not None:
            unit = f" {units}" if units else ""
            classes = f" ({baseline['classes']} classes)" if baseline.get("classes") else ""
            return f"{name}: {fmt_value(baseline[key])}{unit}{classes}"
    return None


def versus_baseline(value, baseline: dict | None, higher_is_better: bool) -> str | None:
    """How ``value`` compares with its task's baseline, as the numbers are shown
    (:func:`fmt_value`): ``"worse than predicting the mean"``, ``"no better than chance"``,
    ``"better than chance"``.

    Args:
        value: the model's score; baseline: the task's metrics.json ``baselines`` entry;
        higher_is_better: the metric's direction.

    Returns:
        The phrase, or ``None`` without a baseline or a finite value.
    """
    for key, name in BASELINE_NAMES.items():
        b = (baseline or {}).get(key)
        if b is None or value is None:
            continue
        try:
            ours, theirs = _rounded(float(value)), _rounded(float(b))
        except (TypeError, ValueError, ArithmeticError):
            return None
        if ours == theirs:
            return f"no better than {name}"
        return f"{'better' if (ours > theirs) == higher_is_better else 'worse'} than {name}"
    return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def _seconds(v) -> float | None:
    """A ``timing.json`` entry as seconds; None if absent or not a finite number."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v == v and abs(v) != float("inf") else None


def _rate(seconds: float, steps) -> str:
    """``1.47 s/step`` (``12.5 ms/step`` below a tenth of a second); ``""`` without steps."""
    try:
        per = seconds / int(steps)
    except (TypeError, ValueError, ZeroDivisionError):
        return ""
    return f", {per:.2f} s/step" if per >= 0.1 else f", {per * 1000:.1f} ms/step"


def time_budget(timing: dict, finished: bool = True, width: int | None = None) -> str | None:
    """Where a run's time went, from its ``timing.json`` (seconds), as one wrapped line:
    ``time 35 min 12 s: data 58.0 s, model build 3.1 s, initial evaluation 27.0 s, tumour_seg
    training 14 min 44 s (600 steps, 1.47 s/step), evaluation 39.0 s, probes 25.0 s, ...,
    other (files, figures, checkpoints) 5.0 s``.

    The phases, in the order they run: ``data_s`` (the stream's build), ``build_s`` (the
    model's), ``init_eval_s``, then per task ``train_s`` (with ``steps`` and the seconds per
    step), ``eval_s`` (every task evaluated after it) and ``probe_s`` (left out when 0: probes
    off). ``other`` is ``total_s`` minus the phases shown: result files, figures, checkpoints,
    and for a stopped or resumed run (``finished`` False, or ``resumed`` > 0) the unfinished
    work, which no phase records. A phase missing from the file (a run written before
    ``data_s`` and ``build_s`` existed, an interrupted run's untrained tasks) is left out. A
    task continued from a mid-task checkpoint shows its steps without a rate: its ``train_s``
    covers only the last process's part.

    Args:
        timing: ``timing.json``'s content (possibly empty or partial); finished: the run ended
            complete (metrics.json's ``complete``); width: the line width
            (:func:`terminal_width` if None).

    Returns:
        The text, or None when ``timing`` records no phase.
    """
    parts, spent = [], 0.0

    def add(label: str, v, note: str = "", skip_zero: bool = False) -> None:
        nonlocal spent
        v = _seconds(v)
        if v is None or (skip_zero and v == 0):
            return
        parts.append(f"{label} {_duration(v)}{note}")
        spent += v

    add("data", timing.get("data_s"))
    add("model build", timing.get("build_s"))
    add("initial evaluation", timing.get("init_eval_s"))
    tasks = timing.get("tasks")
    for name, t in (tasks.items() if isinstance(tasks, dict) else ()):
        if not isinstance(t, dict):
            continue
        train, steps = _seconds(t.get("train_s")), t.get("steps")
        note = ""
        if steps is not None and train is not None:
            note = (f" ({steps} steps, continued after a stop)" if t.get("continued") else
                    f" ({steps} steps{_rate(train, steps)})")
        add(f"{name} training", train, note)
        add("evaluation", t.get("eval_s"))
        add("probes", t.get("probe_s"), skip_zero=True)
    if not parts:
        return None
    total = _seconds(timing.get("total_s"))
    if total is not None and total - spent > -0.05:  # rounding: never a negative remainder
        unfinished = not finished or bool(_seconds(timing.get("resumed")))
        parts.append("other (files, figures, checkpoints" + (", unfinished work"
                     if unfinished else "") + f") {_duration(max(total - spent, 0.0))}")
    return wrap_parts(f"time {_duration(total)}: ", parts, width=width)


def _header(task: str, units: dict) -> str:
    """Two header lines: the task, then its metric, units and direction."""
    u = units.get(task, {})
    unit = f" ({u['units']})" if u.get("units") else ""
    arrow = "↑" if u.get("higher_is_better", True) else "↓"
    return f"{task}\n{metric_label(u.get('metric', ''))}{unit} {arrow}"


def run_summary(run_dir: str | Path, width: int | None = None) -> str:
    """The multi-line summary of the run in ``run_dir`` (see the module docstring).

    Beside R, a ``baseline`` row (metrics.json's ``baselines``: the mean predictor's MAE of a
    regression task, chance of a classification task) and one line per such task saying
    plainly how its last value compares (``brain_age: MAE 18.9 years (after_brain_age) is worse
    than predicting the mean (16.3 years)``). Lines other than the tables are wrapped to
    ``width`` (a path is never broken). Near the end, where the wall time went
    (:func:`time_budget`).

    Args:
        run_dir: the run directory; width: the line width (None: :func:`terminal_width`).

    Returns:
        The text; a short line saying no row was written if ``matrix.csv`` is missing.
    """
    import pandas as pd
    from tabulate import tabulate

    width = width or terminal_width()
    run_dir = Path(run_dir)
    matrix = run_dir / "matrix.csv"
    if not matrix.is_file():
        return f"no row of R was written; nothing to summarise in {run_dir}"
    R = pd.read_csv(matrix, index_col=0)
    m = _read_json(run_dir / "metrics.json")
    params = _read_json(run_dir / "params.json").get("tasks", {})
    timing = _read_json(run_dir / "timing.json")
    units = m.get("units", {})
    baselines = m.get("baselines") or {}
    done, total = m.get("tasks_completed", len(R) - 1), m.get("num_tasks", R.shape[1])
    state = "complete" if m.get("complete") else f"INCOMPLETE: {done}/{total} tasks"
    lines = [wrap_parts(f"{m.get('strategy', '?')} on {m.get('tasks', '?')} ", [
        f"(backbone {m.get('backbone', '?')}, seed {m.get('seed', '?')}"
        + (f", {m['precision']}" if m.get("precision") else "") + "):",
        f"{state}, wall time {_duration(timing.get('total_s'))}"], width=width, sep=" ")]
    body = [[row, *map(fmt_value, values)] for row, values in zip(R.index, R.to_numpy())]
    if any(c in baselines for c in R.columns):
        body.append(["baseline", *(_baseline_cell(baselines.get(c)) for c in R.columns)])
    lines += ["", tabulate(body, headers=["R: after \\ on", *(_header(c, units) for c in R.columns)],
                           colalign=("left",) + ("right",) * R.shape[1], disable_numparse=True)]
    lines += [wrap_parts("", [line], width=width) for line in _baseline_lines(R, units, baselines)]
    lines.append("")
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
                  wrap_parts("", ["(BWT, FWT > 0 = better, forgetting > 0 = worse, whatever "
                                  "the metric's direction)"], width=width),
                  ""]
    elif m.get("error"):
        lines += [wrap_parts("", [m["error"]], width=width), ""]
    if params:
        lines.append(wrap_parts("trainable: ", [
            f"{task} {p['trainable_pct']:.2f} % ({p['trainable']:,} params"
            + (f": adapters {p['adapter']:,} = {p['adapter_pct_of_backbone']:.2f} % of the "
               f"backbone, head {p.get('head', 0):,}" if p.get("adapter") else "") + ")"
            for task, p in params.items()], width=width))
    budget = time_budget(timing, finished=bool(m.get("complete")), width=width)
    if budget:
        lines.append(budget)
    files = ["heatmap.png", "matrix.csv"] + [f for f in ("matrix_val.csv", "probes.json")
                                             if (Path(run_dir) / f).is_file()] + ["metrics.json"]
    line = f"files: {run_dir}/{{{', '.join(files)}}}"
    lines.append(line if len(line) <= width else
                 f"files: {run_dir}/\n" + wrap_parts("    ", files, width=width))
    return "\n".join(lines)


def _baseline_cell(baseline: dict | None) -> str:
    """A task's value in the summary's ``baseline`` row of R (``–``: none)."""
    for key in BASELINE_NAMES:
        if (baseline or {}).get(key) is not None:
            return fmt_value(baseline[key])
    return "–"


def _baseline_lines(R, units: dict, baselines: dict) -> list[str]:
    """One line per task with a baseline: its last value of R against it, said plainly."""
    if not len(R):
        return []
    lines = []
    row = R.index[-1]
    for task in R.columns:
        u, base = units.get(task, {}), baselines.get(task) or {}
        key = next((k for k in BASELINE_NAMES if base.get(k) is not None), None)
        if key is None:
            continue
        unit = f" {u['units']}" if u.get("units") else ""
        classes = f", {base['classes']} classes" if base.get("classes") else ""
        v = R.loc[row, task]
        verdict = versus_baseline(v, base, u.get("higher_is_better", True))
        lines.append(f"{task}: {metric_label(u.get('metric', ''))} {fmt_value(v)}{unit} ({row}) "
                     + (f"is {verdict}" if verdict else f"vs {BASELINE_NAMES[key]}")
                     + f" ({fmt_value(base[key])}{unit}{classes})")
    return ["baselines, the last row against a model that learned nothing:", *
            ("  " + line for line in lines)] if lines else []


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
