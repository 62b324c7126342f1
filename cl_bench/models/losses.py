"""The loss of a task on the model's raw output (:class:`TaskLoss`).

Each kind's loss is a row of :data:`cl_bench.kinds.KINDS` (:attr:`~cl_bench.kinds.KindSpec.loss`);
what each computes and its source are in :mod:`cl_bench.kinds`' module docstring.
This module imports neither Lightning nor the strategies: strategies (ER, EWC) and the training
loop (:mod:`cl_bench.training`) both build their losses here.
"""

from __future__ import annotations

import torch
from torch import nn

from cl_bench.data.base import Task
from cl_bench.kinds import kind_spec


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


