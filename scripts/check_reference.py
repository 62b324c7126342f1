#!/usr/bin/env python
"""Rerun rows of a reference table and compare their results with the committed ones.

A reference directory (``results/reference/<name>/``) holds ``runs.csv``: one row per run with
its whole config (``cfg:<key>`` columns) and its results (final metric per task, the
just-learned diagonal, BWT/forgetting/MFN/MFT/MAA, CISS base/new/all). This script picks rows
(``--select key=value ...`` on runs.csv's columns, e.g. ``strategy=lwf seed=0``), rebuilds each
run's overrides from its ``cfg:`` columns (the group options from ``strategy``, ``tasks.name``,
``backbone.name``; every other set value as ``key=value``; machine-specific keys such as
``results_dir`` and ``tasks.cache_dir`` left at this machine's values), runs it through
``clbench`` in a temporary directory, reads it back with ``clbench-report``'s loader and prints
the largest absolute difference of every result column. It exits 1 if any exceeds ``--atol``
(default 1e-6), so it can show that a change left the references' numbers alone.

    python scripts/check_reference.py results/reference/split_mnist --select strategy=lwf seed=0
    python scripts/check_reference.py results/reference/brain_mri_fm --select strategy=seq_lp seed=0

Times and memory (``wall time (s)``, ``peak RSS (MB)``) are shown, not compared. Results can
differ across CPUs in the last bits (summation order of some kernels), beyond any code change.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

#: config keys whose committed value belongs to the machine or the sweep that made the table
MACHINE_KEYS = ("results_dir", "tasks.cache_dir", "hardware.slurm", "experiment", "resume",
                "logger._target_", "strategy.name", "tasks.name", "backbone.name",
                "train.progress_bar")
#: keys added to the config after a reference table was made: the value that reproduces the old
#: behaviour, and a key the row must have set for the new one to exist (same config group)
ADDED_KEYS = {"backbone.fused_attention": ("false", "backbone.window_size")}  # issue 25 (Swin)
NOT_RESULTS = ("run", "tasks", "strategy", "backbone", "seed", "complete", "tasks_completed",
               "num_tasks", "wall time (s)", "peak RSS (MB)", "peak GPU (MB)")


def _value(v) -> str | None:
    """A runs.csv cell as a Hydra override value (None: not set in that run's config)."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # pandas stores an int column with gaps as floats
    s = str(v)
    if s.startswith("${"):
        return None  # an interpolation: the config resolves it again
    if s in ("True", "False"):
        return s.lower()
    return s


def overrides(row: pd.Series) -> list[str]:
    """The Hydra overrides that rebuild ``row``'s run (see module docstring)."""
    out = [f"strategy={row['cfg:strategy.name']}", f"tasks={row['cfg:tasks.name']}",
           f"backbone={row['cfg:backbone.name']}"]
    for col, v in row.items():
        if not col.startswith("cfg:"):
            continue
        key = col[4:]
        if key in MACHINE_KEYS or key.endswith("._target_"):
            continue
        value = _value(v)
        if value is not None:
            out.append(f"{key}={value}")
    for key, (old, witness) in ADDED_KEYS.items():
        if _value(row.get(f"cfg:{key}", float("nan"))) is None and \
                _value(row.get(f"cfg:{witness}", float("nan"))) is not None:
            out.append(f"{key}={old}")
    return out + ["logger=none", "train.progress_bar=false"]


def _run(overrides: list[str], tmp: Path) -> pd.Series:
    from cl_bench.report.load import load_runs
    proc = subprocess.run([sys.executable, "-m", "cl_bench.cli", *overrides,
                           f"results_dir={tmp}", f"hydra.run.dir={tmp / 'run'}"],
                          cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"check_reference: clbench failed:\nclbench {' '.join(overrides)}\n"
                 f"{proc.stderr[-3000:]}")
    runs, _ = load_runs([tmp / "run"])
    return runs.iloc[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reference", type=Path, help="a directory with runs.csv")
    p.add_argument("--select", nargs="*", default=[], metavar="COLUMN=VALUE",
                   help="keep the rows whose runs.csv column equals the value")
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--extra", nargs="*", default=[], help="more overrides (appended)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args()
    path = args.reference / "runs.csv"
    if not path.is_file():
        sys.exit(f"check_reference: no runs.csv in {args.reference}")
    table = pd.read_csv(path)
    for sel in args.select:
        col, _, want = sel.partition("=")
        if col not in table.columns:
            sys.exit(f"check_reference: --select {sel}: runs.csv has no column {col!r}")
        table = table[table[col].astype(str) == want]
    if table.empty:
        sys.exit(f"check_reference: no row of {path} matches {' '.join(args.select)}")
    os.environ.setdefault("MPLBACKEND", "Agg")
    worst = 0.0
    for _, row in table.iterrows():
        ov = overrides(row) + args.extra
        print(f"rerun {row['run']}: clbench {' '.join(ov)}", flush=True)
        if args.dry_run:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            got = _run(ov, Path(tmp))
        for col in table.columns:
            if col.startswith("cfg:") or col in NOT_RESULTS or col not in got.index:
                continue
            old, new = row[col], got[col]
            if pd.isna(old) and pd.isna(new):
                continue
            diff = abs(float(new) - float(old)) if not (pd.isna(old) or pd.isna(new)) else math.inf
            worst = max(worst, diff)
            flag = "" if diff <= args.atol else "   <-- differs"
            print(f"  {col}: reference {float(old):.6g}, now {float(new):.6g}, |diff| {diff:.2g}"
                  f"{flag}")
        print(f"  wall time: reference {row.get('wall time (s)', float('nan')):.0f} s, "
              f"now {got.get('wall time (s)', float('nan')):.0f} s", flush=True)
    if args.dry_run:
        return
    print(f"largest |difference|: {worst:.3g} ({'within' if worst <= args.atol else 'beyond'} "
          f"{args.atol:g})")
    sys.exit(0 if worst <= args.atol else 1)


if __name__ == "__main__":
    main()
