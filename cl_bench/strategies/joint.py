"""Joint training on every task so far: the upper bound of a stream.

While training task t, each step adds one minibatch of every earlier task, drawn uniformly from
that task's *whole* training set and sent through its own head and loss::

    L = loss_t(current batch) + sum_{j<t} loss_j(a batch of task j)

so after task t the model has been trained on the union of tasks 0..t with every task weighted
equally (multi-task learning; the "joint"/"offline" upper bound of van de Ven et al. 2022,
arXiv 1904.07734, and of the R-matrix protocol of Lopez-Paz & Ranzato 2017, arXiv 1706.08840).

Deviation: the usual upper bound retrains from scratch on the union after each task; ours keeps
training the same model for ``train.max_steps`` per task, which is cheaper and, over the stream,
sees every earlier task at least as often as the task itself.
"""

from __future__ import annotations

import torch

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

    def __init__(self, batch_size: int | None = None, lr: float = 1e-3, head_lr: float = 3e-3,
                 weight_decay: float = 0.0):
        if batch_size is not None and batch_size <= 0:  # named as this strategy's key, not ER's
            from cl_bench.errors import ConfigError
            raise ConfigError(f"strategy.batch_size: expected a positive int, got {batch_size}")
        super().__init__(buffer_size=1, replay_batch_size=batch_size, alpha=1.0, lr=lr,
                         head_lr=head_lr, weight_decay=weight_decay)

    def after_task(self, t: int, task) -> None:
        """Nothing to store: every earlier task's data stays available."""

    def replay_samples(self, t: int, n: int) -> list[tuple[int, int]]:
        out = []
        for j in range(t):
            size = len(self.stream[j].train)
            k = min(self.replay_batch_size or n, size)
            out += [(j, i) for i in torch.randint(size, (k,)).tolist()]
        return out
