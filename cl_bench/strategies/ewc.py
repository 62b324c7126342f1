"""Elastic weight consolidation: a quadratic pull towards earlier tasks' weights.

Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks", arXiv
1612.00796; online EWC from Schwarz et al. 2018, "Progress & Compress", arXiv 1805.06370.

After task t the diagonal Fisher information of the shared parameters is estimated on task t's
training data, ``F_t = mean_n (d loss_n / d theta)^2`` (the *empirical* Fisher: per-sample
gradients of the task loss at the observed labels, one sample per backward pass), and the
weights are stored as the anchor ``theta*_t``. While training later tasks::

    L = task loss + lambda/2 * sum_i sum_k F_{i,k} (theta_k - theta*_{i,k})^2

over the stored tasks i (offline EWC), or, with ``online=True``, over one running Fisher
``F = gamma * F + F_t`` anchored at the latest weights.

Conventions a reader compares against other libraries: the penalty carries the paper's factor
lambda/2 (Eq. 3; some libraries drop the 1/2, so their lambda is half of ours); F is the mean of
*per-sample* squared gradients (batch size 1, not the square of a mini-batch's mean gradient); the
``fisher_max_samples`` samples are a random subset of the task's training set, drawn from the run's
``seed`` and the task index (all of them when the set is smaller), so every class of a task
enters F even where the stream stores a task's samples class by class.

Deviations: the empirical rather than the true Fisher (labels sampled from the model), as in most
re-implementations; for segmentation and regression the "log-likelihood" is our task loss
(Dice + CE, MSE). Per-task heads (task-IL) are excluded (no later task trains them).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from cl_bench.data.base import Task
from cl_bench.models.heads import TaskView
from cl_bench.models.losses import TaskLoss
from cl_bench.ranges import NonNegativeFloat, PositiveFloat, PositiveFraction, PositiveInt
from cl_bench.strategies.base import Strategy


class EWC(Strategy):
    """EWC on the shared backbone (and a shared class-IL head).

    Args:
        ewc_lambda: penalty weight lambda (>= 0).
        online: one running Fisher (Schwarz et al. 2018) instead of one per task.
        gamma: decay of the running Fisher in online mode, in (0, 1].
        fisher_max_samples: training samples per task used to estimate F (> 0): a seeded random
            subset (:meth:`fisher_indices`).
        lr, head_lr, weight_decay: optimiser settings.

    Raises:
        ConfigError: a negative lambda, gamma outside (0, 1] or a non-positive sample count.
    """

    name = "ewc"

    def __init__(self, ewc_lambda: NonNegativeFloat = 1000.0, online: bool = False,
                 gamma: PositiveFraction = 1.0, fisher_max_samples: PositiveInt = 256,
                 lr: PositiveFloat = 1e-3, head_lr: PositiveFloat = 3e-3,
                 weight_decay: NonNegativeFloat = 0.0):
        super().__init__(lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        self.ewc_lambda, self.online, self.gamma = float(ewc_lambda), bool(online), float(gamma)
        self.fisher_max_samples = int(fisher_max_samples)
        #: per consolidated task (one entry in online mode): {"fisher": {name: F}, "anchor": {...}}
        self.terms: list[dict[str, dict[str, torch.Tensor]]] = []

    def before_task(self, t: int, task: Task) -> None:
        self.freeze_all_but(self.model.backbone, self.model.heads[task.name])

    def shared_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Parameters that later tasks train: the backbone and a class-IL head, by name."""
        private = {id(p) for h in self.model.heads.values() if not isinstance(h, TaskView)
                   for p in h.parameters()}
        return {n: p for n, p in self.model.named_parameters() if id(p) not in private}

    def fisher_indices(self, task: Task) -> list[int]:
        """Positions in ``task.train`` of the samples the Fisher is estimated on: a random subset
        of ``fisher_max_samples`` (generator from the run's seed and the task index), in
        ascending order; every sample when the set is no larger."""
        n = len(task.train)
        if n <= self.fisher_max_samples:
            return list(range(n))
        g = self.generator(self.stream.index(task), salt=1)
        return sorted(torch.randperm(n, generator=g)[:self.fisher_max_samples].tolist())

    def fisher(self, task: Task) -> dict[str, torch.Tensor]:
        """Diagonal empirical Fisher of the shared parameters on ``task.train`` (see module doc).

        Returns:
            ``{name: F}`` with ``F`` shaped like the parameter, >= 0 (squared loss gradients).
        """
        params = self.shared_parameters()
        grads = {n: p.requires_grad for n, p in params.items()}
        for p in params.values():
            p.requires_grad_(True)
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        loss_fn = TaskLoss(task, self.class_weights)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        self.activate(task)
        n = 0
        subset = Subset(task.train, self.fisher_indices(task))
        for batch in DataLoader(subset, batch_size=1, shuffle=False):
            self.model.zero_grad(set_to_none=True)
            out = self.model(batch["image"].to(device), task.name)
            loss_fn(out, batch["label"].to(device)).backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach() ** 2
            n += 1
        self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)
        for name, p in params.items():
            p.requires_grad_(grads[name])
        return {k: v / max(n, 1) for k, v in fisher.items()}

    def after_task(self, t: int, task: Task) -> None:
        fisher = self.fisher(task)
        anchor = {n: p.detach().clone() for n, p in self.shared_parameters().items()}
        if self.online and self.terms:
            old = self.terms[0]["fisher"]
            fisher = {n: self.gamma * old[n] + f for n, f in fisher.items()}
            self.terms = []
        self.terms.append({"fisher": fisher, "anchor": anchor})

    def penalty(self) -> torch.Tensor:
        """``lambda/2 * sum F (theta - theta*)^2`` over the stored terms (0-d tensor)."""
        params = dict(self.model.named_parameters())
        total = torch.zeros((), device=next(self.model.parameters()).device)
        for term in self.terms:
            for name, f in term["fisher"].items():
                p = params[name]
                total = total + (f.to(p.device) * (p - term["anchor"][name].to(p.device)) ** 2).sum()
        return 0.5 * self.ewc_lambda * total

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        return self.penalty() if self.terms else None

    def state_dict(self) -> dict:
        return {"terms": self.terms}

    def load_state_dict(self, state: dict) -> None:
        self.terms = state.get("terms", [])
