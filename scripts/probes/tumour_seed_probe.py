"""Why does a seed fail to learn the tumour's core and rim? Training curves on validation.

Trains the first task of the stream (``tumour_seg`` of ``brain_seg_age``) exactly as the runner
does (same seeds, same batches: the plain loop of ``scripts/bench_overhead.py``, whose weights
equal the runner's bit for bit), and every ``--every`` steps records the loss split into its Dice
and cross-entropy parts and the per-label Dice (1 edema, 2 core, 3 rim) on the task's
*validation* subjects (``tasks.n_val``) and on its first 8 training subjects. The test subjects
are never read. Candidate remedies, applied as they would be to every strategy:

* ``--batch-dice``: MONAI ``DiceCELoss(batch=True)``, the Dice of each class over the whole
  batch rather than per volume (nnU-Net's "batch Dice", Isensee et al. 2021, arXiv 1809.10486);
* ``--warmup N``: a linear learning-rate warm-up over the first N steps (every parameter group);
* ``--class-weights``: median-frequency class weights (Eigen & Fergus 2015, arXiv 1411.4734:
  ``w_c = median_k f_k / f_c`` from the training labels' voxel frequencies f), given to MONAI's
  ``DiceCELoss(weight=...)`` (its cross-entropy term, and its Dice term over the foreground).

    python scripts/probes/tumour_seed_probe.py --seed 0 strategy=lora --out probe.json

Writes one JSON: the settings, the curves and the final validation Dice per label.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="default: train.max_steps")
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-dice", action="store_true")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--class-weights", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. strategy=lora")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from monai.losses import DiceCELoss
    from torch.utils.data import DataLoader

    from cl_bench.evaluation import answer
    from cl_bench.hardware import cpu_name
    from cl_bench.kinds import TaskScorer, median_frequency_weights
    from cl_bench.runner import build_run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"seed={args.seed}",
                                           f"hardware.num_threads={args.threads}",
                                           *args.overrides])
    torch.use_deterministic_algorithms(True, warn_only=True)

    def seed_all(s: int) -> None:
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)

    model, strategy, stream, _ = build_run(cfg)  # as the runner builds it
    task, t = stream[0], 0
    if task.val is None:
        sys.exit("tasks.n_val must be > 0: the probe reads validation subjects only")
    train8 = torch.utils.data.Subset(task.train, range(min(8, len(task.train))))

    def dice(dataset) -> list[float]:
        model.eval()
        strategy.activate(task)
        scorer = TaskScorer(task)
        with torch.inference_mode():
            for i in range(0, len(dataset), 4):
                items = [dataset[j] for j in range(i, min(i + 4, len(dataset)))]
                x = torch.stack([d["image"] for d in items])
                y = torch.stack([d["label"] for d in items])
                scorer.update(answer(model, task, x, torch.autocast("cpu", enabled=False)), y)
        model.train()
        r = scorer.result()
        return [round(r[f"dice_{k}"], 4) for k in range(1, task.num_classes)]

    seed_all(cfg.seed * 1000 + t)
    model.begin_task(task)
    strategy.before_task(t, task)
    loader = DataLoader(task.train, batch_size=cfg.train.batch_size, shuffle=True)
    weight = None
    if args.class_weights:
        weight = median_frequency_weights(task)  # what train.class_weights uses
        print("class weights", [round(float(w), 3) for w in weight], flush=True)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                         batch=args.batch_dice, weight=weight)
    opt = torch.optim.AdamW(strategy.param_groups(task), weight_decay=strategy.weight_decay)
    warm = args.warmup
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    steps = args.steps or cfg.train.max_steps
    curves, window, step, start = [], [], 0, time.time()
    model.train()
    strategy.activate(task)
    while step < steps:
        for batch in loader:
            out = model(batch["image"], task.name)
            loss = dice_ce(out, batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                ce = float(dice_ce.ce(out, batch["label"]))
            window.append((float(loss.detach()), ce))
            step += 1
            if step % args.every == 0 or step == steps:
                loss_mean, ce_mean = np.mean(window, axis=0)
                curves.append({"step": step, "loss": round(float(loss_mean), 4),
                               "ce": round(float(ce_mean), 4),
                               "dice_loss": round(float(loss_mean - ce_mean), 4),
                               "val_dice": dice(task.val),
                               "train8_dice": dice(train8), "s": round(time.time() - start)})
                window = []
                print(json.dumps(curves[-1]), flush=True)
            if step >= steps:
                break
    final = curves[-1]["val_dice"]
    out = {"seed": args.seed, "overrides": args.overrides, "batch_dice": args.batch_dice,
           "warmup": args.warmup, "class_weights": None if weight is None else weight.tolist(),
           "steps": steps, "curves": curves, "val_dice_labels": final,
           "val_dice": float(np.nanmean(final)), "cpu": cpu_name()}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
