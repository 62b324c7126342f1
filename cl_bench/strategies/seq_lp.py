"""Sequential linear probing: frozen backbone, only the current task's head trains.

A linear probe in the field's sense (MAE, He et al. 2022, arXiv 2111.06377): the age head is a
linear layer on the standardised global average of the foundation model's final representation
(on the default whole Swin UNETR, the shared decoder's features;
``backbone.regression_stages``). For segmentation, on the default whole Swin UNETR
(``backbone.decoder=shared``) the head is a 1x1x1 output layer on the frozen pretrained
decoder's features: a linear per-voxel probe of the foundation model; with
``backbone.decoder=unetr`` (an ablation) it is a 5.3 M-parameter decoder trained from scratch,
which is not linear. Old tasks' heads never change and the backbone is frozen, so BWT is exactly
0 by construction. The "sequential LP" baseline of the brain-MRI foundation-model study
(arXiv 2602.23533).
"""

from __future__ import annotations

from cl_bench.data.base import Task
from cl_bench.strategies.base import Strategy


class SeqLP(Strategy):
    """Frozen backbone, current head trainable (see module docstring).

    Args:
        lr: AdamW learning rate; weight_decay: AdamW weight decay.
    """

    name = "seq_lp"

    def before_task(self, t: int, task: Task) -> None:
        self.freeze_all_but(self.model.heads[task.name])

    def frozen_backbone(self, task: Task) -> bool:
        """The backbone never trains: its outputs are computed once per training sample."""
        return True
