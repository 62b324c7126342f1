#!/usr/bin/env python
"""Model-free checks of the embedded brain stream: what simple, non-deep predictors achieve.

They bound the tasks from below, as the from-scratch networks (``strategy=scratch``) bound them
from above, and they are measured without any model of the project (the rule for a generator
change: justify it by a check like these, not by a model's score):

* ``brain_age``: the MAE of the mean predictor (the training ages' mean) and of a ridge regression
  (sklearn ``RidgeCV``) on four intensity-histogram fractions of the brain (the shares of brain
  voxels below -1.5, -1, -0.5 and 0 SD), fitted on the training subjects;
* ``tumour_seg``: a per-voxel intensity lookup: brain voxels binned by intensity (64 quantile bins
  of the training voxels), each bin predicts the label of highest likelihood P(bin | label) in
  the training subjects (equal priors: with the labels' true priors every bin is background,
  Dice 0); Dice as the runner scores it (MONAI ``DiceMetric``, mean over labels 1-3).

    python scripts/brain_data_checks.py                    # default stream (data seed 0)
    python scripts/brain_data_checks.py --seed 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric
from sklearn.linear_model import RidgeCV

from cl_bench.data.brain_synth import make_brain_seg_age

EDGES = (-1.5, -1.0, -0.5, 0.0)


def histogram_features(images: np.ndarray) -> np.ndarray:
    """``(N, 1, S, S, S)`` z-scored volumes (background 0) -> ``(N, 4)`` shares of brain voxels
    below each of :data:`EDGES`."""
    out = []
    for v in images[:, 0]:
        brain = v[v != 0]
        out.append([float((brain < e).mean()) for e in EDGES])
    return np.asarray(out)


def age_checks(task) -> dict:
    """Mean-predictor and histogram-ridge MAE (years) on the test subjects."""
    ytr, yte = np.asarray(task.train.labels), np.asarray(task.test.labels)
    ridge = RidgeCV(alphas=np.logspace(-4, 2, 13)).fit(histogram_features(
        np.asarray(task.train.images)), ytr)
    pred = ridge.predict(histogram_features(np.asarray(task.test.images)))
    return {"mean_predictor_mae": float(np.abs(yte - ytr.mean()).mean()),
            "histogram_ridge_mae": float(np.abs(yte - pred).mean()),
            "age_sd_train": float(ytr.std(ddof=1)) if len(ytr) > 1 else float("nan")}


def dice(pred: np.ndarray, label: np.ndarray, k: int) -> tuple[float, list[float]]:
    """Dice as :mod:`cl_bench.evaluation` computes it: ``(mean, per label)``."""
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    p = torch.nn.functional.one_hot(torch.as_tensor(pred).long(), k).movedim(-1, 1)
    t = torch.nn.functional.one_hot(torch.as_tensor(label).long(), k).movedim(-1, 1)
    metric(p, t)
    per = metric.aggregate()
    valid = per[~torch.isnan(per)]
    return float(valid.mean()), [float(x) for x in per]


def intensity_lookup_dice(task, bins: int = 64) -> dict:
    """Dice of the per-voxel intensity lookup (module docstring)."""
    xtr, ltr = np.asarray(task.train.images)[:, 0], np.asarray(task.train.labels)[:, 0]
    xte, lte = np.asarray(task.test.images)[:, 0], np.asarray(task.test.labels)[:, 0]
    brain = xtr != 0
    edges = np.quantile(xtr[brain], np.linspace(0, 1, bins + 1)[1:-1])
    k = task.num_classes
    counts = np.zeros((bins, k))
    np.add.at(counts, (np.digitize(xtr[brain], edges), ltr[brain]), 1)
    lut = (counts / counts.sum(0).clip(min=1)).argmax(1)  # likelihood, equal priors
    pred = np.where(xte != 0, lut[np.digitize(xte, edges)], 0)
    mean, per = dice(pred, lte, k)
    return {"intensity_lookup_dice": mean, "intensity_lookup_dice_per_label": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="data seed (tasks.seed)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=24)
    ap.add_argument("--n-test", type=int, default=16)
    ap.add_argument("--cache-dir", default=os.environ.get(
        "CLBENCH_CACHE", str(Path.home() / ".cache" / "cl_bench")))
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    seg, age = make_brain_seg_age(size=args.size, n_train=args.n_train, n_test=args.n_test,
                                  seed=args.seed, cache_dir=args.cache_dir)
    out = {"stream": {"seed": args.seed, "size": args.size, "n_train": args.n_train,
                      "n_test": args.n_test},
           "brain_age": age_checks(age), "tumour_seg": intensity_lookup_dice(seg)}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
