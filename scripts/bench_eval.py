#!/usr/bin/env python
"""One row of R under each evaluation batch size (``train.eval_batch_size``), side by side.

Builds the main job as the runner does (``cl_bench.runner.build_run``: ``clbench`` plus the
given overrides; untrained adapters and heads, which cost what trained ones cost), then times
:func:`cl_bench.evaluation.evaluate_row` (every task's test and validation sets, the work of
each row of R) for each ``--batch-sizes`` entry, *interleaved*: round after round, one row per
batch size in turn, so a busy machine slows them alike (ratios hold, absolute times do not).
Prints the median seconds per row, the ratio to the first batch size, the largest difference
of any score from the first batch size's (batching changes float rounding only) and the CPU.

    python scripts/bench_eval.py --batch-sizes 4 1 2 8 --rounds 3 hardware.num_threads=2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[4, 1, 2, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="clbench overrides (key=value)")
    args = p.parse_args(argv)

    from hydra import compose, initialize_config_dir

    from cl_bench.evaluation import evaluate_row
    from cl_bench.hardware import cpu_name, resolve_precision
    from cl_bench.runner import build_run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    model, strategy, stream, _ = build_run(cfg)
    bf16 = resolve_precision(cfg.hardware.precision, "cpu", model.encoder).startswith("bf16")
    times: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    scores: dict[int, list[float]] = {}
    for _ in range(args.rounds):
        for b in args.batch_sizes:
            start = time.perf_counter()
            row = evaluate_row(model, strategy, stream, b, "cpu", bf16, val=True)
            times[b].append(time.perf_counter() - start)
            scores[b] = list(row.scores) + list(row.val_scores)
    first = args.batch_sizes[0]
    base = statistics.median(times[first])
    import torch
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} thread(s); one row of R "
          f"({', '.join(t.name for t in stream)}: test and validation sets), {args.rounds} rounds")
    print("| eval batch size | median s per row | ratio | max score difference |")
    print("|---:|---:|---:|---:|")
    result = {}
    for b in args.batch_sizes:
        med = statistics.median(times[b])
        diff = max(abs(x - y) for x, y in zip(scores[b], scores[first]))
        result[b] = {"median_s": med, "ratio": med / base, "max_score_diff": diff}
        print(f"| {b} | {med:.1f} | {med / base:.2f}x | {diff:.2g} |")
    return result


if __name__ == "__main__":
    main()
