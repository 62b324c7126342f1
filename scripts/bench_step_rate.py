#!/usr/bin/env python
"""Seconds per training step of each task of the main job, for one commit against another.

Builds each task's real training step with :class:`bench_step_profile.StepBench` (the stream, the
model, the strategy's adapters and optimiser, as the runner builds them) from the tree given by
``--root`` (its ``cl_bench``, ``conf`` and ``scripts``), runs ``--warmup`` steps, then prints the
mean wall time of ``--steps`` steps per task. ``clbench``'s training time of a task is about
``train.max_steps`` times this, so two commits' rates on one idle machine compare their ``make run``
training without running both (``results/reference/bench/make_run_fm_protocol``):

    git worktree add --detach /tmp/old 0f505f4
    python scripts/bench_step_rate.py --root /tmp/old hardware.precision=32-true
    python scripts/bench_step_rate.py --root . hardware.precision=32-true

Prints one line per task: ``<root> <task> <s/step> trainable <n>``. Wall clock on ``--threads``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."),
                   help="the cl_bench tree to time (a git worktree of the commit)")
    p.add_argument("--strategy", default="lora")
    p.add_argument("--tasks", type=int, nargs="+", default=[0, 1], help="task indices")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. hardware.precision=32-true")
    args = p.parse_args(argv)
    root = os.path.abspath(args.root)
    sys.path[:0] = [os.path.join(root, "scripts"), root]
    import torch
    from bench_step_profile import StepBench

    torch.set_num_threads(args.threads)
    for index in args.tasks:
        bench = StepBench(args.strategy, args.overrides, task_index=index)
        for _ in range(args.warmup):
            bench.step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            bench.step()
        rate = (time.perf_counter() - t0) / args.steps
        print(f"{root} {bench.task.name} {rate:.3f} s/step trainable {bench.trainable}", flush=True)


if __name__ == "__main__":
    main()
