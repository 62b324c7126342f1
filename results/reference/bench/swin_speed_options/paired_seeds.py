#!/usr/bin/env python
"""Issue 25: validation Dice / age MAE of the main job (lora) per seed, before issue 25 (fp32,
explicit attention) and at the default (bf16 autocast on this CPU, fused attention), with the
paired difference (default - before) over every seed found. Reads the final row of each run's
matrix_val.csv; prints a markdown table.

    W=<worktree of queue_seeds34.sh>
    python results/reference/bench/swin_speed_options/paired_seeds.py \\
        --before 'results/reference/brain_mri_fm/runs/lora_seed{s}' \\
                 "$W/results/bench_issue25/seeds34/before_seed{s}" \\
        --default 'results/bench_issue25/default_b6503d9/lora_seed{s}' \\
                  "$W/results/bench_issue25/seeds34/default_seed{s}"

Each pattern's ``{s}`` is the seed; the first pattern with an existing directory wins.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd


def final_val(patterns: list[str], seed: int) -> tuple[float, float] | None:
    """(tumour_seg Dice, brain_age MAE) of the final validation row, or None (no run)."""
    for pattern in patterns:
        path = Path(pattern.format(s=seed)) / "matrix_val.csv"
        if path.is_file():
            row = pd.read_csv(path, index_col=0).iloc[-1]
            return float(row["tumour_seg"]), float(row["brain_age"])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", nargs="+", required=True)
    p.add_argument("--default", nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--label", default="default", help="the column name of --default's runs")
    a = p.parse_args()
    new = a.label
    rows, dd, dm = [], [], []
    print(f"| seed | before: val Dice | {new}: val Dice | difference | before: val MAE (y) | "
          f"{new}: val MAE (y) | difference |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in a.seeds:
        b, d = final_val(a.before, s), final_val(a.default, s)
        if b is None or d is None:
            cells = ["–" if v is None else f"{v[0]:.3f}" for v in (b, d)]
            print(f"| {s} | {cells[0]} | {cells[1]} | (missing run) | | | |")
            continue
        rows.append((b, d))
        dd.append(d[0] - b[0])
        dm.append(d[1] - b[1])
        print(f"| {s} | {b[0]:.3f} | {d[0]:.3f} | {d[0] - b[0]:+.3f} | {b[1]:.2f} | {d[1]:.2f} | "
              f"{d[1] - b[1]:+.2f} |")
    n = len(rows)
    if n >= 2:
        mean = lambda xs: statistics.mean(xs)  # noqa: E731
        sd = lambda xs: statistics.stdev(xs)  # noqa: E731
        bd, db = [r[0][0] for r in rows], [r[1][0] for r in rows]
        bm, dmae = [r[0][1] for r in rows], [r[1][1] for r in rows]
        print(f"| mean ± std ({n} seeds) | {mean(bd):.3f} ± {sd(bd):.3f} | {mean(db):.3f} ± "
              f"{sd(db):.3f} | {mean(dd):+.4f} ± {sd(dd):.4f} | {mean(bm):.2f} ± {sd(bm):.2f} | "
              f"{mean(dmae):.2f} ± {sd(dmae):.2f} | {mean(dm):+.2f} ± {sd(dm):.2f} |")
        print(f"\npaired Dice difference: mean {mean(dd):+.4f}, standard error "
              f"{sd(dd) / n ** 0.5:.4f} over {n} seeds; MAE difference: mean {mean(dm):+.3f} y, "
              f"standard error {sd(dm) / n ** 0.5:.3f} y")


if __name__ == "__main__":
    main()
