"""Sequential linear probing: frozen backbone, only the current task's head trains.

For segmentation the "probe" is the task's decoder. Old tasks' heads never change and the
backbone is frozen, so BWT is exactly 0 by construction. The "sequential LP" baseline of the
brain-MRI foundation-model study (arXiv 2602.23533).
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
