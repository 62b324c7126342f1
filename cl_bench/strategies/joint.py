"""Joint training on every task so far: the upper bound of a stream.

While training task t, each step adds one minibatch of every earlier task, drawn uniformly from
that task's *whole* training set and sent through its own head and loss::

    L = loss_t(current batch) + sum_{j<t} loss_j(a batch of task j)

so after task t the model has been trained on the union of tasks 0..t with every task weighted
equally (multi-task learning; the "joint"/"offline" upper bound of van de Ven et al. 2022,
arXiv 1904.07734, and of the R-matrix protocol of Lopez-Paz & Ranzato 2017, arXiv 1706.08840).

Class-incremental segmentation: a step's data are labelled for its own classes only, so replaying
them as they are would teach "old class = background". There, each training step instead draws
one batch (of the current batch size) from the union of the images of steps 0..t, labelled for
every class of steps 0..t (``SegStepDataset.with_classes``), and that batch's loss replaces the
task loss: joint training on all data seen so far with all its labels (the CISS upper bound of
MiB, arXiv 2002.00718, and STAR).

Deviation: the usual upper bound retrains from scratch on the union after each task; ours keeps
training the same model for ``train.max_steps`` per task, which is cheaper and, over the stream,
sees every earlier task at least as often as the task itself.
"""

from __future__ import annotations

import numpy as np
import torch

from cl_bench.kinds import CISS
from cl_bench.ranges import NonNegativeFloat, PositiveFloat, PositiveInt
from cl_bench.strategies.er import ER


class Joint(ER):
    """Joint training on all tasks so far (see module docstring).

    Args:
        batch_size: samples of each earlier task per step (> 0); ``None``: the current batch size.
        lr, head_lr, weight_decay: optimiser settings.

    Raises:
        ConfigError: a non-positive batch size.
    """

    name = "joint"
    per_task_loss = True

    def __init__(self, batch_size: PositiveInt | None = None, lr: PositiveFloat = 1e-3,
                 head_lr: PositiveFloat = 3e-3, weight_decay: NonNegativeFloat = 0.0):
        # batch_size is checked (as strategy.batch_size, not ER's key) before ER's __init__ runs
        super().__init__(buffer_size=1, replay_batch_size=batch_size, alpha=1.0, lr=lr,
                         head_lr=head_lr, weight_decay=weight_decay)
        self.union = None  # CISS: the fully labelled union of the steps so far

    def before_task(self, t: int, task) -> None:
        super().before_task(t, task)
        self.union = None
        if task.kind == CISS:  # every image of steps 0..t, labelled for every class so far
            steps = self.stream[:t + 1]
            index = np.unique(np.concatenate([s.train.index for s in steps]))
            seen = [c for s in steps for c in s.classes]
            self.union = task.train.with_classes(seen, index)

    def task_loss(self, batch: dict, out: torch.Tensor, t: int, loss_fn) -> torch.Tensor:
        """CISS: the loss of a batch of the fully labelled union (see module docstring)."""
        if self.union is None:
            return super().task_loss(batch, out, t, loss_fn)
        pick = torch.randint(len(self.union), (len(batch["image"]),)).tolist()
        items = [self.union[i] for i in pick]
        device = batch["image"].device
        x = torch.stack([it["image"] for it in items]).to(device)
        y = torch.stack([it["label"] for it in items]).to(device)
        return loss_fn(self.model(x, self.stream[t].name), y)

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        if self.union is not None:
            return None  # CISS: earlier steps are in the union batch of task_loss
        return super().training_loss(batch, out, t)

    def after_task(self, t: int, task) -> None:
        """Nothing to store: every earlier task's data stays available."""

    def replay_samples(self, t: int, n: int) -> list[tuple[int, int]]:
        out = []
        for j in range(t):
            size = len(self.stream[j].train)
            k = min(self.replay_batch_size or n, size)
            out += [(j, i) for i in torch.randint(size, (k,)).tolist()]
        return out
