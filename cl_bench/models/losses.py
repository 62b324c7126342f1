"""The task losses, one per task kind.

Segmentation uses MONAI's ``DiceCELoss`` (softmax, one-hot targets, Dice over the foreground
classes only since tumours fill ~2 % of a volume; Milletari et al. 2016, arXiv 1606.04797 for
the Dice loss), optionally with median-frequency class weights
(``train.class_weights=median_frequency``: ``w_c = median_k f_k / f_c``, f the classes' voxel
frequencies in the task's training labels; Eigen & Fergus 2015, arXiv 1411.4734), given to
MONAI's ``weight`` (the cross-entropy over every class, the Dice over the foreground); regression
uses the mean squared error on the normalised target ``(y - task.target_mean) / task.target_std``;
classification the cross-entropy; a class-incremental segmentation step the per-class binary
cross-entropy of STAR (Chen et al., NeurIPS 2023): a sigmoid per foreground class, the target of
class c is ``label == c`` (so old and future classes, labelled background in the step's data, are
pushed to 0: the background shift that makes plain fine-tuning forget), summed over classes and
averaged over the pixels that are not :data:`~cl_bench.data.base.IGNORE_INDEX`.

This module imports neither Lightning nor the strategies: strategies (ER, EWC, STAR) and the
training loop (:mod:`cl_bench.training`) both read their losses from here.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from cl_bench.data.base import CISS, IGNORE_INDEX, Task
from cl_bench.errors import DataError


class TaskLoss(nn.Module):
    """Loss of a task on the model's raw output.

    Shapes:
        segmentation: ``out`` ``(B, K, *spatial)`` logits, ``label`` ``(B, 1, *spatial)`` int;
        regression: ``out`` ``(B,)`` normalised prediction, ``label`` ``(B,)`` native units;
        classification: ``out`` ``(B, K)`` logits, ``label`` ``(B,)`` class indices;
        class-incremental segmentation: ``out`` ``(B, K, *spatial)`` per-class logits (channel k
        = class ``task.stream_classes[k]``; inactive channels at the masked logit), ``label``
        ``(B, 1, *spatial)`` global class ids.
    """

    def __init__(self, task: Task, class_weights: str = "none"):
        super().__init__()
        self.task = task
        weight = (median_frequency_weights(task) if class_weights == "median_frequency"
                  and task.kind == "segmentation" else None)
        self.dice_ce = (DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                                   weight=weight)
                        if task.kind == "segmentation" else None)

    def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if self.dice_ce is not None:
            return self.dice_ce(out.float(), label)  # bf16 logits: the loss in fp32
        if self.task.kind == CISS:
            return ciss_bce(out, label, self.task.stream_classes, self.task.pos_weight)
        if self.task.kind == "classification":
            return nn.functional.cross_entropy(out.float(), label.long())
        target = (label.float() - self.task.target_mean) / self.task.target_std
        return nn.functional.mse_loss(out.float(), target)


def median_frequency_weights(task: Task) -> torch.Tensor:
    """Median-frequency class weights (Eigen & Fergus 2015, arXiv 1411.4734) of a segmentation
    task: ``(K,)`` float, ``w_c = median_k f_k / f_c``, f_c the share of class c among the
    voxels of the task's training labels (a class absent from them gets weight 1).

    Raises:
        DataError: a label outside ``[0, task.num_classes)``.
    """
    k = task.num_classes
    counts = torch.zeros(k, dtype=torch.float64)
    labels = getattr(task.train, "labels", None)
    chunks = ([labels] if isinstance(labels, torch.Tensor)
              else (task.train[i]["label"] for i in range(len(task.train))))
    for lab in chunks:
        lab = torch.as_tensor(lab).flatten().long()
        if len(lab) and (lab.min() < 0 or lab.max() >= k):
            raise DataError(f"task {task.name!r}: a training label outside [0, {k})")
        counts += torch.bincount(lab, minlength=k).double()
    freq = counts / counts.sum()
    present = freq > 0
    weight = torch.ones(k, dtype=torch.float64)
    weight[present] = freq[present].median() / freq[present]
    return weight.float()


def bce_per_class(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                  pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits averaged over positions, per class.

    Args:
        logits, target: ``(N, C, *any)``; valid: ``None`` or a 0/1 mask broadcastable to them
            (positions outside it are left out); pos_weight: weight of positive targets.

    Returns:
        ``(C,)``.
    """
    pw = None
    if pos_weight is not None:
        pw = torch.full((logits.shape[1],) + (1,) * (logits.dim() - 2), float(pos_weight),
                        device=logits.device)
    bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                                         reduction="none", pos_weight=pw)
    dims = [d for d in range(bce.dim()) if d != 1]
    if valid is None:
        return bce.mean(dim=dims)
    v = valid.float().expand_as(bce)
    return (bce * v).sum(dim=dims) / v.sum(dim=dims).clamp_min(1)


def ciss_bce(logits: torch.Tensor, label: torch.Tensor, class_ids: list[int],
             pos_weight: float = 1.0) -> torch.Tensor:
    """STAR's per-class BCE (0-d): ``sum_c mean_pixels BCE(logit_c, label == c)``.

    Args:
        logits: ``(B, K, *spatial)``; label: ``(B, 1, *spatial)`` global ids (255 ignored);
        class_ids: the class of each channel (K ids); pos_weight: weight of positive pixels
            (STAR: 4 on VOC's 21 classes; 1 = plain BCE).
    """
    ids = torch.as_tensor(class_ids, device=label.device).view(1, -1, *[1] * (label.dim() - 2))
    return bce_per_class(logits, label == ids, label != IGNORE_INDEX, pos_weight).sum()
