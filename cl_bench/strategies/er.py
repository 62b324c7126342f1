"""Experience replay with a reservoir buffer.

Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning", arXiv 1902.10486 (ER
with a replay minibatch next to the current one); reservoir sampling from Vitter 1985 (Algorithm
R), as in Riemer et al. 2019 (MER, arXiv 1810.11910). The buffer holds at most ``buffer_size``
training samples of the tasks seen so far, each kept with probability ``buffer_size / n`` over the
``n`` samples seen. While training task t each step adds the loss of a replay minibatch drawn
from the buffer::

    L = task loss(current batch) + alpha * sum_j (n_j / m) * loss_j(replayed samples of task j)

A replayed sample goes through *its own task's* head and loss (Dice + CE, MSE or CE), so replay
works on mixed streams (segmentation then regression) as well as for classification; in a
class-incremental stream every task shares the growing head. Old tasks' heads train on replayed
data too. The replayed samples of all old tasks go through the backbone in one pass when their
images have one shape (each task's head then reads its share), the current batch in its own.

Conventions a reader compares against other libraries: the current batch and the replayed samples
go through the model in *separate* forward passes (not one concatenated batch), so normalisation
layers see them apart; the replay minibatch is drawn uniformly from the buffer at every step
(``replay_batch_size``, default the current batch's size); the buffer policy is reservoir
sampling over the tasks seen, filled at each task's end, its random order derived from the run's
``seed`` and the task index (seeds 0, 1, 2 keep different samples, so the spread over seeds
includes the buffer's).

Deviations: samples enter the buffer at the end of their task (the stream of samples is the
task's training set in a seeded random order), not during its training; the buffer stores
(task, index) references into the stream's in-memory datasets instead of copies (the datasets are
immutable, so this is the same data at a fraction of the memory; ``memory_bytes`` reports what
copies would take).
"""

from __future__ import annotations

import torch

from cl_bench.data.base import Task
from cl_bench.models.feature_cache import take
from cl_bench.models.losses import TaskLoss
from cl_bench.ranges import NonNegativeFloat, PositiveFloat, PositiveInt
from cl_bench.strategies.base import Strategy


class ER(Strategy):
    """Reservoir experience replay (see module docstring).

    Args:
        buffer_size: capacity in samples (> 0), over all tasks.
        replay_batch_size: replayed samples per step (> 0); ``None``: as many as the current
            batch holds (Chaudhry et al.'s choice; keeps 3D replay affordable).
        alpha: weight of the replay loss (>= 0).
        lr, head_lr, weight_decay: optimiser settings.

    Raises:
        ConfigError: a non-positive size or a negative alpha.
    """

    name = "er"
    #: weight each replayed task's loss 1 (joint training) instead of by its share of the batch
    per_task_loss = False

    def __init__(self, buffer_size: PositiveInt = 200, replay_batch_size: PositiveInt | None = None,
                 alpha: NonNegativeFloat = 1.0,
                 lr: PositiveFloat = 1e-3, head_lr: PositiveFloat = 3e-3,
                 weight_decay: NonNegativeFloat = 0.0):
        super().__init__(lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        self.buffer_size = int(buffer_size)
        self.replay_batch_size = None if replay_batch_size is None else int(replay_batch_size)
        self.alpha = float(alpha)
        self.buffer: list[tuple[int, int]] = []  # (task index, sample index in task.train)
        self.n_seen = 0  # samples offered to the reservoir so far
        self.losses: dict[str, TaskLoss] = {}

    def setup(self, model, stream) -> None:
        super().setup(model, stream)
        self.losses = {t.name: TaskLoss(t, self.class_weights) for t in stream}

    def before_task(self, t: int, task: Task) -> None:
        heads = [self.model.heads[s.name] for s in self.stream[:t + 1]]
        self.freeze_all_but(self.model.backbone, *heads)

    def param_groups(self, task: Task) -> list[dict]:
        """Every head trained so far at ``head_lr`` (replay trains old heads), the rest at ``lr``."""
        heads = {id(p) for s in self.stream[:self.stream.index(task) + 1]
                 for p in self.model.heads[s.name].parameters()}
        params = self.trainable_parameters()
        groups = [{"params": [p for p in params if id(p) in heads], "lr": self.head_lr},
                  {"params": [p for p in params if id(p) not in heads], "lr": self.lr}]
        return [g for g in groups if g["params"]]

    def after_task(self, t: int, task: Task) -> None:
        """Offer task ``t``'s training samples to the reservoir (Vitter's Algorithm R)."""
        g = self.generator(t)  # from the run's seed and the task: seeds keep different samples
        for i in torch.randperm(len(task.train), generator=g).tolist():
            self.n_seen += 1
            if len(self.buffer) < self.buffer_size:
                self.buffer.append((t, i))
            else:
                k = int(torch.randint(self.n_seen, (1,), generator=g))
                if k < self.buffer_size:
                    self.buffer[k] = (t, i)

    def replay_samples(self, t: int, n: int) -> list[tuple[int, int]]:
        """The (task, index) pairs replayed at one step of task ``t``: ``n`` uniform draws from
        the buffer (``n`` = the current batch size unless ``replay_batch_size`` is set)."""
        if not self.buffer:
            return []
        pick = torch.randint(len(self.buffer), (min(self.replay_batch_size or n, len(self.buffer)),))
        return [self.buffer[k] for k in pick.tolist()]

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        samples = self.replay_samples(t, len(batch["image"]))
        if not samples or self.alpha == 0:
            return None
        device = batch["image"].device
        groups = sorted({j for j, _ in samples})
        xs, ys = {}, {}
        for j in groups:
            items = [self.stream[j].train[i] for jj, i in samples if jj == j]
            xs[j] = torch.stack([it["image"] for it in items]).to(device)
            ys[j] = torch.stack([it["label"] for it in items]).to(device)
        features = None
        if len(groups) > 1 and len({tuple(x.shape[1:]) for x in xs.values()}) == 1:
            # one backbone pass over every replayed sample, then each task's head on its share
            features = self.model.backbone(torch.cat([xs[j] for j in groups]))
        total, start = torch.zeros((), device=device), 0
        for j in groups:
            task, n = self.stream[j], len(xs[j])
            f = None if features is None else take(features, slice(start, start + n))
            start += n
            weight = 1.0 if self.per_task_loss else n / len(samples)
            total = total + weight * self.losses[task.name](self.model(xs[j], task.name, f), ys[j])
        return self.alpha * total

    def memory_bytes(self) -> int:
        """Bytes the buffer's samples (images + labels) would take as copies."""
        total = 0
        for j, i in self.buffer:
            item = self.stream[j].train[i]
            total += sum(v.numel() * v.element_size() for v in item.values())
        return total

    def state_dict(self) -> dict:
        return {"buffer": [list(b) for b in self.buffer], "n_seen": self.n_seen}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = [tuple(b) for b in state.get("buffer", [])]
        self.n_seen = int(state.get("n_seen", 0))
