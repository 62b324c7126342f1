#!/usr/bin/env python
"""What the runner costs: clbench against a minimal plain PyTorch loop doing the identical work.

Each round runs a workload twice, each time as a fresh process: through ``clbench`` (Hydra,
Lightning's fit loop, result files, checkpoints) and through :func:`plain_loop` below, a loop a
researcher would write by hand on the *same* cl_bench model, stream, strategy hooks, seeds,
batches, AdamW groups, init row and per-task evaluation metrics (MONAI Dice, torchmetrics MAE and
accuracy; on the validation sets too when the stream has them, as the runner does), writing
``matrix.csv`` (and ``matrix_val.csv``) after every row. The plain loop imports what that work
needs (torch; the model's, stream's and losses' modules, which bring MONAI; torchmetrics; Hydra
only to compose the same config) and not Lightning, so ``process`` counts Lightning's start-up
against clbench. Both must end with the same weights (a sha256 of the state dict), the same R
matrix and the same R on the validation sets; the script stops with an error if they do not,
since a ratio between different work means nothing. The runner's probes after every task
(``probes.json``, :mod:`cl_bench.probes`) are run by the plain loop too and must agree; they are
outside ``train+eval`` (``timing.json``'s ``probe_s``), inside ``loop`` and ``process``.

Times (seconds; min and median over the rounds) and the clbench / plain ratios:

* ``process``: the whole process, spawn to exit;
* ``loop``: init row to the last result file written (train + eval + result writing);
* ``train+eval``: the sum of every task's training and every row's evaluation;
* ``eval``: every row's evaluation;
* ``start->step``: spawn to the first optimiser step.

Workloads (Hydra overrides on the default config):

* ``split_mnist_cil``: ``experiment=split_mnist tasks.scenario=class_il strategy=seq_ft``;
* ``brain_50``: the main job's stream and strategy (``strategy=lora tasks=brain_seg_age``) with 50
  steps per task.

Both run with ``hardware.num_threads=1 logger=none train.progress_bar=false
hardware.precision=32-true``.

    python scripts/bench_overhead.py                       # both workloads, 5 rounds
    python scripts/bench_overhead.py --workloads brain_50 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# fp32 on every CPU: the plain loop below runs without autocast (hardware.precision=auto would
# pick bf16 on a CPU with native bf16, and the weights would no longer be comparable)
COMMON = ["hardware.num_threads=1", "logger=none", "train.progress_bar=false",
          "hardware.precision=32-true"]
WORKLOADS = {
    "split_mnist_cil": ["experiment=split_mnist", "tasks.scenario=class_il", "strategy=seq_ft"],
    "brain_50": ["strategy=lora", "tasks=brain_seg_age", "train.max_steps=50"],
}
FIELDS = ("process", "loop", "train+eval", "eval", "start->step")


def fingerprint(state: dict) -> str:
    """sha256 over a state dict's tensors in key order (bit-identical weights <=> equal)."""
    h = hashlib.sha256()
    for key in sorted(state):
        v = state[key]
        if hasattr(v, "detach"):
            h.update(key.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the plain loop
def seed_all(s: int) -> None:
    """Python's, NumPy's and torch's generators seeded with ``s`` (as Lightning's
    ``seed_everything`` does in the runner)."""
    import numpy as np
    import torch

    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def setup(overrides: list[str]):
    """The workload's config, model (heads added), stream and strategy, built by the runner's
    own :func:`cl_bench.runner.build_run` (same checks, seeds, threads, caching and class
    weights); deterministic mode set as ``hardware=cpu`` sets it for the runner's Trainer."""
    import torch
    from hydra import compose, initialize_config_dir

    from cl_bench.runner import build_run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.use_deterministic_algorithms(True, warn_only=True)  # hardware=cpu: deterministic
    model, strategy, stream, _ = build_run(cfg)
    return cfg, model, stream, strategy


def begin_task(cfg, model, strategy, t: int, task) -> None:
    """What the runner does before task ``t``'s steps: the model's and the strategy's task
    start, the head's calibration (a Swin age head)."""
    model.begin_task(task)
    strategy.before_task(t, task)
    model.calibrate_head(task, cfg.train.eval_batch_size, track=not strategy.frozen_backbone(task))


def plain_steps(cfg, model, strategy, t: int, task, on_step=None) -> None:
    """``train.max_steps`` steps of task ``t`` by hand: AdamW on the strategy's groups,
    zero_grad -> backward -> step per shuffled batch, with the strategy's step hooks where
    :class:`cl_bench.training.LitTask` calls them (``on_step()`` before each step)."""
    import torch
    from torch.utils.data import DataLoader

    from cl_bench.models.losses import TaskLoss

    loader = DataLoader(task.train, batch_size=cfg.train.batch_size, shuffle=True)
    loss_fn = TaskLoss(task, cfg.train.class_weights)
    opt = torch.optim.AdamW(strategy.param_groups(task), weight_decay=strategy.weight_decay)
    model.train()
    strategy.activate(task)
    step = 0
    while step < cfg.train.max_steps:
        for batch in loader:
            if on_step is not None:
                on_step()
            out = model(batch["image"], task.name)
            loss = strategy.task_loss(batch, out, t, loss_fn)
            extra = strategy.training_loss(batch, out, t)
            if extra is not None:
                loss = loss + extra
            opt.zero_grad(set_to_none=True)
            strategy.before_backward(loss, t)
            loss.backward()
            strategy.after_backward(loss, t)
            strategy.before_optimizer_step(opt, t)
            opt.step()
            step += 1
            if step >= cfg.train.max_steps:
                break


def plain_loop(overrides: list[str], out_dir: Path, spawn: float) -> dict:
    """Train and evaluate the workload with a hand-written loop; returns its timings (s)."""
    import pandas as pd
    import torch

    from cl_bench import probes
    from cl_bench.evaluation import answer
    from cl_bench.kinds import TaskScorer

    cfg, model, stream, strategy = setup(overrides)
    # the runner's probes after every task (probes.json; cl_bench.probes): the same work here,
    # outside train+eval as in the runner (its probe_s), inside loop and process
    reference = probes.weight_snapshot(model.encoder)
    found = {"movement": {}, "reliance": {}}
    stacked = {}  # each test / validation set stacked once: batches are slices
    # the runner also scores every task's validation set after each task (R_val) when the
    # stream has them (tasks.n_val > 0): the same work here
    splits = ("test", "val") if all(t.val is not None for t in stream) else ("test",)

    def score(task, split: str) -> float:
        if (task.name, split) not in stacked:
            data = task.test if split == "test" else task.val
            items = [data[i] for i in range(len(data))]
            stacked[task.name, split] = (torch.stack([d["image"] for d in items]),
                                         torch.stack([torch.as_tensor(d["label"]) for d in items]))
        x, y = stacked[task.name, split]
        strategy.activate(task)
        scorer = TaskScorer(task, stream)
        nullctx = torch.autocast("cpu", enabled=False)
        for i in range(0, len(x), cfg.train.eval_batch_size):
            scorer.update(answer(model, task, x[i:i + cfg.train.eval_batch_size], nullctx),
                          y[i:i + cfg.train.eval_batch_size])
        return scorer.result()[task.metric]

    def evaluate() -> dict[str, list[float]]:
        model.eval()
        with torch.inference_mode():
            return {split: [score(task, split) for task in stream] for split in splits}

    def write(rows: dict) -> None:
        for split, name in (("test", "matrix.csv"), ("val", "matrix_val.csv"))[:len(splits)]:
            df = pd.DataFrame.from_dict({k: v[split] for k, v in rows.items()}, orient="index",
                                        columns=[t.name for t in stream])
            df.to_csv(out_dir / name, float_format="%.6g")

    timing = {"train": 0.0, "eval": 0.0, "first_step": None}
    loop_start = time.perf_counter()
    start = time.perf_counter()
    rows = {"init": evaluate()}
    timing["eval"] += time.perf_counter() - start
    write(rows)
    def first_step() -> None:
        if timing["first_step"] is None:
            timing["first_step"] = time.time() - spawn

    for t, task in enumerate(stream):
        seed_all(cfg.seed * 1000 + t)
        start = time.perf_counter()
        task_start = probes.weight_snapshot(model.encoder)
        begin_task(cfg, model, strategy, t, task)
        plain_steps(cfg, model, strategy, t, task, first_step)
        strategy.after_task(t, task)
        timing["train"] += time.perf_counter() - start
        start = time.perf_counter()
        rows[f"after_{task.name}"] = evaluate()
        timing["eval"] += time.perf_counter() - start
        moved, relied = probes.row_probes(model, strategy, stream, task, reference, task_start,
                                          cfg.train.eval_batch_size)
        found["movement"][f"after_{task.name}"] = moved
        if relied is not None:
            found["reliance"][f"after_{task.name}"] = relied
        (out_dir / "probes.json").write_text(json.dumps(found))
        write(rows)
    timing["loop"] = time.perf_counter() - loop_start
    timing["fingerprint"] = fingerprint(model.state_dict())
    return timing


# --------------------------------------------------------------------------- Lightning's floor
def loop_floor(name: str, rounds: int, steps: int) -> dict:
    """The cost of Lightning's loop around a step, measured in one process: the first task of
    workload ``name``, ``steps`` steps through the runner's Trainer and LightningModule
    (:func:`cl_bench.training.fit_task`: a new Trainer, its fit loop, ``LitTask``'s manual
    optimisation, the progress callback) and by hand (:func:`plain_steps`), alternately,
    ``rounds`` times each, every run from the same weights and seed. Both must end with
    bit-identical weights. Returns milliseconds per step (medians; a Trainer's set-up and
    tear-down, ~5 ms per fit, included) and their difference."""
    import copy

    from cl_bench.cli import quiet_libraries
    from cl_bench.training import fit_task

    quiet_libraries()
    cfg, model, stream, strategy = setup(WORKLOADS[name] + COMMON + [f"train.max_steps={steps}"])
    task = stream[0]
    begin_task(cfg, model, strategy, 0, task)
    start_state = copy.deepcopy(model.state_dict())
    ms = {"plain": [], "lightning": []}
    prints = {}
    for r in range(rounds):
        order = ("plain", "lightning") if r % 2 == 0 else ("lightning", "plain")
        for who in order:
            model.load_state_dict(start_state)
            seed_all(cfg.seed)
            # a new run directory per fit: a mid-task checkpoint left by the last one (brain_50
            # writes them) would otherwise be continued
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                if who == "plain":
                    plain_steps(cfg, model, strategy, 0, task)
                else:
                    fit_task(cfg, Path(tmp), model, strategy, task, 0, len(stream), None,
                             "32-true")
                ms[who].append((time.perf_counter() - start) / steps * 1000)
            prints[who] = fingerprint(model.state_dict())
        if prints["plain"] != prints["lightning"]:
            sys.exit(f"bench_overhead: {name}: the Trainer and the hand-written steps ended "
                     "with different weights; no floor reported")
    plain, lit = statistics.median(ms["plain"]), statistics.median(ms["lightning"])
    return {"steps": steps, "rounds": rounds, "plain_ms_per_step": plain,
            "lightning_ms_per_step": lit, "difference_ms_per_step": lit - plain,
            "ratio": lit / plain, "plain_all": ms["plain"], "lightning_all": ms["lightning"]}


# --------------------------------------------------------------------------- the harness
#: another checkout to run clbench from (--clbench-src: a "before" measurement)
CLBENCH_SRC: Path | None = None


def run_clbench(overrides: list[str], tmp: Path) -> dict:
    """Run ``clbench <overrides>`` as a fresh process in ``tmp``; its times (s, the fields of
    :data:`FIELDS`), weights fingerprint, ``timing.json`` and R."""
    import pandas as pd
    import torch

    env = dict(os.environ)
    if CLBENCH_SRC is not None:
        env["PYTHONPATH"] = str(CLBENCH_SRC)
    spawn = time.time()
    proc = subprocess.run([sys.executable, "-m", "cl_bench.cli", *overrides,
                           f"results_dir={tmp}", "hydra.run.dir=" + str(tmp / "run")],
                          cwd=tmp, capture_output=True, text=True, env=env)
    process = time.time() - spawn
    if proc.returncode != 0:
        sys.exit(f"bench_overhead: clbench failed:\n{proc.stderr[-3000:]}")
    run = tmp / "run"
    timing = json.loads((run / "timing.json").read_text())
    train = sum(v["train_s"] for v in timing["tasks"].values())
    evals = timing["init_eval_s"] + sum(v["eval_s"] for v in timing["tasks"].values())
    state = torch.load(run / "checkpoints" / "state.pt", map_location="cpu", weights_only=False)
    # total_s counts from the build since timing.json has data_s / build_s; the loop starts after
    loop = timing["total_s"] - timing.get("data_s", 0.0) - timing.get("build_s", 0.0)
    return {"process": process, "loop": loop, "train+eval": train + evals,
            "eval": evals,
            "start->step": timing.get("first_step_unix", float("nan")) - spawn,  # older runners: none
            "fingerprint": fingerprint(state["model"]), "timing": timing,
            "R": pd.read_csv(run / "matrix.csv", index_col=0), "R_val": _read_val(run),
            "reliance": _read_reliance(run)}


def _read_val(folder: Path):
    """``matrix_val.csv`` of ``folder`` (R on the validation sets), or None without one."""
    import pandas as pd

    path = folder / "matrix_val.csv"
    return pd.read_csv(path, index_col=0) if path.is_file() else None


def _read_reliance(folder: Path) -> list[float]:
    """Every Dice of ``probes.json``'s reliance probe in ``folder``, in a fixed order ([] without
    one)."""
    path = folder / "probes.json"
    found = json.loads(path.read_text()).get("reliance", {}) if path.is_file() else {}
    return [d for row in sorted(found) for _, d in sorted(found[row]["dice"].items())]


def _run_plain(overrides: list[str], tmp: Path) -> dict:
    import pandas as pd

    spawn = time.time()
    out = tmp / "plain.json"
    proc = subprocess.run([sys.executable, __file__, "--plain", json.dumps(overrides),
                           "--out", str(out), "--spawn", repr(spawn)],
                          cwd=tmp, capture_output=True, text=True)
    process = time.time() - spawn
    if proc.returncode != 0:
        sys.exit(f"bench_overhead: the plain loop failed:\n{proc.stderr[-3000:]}")
    t = json.loads(out.read_text())
    return {"process": process, "loop": t["loop"], "train+eval": t["train"] + t["eval"],
            "eval": t["eval"], "start->step": t["first_step"], "fingerprint": t["fingerprint"],
            "R": pd.read_csv(tmp / "matrix.csv", index_col=0), "R_val": _read_val(tmp),
            "reliance": _read_reliance(tmp)}


def bench(name: str, rounds: int) -> dict:
    """``rounds`` alternating clbench / plain runs of workload ``name``; checks equal work."""
    overrides = WORKLOADS[name] + COMMON
    times = {"clbench": {f: [] for f in FIELDS}, "plain": {f: [] for f in FIELDS}}
    for r in range(rounds):
        got = {}
        for who, fn in (("plain", _run_plain), ("clbench", run_clbench)):
            with tempfile.TemporaryDirectory() as tmp:
                got[who] = fn(overrides, Path(tmp))
            for f in FIELDS:
                times[who][f].append(got[who][f])
        same_w = got["plain"]["fingerprint"] == got["clbench"]["fingerprint"]
        diff = float((got["plain"]["R"] - got["clbench"]["R"]).abs().to_numpy().max())
        vals = got["plain"]["R_val"], got["clbench"]["R_val"]
        same_val = (vals[0] is None and vals[1] is None) or (
            vals[0] is not None and vals[1] is not None
            and float((vals[0] - vals[1]).abs().to_numpy().max()) <= 1e-6)
        rel = got["plain"]["reliance"], got["clbench"]["reliance"]
        same_probe = len(rel[0]) == len(rel[1]) and all(
            abs(a - b) <= 1e-6 or (a != a and b != b) for a, b in zip(*rel))  # NaN: NaN
        if not same_w or diff > 1e-6 or not same_val or not same_probe:
            sys.exit(f"bench_overhead: {name}: clbench and the plain loop did different work "
                     f"(weights equal: {same_w}, max |R difference| {diff:.3g}, R_val equal: "
                     f"{same_val}, reliance probe equal: {same_probe}); no ratio reported")
        print(f"{name} round {r + 1}/{rounds}: " + ", ".join(
            f"{f} {got['clbench'][f]:.2f}/{got['plain'][f]:.2f}" for f in FIELDS)
            + " s (clbench/plain), same weights, R, R_val and probes", flush=True)
    out = {}
    for f in FIELDS:
        c, p = times["clbench"][f], times["plain"][f]
        out[f] = {"clbench_min": min(c), "clbench_median": statistics.median(c),
                  "plain_min": min(p), "plain_median": statistics.median(p),
                  "ratio_median": statistics.median(c) / statistics.median(p),
                  "difference_median_s": statistics.median(c) - statistics.median(p)}
    return out


def table(results: dict) -> str:
    """Markdown table of :func:`bench` results per workload."""
    lines = ["| workload | time | plain min / median (s) | clbench min / median (s) | ratio (medians) |",
             "|---|---|---|---|---|"]
    for name, res in results.items():
        for f, v in res.items():
            ratio = (f"+{v['difference_median_s']:.2f} s" if f == "start->step"
                     else f"{v['ratio_median']:.2f}×")
            lines.append(f"| {name} | {f} | {v['plain_min']:.2f} / {v['plain_median']:.2f} | "
                         f"{v['clbench_min']:.2f} / {v['clbench_median']:.2f} | {ratio} |")
    return "\n".join(lines)


def floor_table(floors: dict) -> str:
    """Markdown table of :func:`loop_floor` results per workload."""
    lines = ["| workload | steps x rounds | by hand (ms/step) | runner's Trainer (ms/step) | "
             "difference (ms/step) | ratio |", "|---|---|---:|---:|---:|---:|"]
    for name, f in floors.items():
        lines.append(f"| {name} | {f['steps']} x {f['rounds']} | {f['plain_ms_per_step']:.2f} | "
                     f"{f['lightning_ms_per_step']:.2f} | {f['difference_ms_per_step']:.2f} | "
                     f"{f['ratio']:.3f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--extra", nargs="*", default=[],
                   help="more overrides for both sides (e.g. train.checkpoint_every_n_epochs=0)")
    p.add_argument("--clbench-src", type=Path,
                   help="run clbench from this checkout (e.g. a git worktree of an older commit)")
    p.add_argument("--floor", type=int, metavar="STEPS", default=0,
                   help="also measure Lightning's loop around the step in one process: STEPS "
                        "steps of each workload's first task through the runner's Trainer and "
                        "by hand, --rounds times each (loop_floor)")
    p.add_argument("--plain", help=argparse.SUPPRESS)  # internal: run the plain loop
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--spawn", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain is not None:
        out_dir = args.out.parent
        timing = plain_loop(json.loads(args.plain), out_dir, args.spawn)
        args.out.write_text(json.dumps(timing))
        return
    os.environ.setdefault("MPLBACKEND", "Agg")
    global CLBENCH_SRC
    CLBENCH_SRC = args.clbench_src.resolve() if args.clbench_src else None
    COMMON.extend(args.extra)
    results = {name: bench(name, args.rounds) for name in args.workloads}
    text = table(results)
    from cl_bench.hardware import cpu_name

    floors = {}
    if args.floor:
        floors = {name: loop_floor(name, args.rounds, args.floor) for name in args.workloads}
        text += "\n\n" + floor_table(floors)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rounds": args.rounds, "results": results,
                                         "loop_floor": floors, "cpu": cpu_name(),
                                         "command": " ".join(sys.argv)}, indent=2,
                                        default=float) + "\n")


if __name__ == "__main__":
    main()
