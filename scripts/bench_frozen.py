#!/usr/bin/env python
"""Frozen work done once: training time with and without ``train.cache_frozen_features``.

Runs the brain stream (``tasks=brain_seg_age``, the default Swin backbone) through ``clbench``
at the same steps per task for ``seq_ft`` (nothing frozen, the yardstick), and for ``seq_lp``
(frozen backbone) and ``lwf`` (frozen teacher) each twice: with the frozen work computed once
per training sample (the default) and recomputed every step (``train.cache_frozen_features=
false``, the runner before the cache). Prints each run's training time (the sum of its tasks'
``train_s`` in ``timing.json``), its ratio to seq_ft's, and for each cached/uncached pair the
largest difference of their R matrices and of their final weights (0 = bit for bit). Every run is
a fresh process with ``hardware.num_threads=1 logger=none train.progress_bar=false``.

    python scripts/bench_frozen.py                      # 100 steps per task
    python scripts/bench_frozen.py --steps 50 --json results/reference/bench/frozen.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import COMMON, run_clbench  # the same fresh-process harness

RUNS = [("seq_ft", None), ("seq_lp", True), ("seq_lp", False), ("lwf", True), ("lwf", False)]


def _weights(run_dir: Path) -> dict:
    import torch
    state = torch.load(run_dir / "checkpoints" / "state.pt", map_location="cpu",
                       weights_only=False)
    return {k: v.detach().float() for k, v in state["model"].items() if hasattr(v, "detach")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100, help="train.max_steps per task")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    args = p.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    results, kept = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy, cache in RUNS:
            overrides = [f"strategy={strategy}", "tasks=brain_seg_age",
                         f"train.max_steps={args.steps}", *COMMON, *args.extra]
            if cache is not None:
                overrides.append(f"train.cache_frozen_features={str(cache).lower()}")
            run_tmp = Path(tmp) / f"{strategy}_{cache}"
            run_tmp.mkdir()
            got = run_clbench(overrides, run_tmp)
            tasks = got["timing"]["tasks"]
            row = {"strategy": strategy, "cache": cache,
                   "train_s": sum(v["train_s"] for v in tasks.values()),
                   "train_s_per_task": {k: v["train_s"] for k, v in tasks.items()},
                   "eval_s": got["eval"], "process_s": got["process"],
                   "R": got["R"].to_dict(orient="index")}
            kept[(strategy, cache)] = (got["R"], _weights(run_tmp / "run"))
            results.append(row)
            print(f"{strategy} cache={cache}: train {row['train_s']:.1f} s "
                  f"({', '.join(f'{k} {v:.1f}' for k, v in row['train_s_per_task'].items())})",
                  flush=True)
    base = results[0]["train_s"]
    lines = ["| strategy | frozen work | train (s) | / seq_ft | max abs R diff, weights diff "
             "(cached vs every step) |", "|---|---|---|---|---|"]
    for row in results:
        row["ratio_to_seq_ft"] = row["train_s"] / base
        diff = ""
        if row["cache"]:
            (ra, wa), (rb, wb) = kept[(row["strategy"], True)], kept[(row["strategy"], False)]
            row["max_abs_R_diff"] = float((ra - rb).abs().to_numpy().max())
            row["max_abs_weight_diff"] = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
            diff = f"{row['max_abs_R_diff']:.2g}, {row['max_abs_weight_diff']:.2g}"
        how = {None: "–", True: "once per sample", False: "every step"}[row["cache"]]
        lines.append(f"| {row['strategy']} | {how} | {row['train_s']:.1f} | "
                     f"{row['ratio_to_seq_ft']:.2f} | {diff} |")
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"steps": args.steps, "command": " ".join(sys.argv),
                                         "runs": results}, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
