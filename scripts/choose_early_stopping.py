#!/usr/bin/env python
"""Choose the main job's early-stopping rule from validation curves (validation data only).

Reads ``val_checks.csv`` of runs made with validation checks and no stopping
(``train.val_every_n_steps=50``, ``train.early_stopping_patience=0``, one run per seed): each
task's validation metric every 50 steps up to ``train.max_steps``. A check draws no random
number and changes no weight (:class:`cl_bench.training.ValidationChecks`), so a run that stops
by a rule follows the same curve up to its stop: every rule is evaluated on the curves exactly,
without training again. Rules:

* ``every``: steps between checks (50, or 100: every second check of the curve);
* ``patience``: checks in a row without a better value before the task stops (0: never);
* ``restore``: end on the best check's weights (its value) instead of the stop step's;
* ``max_steps``: a cap (the full curve's length, or shorter: fewer steps without stopping).

For each rule and task: the validation metric it ends with, per seed, and its paired
difference from the full run (the last check, ``max_steps`` steps, no stopping: the
protocol's unaccelerated run), with the standard error of that difference over seeds; and the
training steps plus checks it costs (checks at the curves' measured seconds; none for a
rule without patience, which needs no checks).

The rule is chosen by what was written before the curves were read: **the cheapest rule (mean
steps over tasks and seeds) whose mean paired difference on every task is no worse than one
standard error of that difference** (issue 40's acceptance, on validation data). Prints the
table and writes it (``--out``, CSV).

    python scripts/choose_early_stopping.py /work/curves/lora_seed{0,1,2} --out table.csv
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import pandas as pd


def outcome(curve: pd.DataFrame, every: int, patience: int, restore: bool, max_steps: int,
            higher: bool) -> tuple[float, int, float]:
    """``(value, steps, check_seconds)`` of one task's curve (rows ``step``, ``value``,
    ``seconds``, ascending steps) under a rule (see the module docstring)."""
    rows = curve[(curve["step"] % every == 0) & (curve["step"] <= max_steps)]
    best = None
    wait, seconds = 0, 0.0
    last = None
    for step, value, s in zip(rows["step"], rows["value"], rows["seconds"]):
        seconds += s
        last = (value, int(step))
        if best is None or (value > best if higher else value < best):
            best, wait = value, 0
        else:
            wait += 1
        if patience and wait >= patience:
            break
    value, step = last
    return (best if restore else value), step, seconds


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (one per seed)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    curves, higher = {}, {}
    for run in args.runs:
        metrics = json.loads((run / "metrics.json").read_text())
        seed = metrics["seed"]
        checks = pd.read_csv(run / "val_checks.csv")
        for task, c in checks.groupby("task", sort=False):
            curves[(seed, task)] = c.sort_values("step")
            higher[task] = metrics["units"][task]["higher_is_better"]
    seeds = sorted({s for s, _ in curves})
    tasks = list(dict.fromkeys(t for _, t in curves))
    full = min(int(c["step"].max()) for c in curves.values())
    caps = sorted({full, *(s for s in (100, 150, 200, 300, 400) if s < full)})
    records = []
    for every, patience, restore, cap in itertools.product((50, 100), (0, 1, 2, 3, 4),
                                                           (False, True), caps):
        if (patience == 0 and restore) or (patience and cap != full) or cap % every:
            continue
        rec = {"every": every, "patience": patience, "restore": restore, "max_steps": cap}
        total_steps, total_check_s, ok = 0, 0.0, True
        for task in tasks:
            diffs, values, task_steps = [], [], 0
            for seed in seeds:
                c = curves[(seed, task)]
                value, steps, check_s = outcome(c, every, patience, restore, cap, higher[task])
                base = float(c[c["step"] == full]["value"].iloc[0])
                diffs.append(value - base)
                values.append(value)
                check_s = check_s if patience else 0.0  # a cap alone needs no checks
                total_steps, task_steps, total_check_s = (total_steps + steps, task_steps + steps,
                                                          total_check_s + check_s)
            mean = sum(diffs) / len(diffs)
            se = (math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
                  if len(diffs) > 1 else float("nan"))
            worse = -mean if higher[task] else mean  # > 0: worse than the full run
            ok &= worse <= (se if se == se else 0.0)
            rec[f"{task} val"] = sum(values) / len(values)
            rec[f"{task} diff"] = mean
            rec[f"{task} se"] = se
            rec[f"{task} steps"] = task_steps / len(seeds)
        rec["mean steps per task"] = total_steps / (len(seeds) * len(tasks))
        rec["check s per task"] = total_check_s / (len(seeds) * len(tasks))
        rec["no worse (1 SE)"] = ok
        records.append(rec)
    table = pd.DataFrame(records).sort_values("mean steps per task")
    chosen = table[table["no worse (1 SE)"]].head(1)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.round(4).to_string(index=False))
        print("\nchosen (cheapest rule no worse than the full run within 1 SE on every task):")
        print(chosen.round(4).to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    main()
