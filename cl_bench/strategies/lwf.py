"""Learning without Forgetting: distil the previous model's old-task outputs on new data.

Li & Hoiem 2016/2017, "Learning without Forgetting", arXiv 1606.09282. Before task t a frozen
copy of the model is kept; while training task t, the current inputs also go through every old
task's head of both models and the new outputs are pulled towards the old ones::

    L = task loss + alpha * sum_{old heads h} KD_h(new_h(x), old_h(x))

``alpha`` is the paper's lambda_o (Eq. 2; the paper uses 1) and the old tasks' terms are
*summed*, as in the paper (Sec. 3: with several old tasks their losses are added), so each old
task keeps its weight however many follow it; ``reduction="mean"`` averages them instead (each
old task then weighs alpha / t at task t, a convention of some re-implementations).

KD per kind of head: classification: the paper's modified cross-entropy
``-sum_k q_k log p_k`` between the old and new softmax at temperature T (Eq. 3-4, T = 2), with no
T^2 factor, as in the paper; ``t_squared=True`` multiplies it by T^2 (Hinton et al.'s gradient
scaling, arXiv 1503.02531; some libraries do, so their alpha equals ours / T^2); segmentation: the
same per voxel; regression:
the squared error between the two normalised predictions (LwF has no regression form; ours);
class-incremental segmentation (independent sigmoids per class): the binary cross-entropy of the
new old-class logits against the old model's old-class probabilities, summed over old classes and
averaged over pixels (the sigmoid form of LwF used as a CISS baseline, e.g. by MiB, arXiv
2002.00718; MiB's own unbiased background distillation is not implemented).
A class-incremental stream's shared head is distilled once, on the classes seen before task t
(the iCaRL/van de Ven form of LwF for class-IL, arXiv 1611.07725, 1904.07734).

Deviations: no warm-up step training the new head alone. As in the paper, the old model's outputs
are recorded once per training sample (:class:`~cl_bench.models.feature_cache.FeatureCache`, on the
first visit instead of a pass before training; the old model is frozen and inputs are not
augmented, so the values are the same; ``train.cache_frozen_features=false`` recomputes them
every step), and the new model's old-head outputs reuse the training
step's backbone pass (``batch["features"]``).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F

from cl_bench.data.base import Task
from cl_bench.kinds import kind_spec
from cl_bench.models.feature_cache import FeatureCache
from cl_bench.models.heads import TaskView
from cl_bench.ranges import NonNegativeFloat, PositiveFloat
from cl_bench.strategies.base import Strategy


def distillation(new: torch.Tensor, old: torch.Tensor, kind: str,
                 temperature: float = 2.0, t_squared: bool = False) -> torch.Tensor:
    """Distillation loss of one head (0-d tensor), Li & Hoiem 2017 Eq. 3-4 for softmax heads.

    Args:
        new, old: the head's outputs of the current and the frozen model: logits ``(B, K)`` or
            ``(B, K, *spatial)`` (classification, segmentation) or ``(B,)`` (regression).
        kind: the task kind; temperature: softmax temperature T (> 0);
        t_squared: multiply a softmax head's term by T^2 (Hinton et al., arXiv 1503.02531).

    Returns:
        softmax heads: ``mean_b -sum_k softmax(old/T)_k log softmax(new/T)_k`` (mean over the
        batch and voxels), times T^2 if ``t_squared``; regression: the mean squared error; CISS:
        the per-class BCE summed over classes, averaged over pixels.
    """
    return DISTILLATION[kind_spec(kind).head](new, old, temperature, t_squared)


def _softmax_kd(new: torch.Tensor, old: torch.Tensor, t: float, t_squared: bool) -> torch.Tensor:
    log_p = F.log_softmax(new.float() / t, dim=1)
    q = F.softmax(old.float() / t, dim=1)
    loss = -(q * log_p).sum(dim=1).mean()
    return loss * t * t if t_squared else loss


def _mse_kd(new: torch.Tensor, old: torch.Tensor, t: float, t_squared: bool) -> torch.Tensor:
    return F.mse_loss(new.float(), old.float())


def _sigmoid_kd(new: torch.Tensor, old: torch.Tensor, t: float, t_squared: bool) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(new.float(), torch.sigmoid(old.float()),
                                             reduction="none")
    return bce.sum(dim=1).mean()


#: the distillation form of each head family (:attr:`cl_bench.kinds.KindSpec.head`): softmax
#: heads (segmentation decoders, classifiers), a regressor, CISS's per-class sigmoids
DISTILLATION = {"decoder": _softmax_kd, "classifier": _softmax_kd, "regressor": _mse_kd,
                "ciss": _sigmoid_kd}


class LwF(Strategy):
    """LwF on a shared backbone with per-task (or one class-IL) heads.

    Args:
        alpha: distillation weight, the paper's lambda_o (>= 0; paper: 1).
        temperature: distillation temperature T (> 0; paper: 2).
        t_squared: scale softmax terms by T^2 (Hinton et al.; not in the paper).
        reduction: ``"sum"`` (the paper) or ``"mean"`` of the old tasks' terms.
        lr, head_lr, weight_decay: optimiser settings.

    Raises:
        ConfigError: a negative alpha, a non-positive temperature, an unknown reduction.
    """

    name = "lwf"

    def __init__(self, alpha: NonNegativeFloat = 1.0, temperature: PositiveFloat = 2.0,
                 t_squared: bool = False, reduction: Literal["sum", "mean"] = "sum",
                 lr: PositiveFloat = 1e-3, head_lr: PositiveFloat = 3e-3,
                 weight_decay: NonNegativeFloat = 0.0):
        super().__init__(lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.t_squared, self.reduction = bool(t_squared), reduction
        self.old_model: torch.nn.Module | None = None
        self.old_tasks: list[Task] = []
        self.teacher: FeatureCache | None = None  # the old model's outputs per training sample

    def before_task(self, t: int, task: Task) -> None:
        self.freeze_all_but(self.model.backbone, self.model.heads[task.name])
        self.old_model, self.old_tasks, self.teacher = None, [], None
        if t == 0:
            return
        self.old_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.teacher = FeatureCache(len(task.train)) if self.cache_frozen else None
        shared_seen = False
        for old in self.stream[:t]:  # one term per distinct head
            if isinstance(self.model.heads[old.name], TaskView):
                if shared_seen:
                    continue
                shared_seen = True
            self.old_tasks.append(old)

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        if self.old_model is None or self.alpha == 0:
            return None
        x = batch["image"]
        self.old_model.to(x.device)
        names = [old.name for old in self.old_tasks]

        def old_outputs(inputs):
            return self.old_model.forward_heads(inputs, names)

        if "index" in batch and self.teacher is not None:
            targets = self.teacher(old_outputs, x, batch["index"])
        else:
            with torch.no_grad():
                targets = old_outputs(x)
        news = self.model.forward_heads(x, names, batch.get("features"))
        terms = []
        for old in self.old_tasks:
            new, target = news[old.name], targets[old.name]
            head = self.model.heads[old.name]
            if isinstance(head, TaskView):  # class-IL / CISS: the classes seen before this task
                n_old = sum(head.shared.sizes[:t])
                new, target = new[:, :n_old], target[:, :n_old]
            terms.append(distillation(new, target, old.kind, self.temperature, self.t_squared))
        terms = torch.stack(terms)
        return self.alpha * (terms.sum() if self.reduction == "sum" else terms.mean())

    def after_task(self, t: int, task: Task) -> None:
        self.old_model, self.teacher = None, None  # free the copy; before_task makes the next one
