"""Sequential full fine-tuning: the lower bound of continual learning.

The whole shared backbone and the current task's head train on each task in turn; earlier heads
stay as they were, so old tasks are forgotten through the drifting backbone. The "sequential FT"
baseline of the brain-MRI foundation-model study (arXiv 2602.23533).
"""

from __future__ import annotations

from cl_bench.data.base import Task
from cl_bench.strategies.base import Strategy


class SeqFT(Strategy):
    """Backbone + current head trainable (see module docstring).

    Args:
        lr: AdamW learning rate; weight_decay: AdamW weight decay.
    """

    name = "seq_ft"

    def before_task(self, t: int, task: Task) -> None:
        self.freeze_all_but(self.model.backbone, self.model.heads[task.name])
