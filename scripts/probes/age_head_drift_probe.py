"""Does the age head train when the backbone moves? Training loss of brain_age alone.

Trains the default stream's ``brain_age`` task from the shipped backbone with ``strategy``
(seq_ft: every backbone weight moves; lora; seq_lp) for ``--steps`` steps, as the runner does
(calibration, then AdamW at the strategy's rates, batch 2), and prints the normalised MSE every 10
steps (the mean predictor's is ~1) and the validation MAE at the end (years; never test). It
compares the head's normalisations (``backbone.regression_norm``): ``batch`` (running statistics,
calibrated then tracked) and ``layer`` (per subject, no statistics).

    python scripts/probes/age_head_drift_probe.py --steps 150 strategy=seq_ft backbone.regression_norm=layer
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from torch.utils.data import DataLoader

    from cl_bench.evaluation import evaluate_task
    from cl_bench.models.losses import TaskLoss
    from cl_bench.runner import build_run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"seed={a.seed}", f"hardware.num_threads={a.threads}",
                                           *a.overrides])
    # as the runner builds it (both tasks' heads: since issue 41 the age head's initial
    # weights are the runner's, not those of a stream of brain_age alone)
    model, strategy, stream, _ = build_run(cfg)
    task = stream[1]  # brain_age alone is trained
    model.begin_task(task)
    strategy.before_task(1, task)  # its index in the stream
    model.calibrate_head(task, 4, track=not strategy.frozen_backbone(task))
    opt = torch.optim.AdamW(strategy.param_groups(task), weight_decay=strategy.weight_decay)
    loss_fn = TaskLoss(task)
    loader = DataLoader(task.train, batch_size=2, shuffle=True)
    model.train()
    strategy.activate(task)
    step, losses, curve = 0, [], []
    while step < a.steps:
        for batch in loader:
            loss = loss_fn(model(batch["image"], task.name), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 10 == 0:
                curve.append(round(float(np.mean(losses[-10:])), 3))
            if step >= a.steps:
                break
    val = evaluate_task(model, strategy, task, 4, split="val")
    print(json.dumps({"overrides": a.overrides, "loss_every_10": curve,
                      "val_mae": round(val["mae"], 2),
                      "val_mae_mean_predictor": round(val["mae_mean_predictor"], 2)}))


if __name__ == "__main__":
    main()
