#!/usr/bin/env python
"""Where a clbench run's time goes: one run under cProfile, its time split into named parts.

Runs ``clbench <overrides>`` in this process under :mod:`cProfile` and prints a table of the
cumulative seconds spent in each part of the run (start-up and imports, building the stream, the
training steps' forward / backward / optimiser step, the strategy's own hooks, Lightning's loop
around the step, evaluation, result files and figures), each with its share of the whole. The
parts are cumulative times of named functions, so a part contains those listed under it
(indented). cProfile slows Python-heavy code more than tensor kernels, so the Python parts
(Lightning's loop, hooks) come out larger here than without it; use
``scripts/bench_overhead.py`` for overhead ratios and this script to see what dominates.

    python scripts/profile_run.py experiment=ciss_seg_mnist tasks=seg_mnist_6-1 strategy=star \\
        train.max_steps=30 --out results/reference/bench/profile_star_6-1.txt
    python scripts/profile_run.py strategy=lwf tasks=brain_seg_age train.max_steps=20

``hardware.num_threads=1 logger=none train.progress_bar=false`` are added unless given.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

DEFAULTS = {"hardware.num_threads": "1", "logger": "none", "train.progress_bar": "false"}


def _key(fn) -> tuple:
    """pstats' key of a Python function: (file, first line, name)."""
    code = inspect.unwrap(fn).__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def report(stats: pstats.Stats, total: float, overrides: list[str], cfg) -> str:
    """The table of a run's parts (seconds and % of ``total``, the whole process).

    ``cfg``: the run's composed config (its ``tasks`` and ``strategy`` targets name the stream
    builder and the strategy class whose hooks are timed)."""
    from hydra.utils import get_class, get_method

    from cl_bench.evaluation import evaluate_row
    from cl_bench.results import write_results
    from cl_bench.runner import run
    from cl_bench.training import LitTask, fit_task

    def cum(fn) -> float:
        return stats.stats.get(_key(fn), (0, 0, 0, 0.0))[3]

    strategy = get_class(cfg.strategy._target_)
    rows = [("run (after imports and config)", 0, cum(run)),
            (f"build the stream ({cfg.tasks._target_})", 1, cum(get_method(cfg.tasks._target_))),
            ("fit_task (all tasks: Lightning fit, mid-task checkpoints)", 1, cum(fit_task))]
    import lightning as L
    fit, step = cum(L.Trainer.fit), cum(LitTask.training_step)
    rows += [("Lightning fit", 2, fit), ("training_step", 3, step)]
    stats.calc_callees()
    callees = stats.all_callees.get(_key(LitTask.training_step), {})
    known = {"_wrapped_call_impl": "model forward (module calls)", "manual_backward": "backward",
             "step": "optimiser step", "inner": "optimiser zero_grad"}
    named = []
    for (f, _, name), value in callees.items():
        where = Path(f).stem if "site-packages" not in f else f.split("site-packages/")[-1]
        named.append((value[3], known.get(name, f"{where}: {name}")))
    for seconds, label in sorted(named, reverse=True)[:8]:
        rows.append((label, 4, seconds))
    rows.append(("Lightning's loop around the step (fit - training_step)", 3, fit - step))
    for hook in ("before_task", "after_task"):
        rows.append((f"{strategy.__name__}.{hook}", 1, cum(getattr(strategy, hook))))
    rows += [("evaluation (every row: evaluate_row)", 1, cum(evaluate_row)),
             ("result files (and figures at the end: write_results)", 1, cum(write_results))]
    lines = [f"clbench {' '.join(overrides)}", "",
             "| part | s | % of process |", "|---|---|---|",
             f"| whole process (under cProfile) | {total:.1f} | 100 |",
             f"| start-up: imports, Hydra, config (process - run) | {total - rows[0][2]:.1f} | "
             f"{100 * (total - rows[0][2]) / total:.0f} |"]
    for label, indent, seconds in rows:
        lines.append(f"| {'· ' * indent}{label} | {seconds:.1f} | "
                     f"{100 * seconds / total:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="clbench's Hydra overrides")
    p.add_argument("--out", type=Path, help="also write the table here")
    p.add_argument("--top", type=int, default=25, help="also print the N slowest functions")
    args = p.parse_args()
    overrides = list(args.overrides)
    for key, value in DEFAULTS.items():
        if not any(o.split("=")[0].lstrip("+~") == key for o in overrides):
            overrides.append(f"{key}={value}")
    os.environ.setdefault("MPLBACKEND", "Agg")
    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = ["clbench", *overrides, f"results_dir={tmp}", f"hydra.run.dir={tmp}/run"]
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        try:
            from cl_bench.cli import main as clbench
            clbench()
        except SystemExit as e:
            if e.code not in (0, None):
                raise
        finally:
            profiler.disable()
        total = time.perf_counter() - start
    from hydra import compose, initialize_config_dir

    from cl_bench.composition import CONF_DIR
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    stats = pstats.Stats(profiler)
    text = report(stats, total, overrides, cfg)
    print(text)
    if args.top:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(args.top)
        print(buf.getvalue())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
