"""Sequential full fine-tuning: the lower bound of continual learning.

The whole shared backbone and the current task's head train on each task in turn; earlier heads
stay as they were, so old tasks are forgotten through the drifting backbone. The "sequential FT"
baseline of the brain-MRI foundation-model study (arXiv 2602.23533). Every backbone parameter
receives gradient in every task only if the task's head reads the last stage: the Swin decoder
reads all five, and the default age head the final one (an earlier age head read stages 0-1, so
only 1.3 % of the backbone trained on age); each run's ``probes.json`` gives every stage's
movement per task (``rel_change_task``).
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
