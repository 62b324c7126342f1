"""The task losses, one per task kind (the loss factories are rows of
:data:`cl_bench.kinds.KINDS`: :attr:`~cl_bench.kinds.KindSpec.loss`).

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

The loss code lives with the kinds table (:mod:`cl_bench.kinds`, floor 1) and is re-exported
here. This module imports neither Lightning nor the strategies: strategies (ER, EWC, STAR) and
the training loop (:mod:`cl_bench.training`) both read their losses from here.
"""

from __future__ import annotations

import torch
from torch import nn

from cl_bench.data.base import Task
# re-exported: strategies, scripts and tests import the per-kind losses from here
from cl_bench.kinds import (CISSBCE, CrossEntropy, DiceCE, NormalisedMSE,  # noqa: F401
                            bce_per_class, ciss_bce, kind_spec, median_frequency_weights)


class TaskLoss(nn.Module):
    """Loss of a task on the model's raw output.

    Shapes:
        segmentation: ``out`` ``(B, K, *spatial)`` logits, ``label`` ``(B, 1, *spatial)`` int;
        regression: ``out`` ``(B,)`` normalised prediction, ``label`` ``(B,)`` native units;
        classification: ``out`` ``(B, K)`` logits, ``label`` ``(B,)`` class indices;
        class-incremental segmentation: ``out`` ``(B, K, *spatial)`` per-class logits (channel k
        = class ``task.stream_classes[k]``; inactive channels at the masked logit), ``label``
        ``(B, 1, *spatial)`` global class ids.

    Args:
        task: the task; class_weights: ``train.class_weights`` (``"none"`` or
            ``"median_frequency"``; used by segmentation only).

    Raises:
        UnknownKindError: ``task.kind`` is not in :data:`cl_bench.kinds.KINDS`.
        DataError: median-frequency weights of a label outside ``[0, task.num_classes)``.
    """

    def __init__(self, task: Task, class_weights: str = "none"):
        super().__init__()
        self.task = task
        #: the kind's loss module (:attr:`cl_bench.kinds.KindSpec.loss`)
        self.criterion = kind_spec(task.kind).loss(task, class_weights)
        self.register_load_state_dict_pre_hook(_rename_old_keys)

    @property
    def dice_ce(self) -> nn.Module | None:
        """The segmentation loss's MONAI ``DiceCELoss`` (``None`` for other kinds)."""
        return getattr(self.criterion, "dice_ce", None)

    def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The 0-d loss of ``out`` against ``label`` (shapes: see the class docstring)."""
        return self.criterion(out, label)


def _rename_old_keys(module, state_dict, prefix, *args) -> None:
    """A checkpoint written before the kinds table held the segmentation loss's buffers under
    ``dice_ce.``; they are ``criterion.dice_ce.`` now."""
    for key in [k for k in state_dict if k.startswith(prefix + "dice_ce.")]:
        state_dict[prefix + "criterion." + key[len(prefix):]] = state_dict.pop(key)


