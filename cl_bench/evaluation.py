"""Evaluation of one task: Dice (segmentation) and MAE in native units (regression).

A plain ``torch.inference_mode`` loop (no Lightning overhead per call; the R matrix needs
O(T^2) of these).

* Dice: MONAI ``DiceMetric`` (Dice 1945; as used for BraTS, Menze et al. 2015) on argmax
  one-hot predictions, background excluded, subjects whose ground truth lacks a label are ignored
  for that label; the task's value is the mean over foreground labels of the mean over subjects.
* MAE: torchmetrics ``MeanAbsoluteError`` in the target's native units (years for brain age).
"""

from __future__ import annotations

import torch
from monai.metrics import DiceMetric
from torch.utils.data import DataLoader
from torchmetrics.regression import MeanAbsoluteError

from cl_bench.data.base import Task
from cl_bench.strategies.base import Strategy


@torch.inference_mode()
def evaluate_task(model: torch.nn.Module, strategy: Strategy, task: Task,
                  batch_size: int = 4, device: str | torch.device = "cpu",
                  bf16: bool = False) -> dict[str, float]:
    """Score ``model`` on ``task.test`` with the task's adapter/head active.

    Args:
        model, strategy, task: what to evaluate; batch_size: test batch size;
        device: where to run; bf16: bfloat16 autocast (``hardware.precision=bf16-mixed``).

    Returns:
        ``{task.metric: value, ...}``: for segmentation also ``dice_<label>`` per foreground
        label; for regression also ``mae_normalised`` (MAE divided by ``task.target_std``).
    """
    was_training = model.training
    model.eval()
    strategy.activate(task)
    model.to(device)
    loader = DataLoader(task.test, batch_size=batch_size, shuffle=False)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    result: dict[str, float] = {}
    if task.kind == "segmentation":
        dice = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
        for batch in loader:
            with autocast:
                logits = model(batch["image"].to(device), task.name).float().cpu()
            k = logits.shape[1]
            pred = torch.nn.functional.one_hot(logits.argmax(1), k).movedim(-1, 1)
            gt = torch.nn.functional.one_hot(batch["label"][:, 0].long(), k).movedim(-1, 1)
            dice(pred, gt)
        per_label = dice.aggregate()  # (K-1,), NaN where no subject had the label
        valid = per_label[~torch.isnan(per_label)]
        result["dice"] = float(valid.mean()) if len(valid) else float("nan")
        for i, v in enumerate(per_label.tolist(), start=1):
            result[f"dice_{i}"] = v
    else:
        mae = MeanAbsoluteError()
        for batch in loader:
            with autocast:
                out = model(batch["image"].to(device), task.name).float().cpu()
            pred = out * task.target_std + task.target_mean
            mae.update(pred, batch["label"].float())
        result["mae"] = float(mae.compute())
        result["mae_normalised"] = result["mae"] / task.target_std
    model.train(was_training)
    return result
