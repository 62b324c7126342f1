"""The LightningModule that trains one task of the stream, and the task losses.

Losses: segmentation uses MONAI's ``DiceCELoss`` (softmax, one-hot targets, Dice over the
foreground classes only since tumours fill ~2 % of a volume; Milletari et al. 2016, arXiv
1606.04797 for the Dice loss), optionally with median-frequency class weights
(``train.class_weights=median_frequency``: ``w_c = median_k f_k / f_c``, f the classes' voxel
frequencies in the task's training labels; Eigen & Fergus 2015, arXiv 1411.4734), given to
MONAI's ``weight`` (the cross-entropy over every class, the Dice over the foreground); regression uses the mean squared error on the normalised target
``(y - task.target_mean) / task.target_std``; classification the cross-entropy; a
class-incremental segmentation step the per-class binary cross-entropy of STAR (Chen et al.,
NeurIPS 2023): a sigmoid per foreground class, the target of class c is ``label == c`` (so old
and future classes, labelled background in the step's data, are pushed to 0: the background
shift that makes plain fine-tuning forget), summed over classes and averaged over the pixels
that are not :data:`~cl_bench.data.base.IGNORE_INDEX`.
"""

from __future__ import annotations

import lightning as L
import torch
from monai.losses import DiceCELoss
from torch import nn

from cl_bench.checkpoint import rng_state, set_rng_state
from cl_bench.data.base import CISS, IGNORE_INDEX, Task
from cl_bench.errors import DataError, TrainingError
from cl_bench.strategies.base import Strategy


class TaskLoss(nn.Module):
    """Loss of a task on the model's raw output.

    Shapes:
        segmentation: ``out`` ``(B, K, *spatial)`` logits, ``label`` ``(B, 1, *spatial)`` int;
        regression: ``out`` ``(B,)`` normalised prediction, ``label`` ``(B,)`` native units;
        classification: ``out`` ``(B, K)`` logits, ``label`` ``(B,)`` class indices;
        class-incremental segmentation: ``out`` ``(B, K, *spatial)`` per-class logits (channel k
        = class ``task.stream_classes[k]``; inactive channels at the masked logit), ``label``
        ``(B, 1, *spatial)`` global class ids.
    """

    def __init__(self, task: Task, class_weights: str = "none"):
        super().__init__()
        self.task = task
        weight = (median_frequency_weights(task) if class_weights == "median_frequency"
                  and task.kind == "segmentation" else None)
        self.dice_ce = (DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                                   weight=weight)
                        if task.kind == "segmentation" else None)

    def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if self.dice_ce is not None:
            return self.dice_ce(out.float(), label)  # bf16 logits: the loss in fp32
        if self.task.kind == CISS:
            return ciss_bce(out, label, self.task.stream_classes, self.task.pos_weight)
        if self.task.kind == "classification":
            return nn.functional.cross_entropy(out.float(), label.long())
        target = (label.float() - self.task.target_mean) / self.task.target_std
        return nn.functional.mse_loss(out.float(), target)


def median_frequency_weights(task: Task) -> torch.Tensor:
    """Median-frequency class weights (Eigen & Fergus 2015, arXiv 1411.4734) of a segmentation
    task: ``(K,)`` float, ``w_c = median_k f_k / f_c``, f_c the share of class c among the
    voxels of the task's training labels (a class absent from them gets weight 1).

    Raises:
        DataError: a label outside ``[0, task.num_classes)``.
    """
    k = task.num_classes
    counts = torch.zeros(k, dtype=torch.float64)
    labels = getattr(task.train, "labels", None)
    chunks = ([labels] if isinstance(labels, torch.Tensor)
              else (task.train[i]["label"] for i in range(len(task.train))))
    for lab in chunks:
        lab = torch.as_tensor(lab).flatten().long()
        if len(lab) and (lab.min() < 0 or lab.max() >= k):
            raise DataError(f"task {task.name!r}: a training label outside [0, {k})")
        counts += torch.bincount(lab, minlength=k).double()
    freq = counts / counts.sum()
    present = freq > 0
    weight = torch.ones(k, dtype=torch.float64)
    weight[present] = freq[present].median() / freq[present]
    return weight.float()


def bce_per_class(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                  pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits averaged over positions, per class.

    Args:
        logits, target: ``(N, C, *any)``; valid: ``None`` or a 0/1 mask broadcastable to them
            (positions outside it are left out); pos_weight: weight of positive targets.

    Returns:
        ``(C,)``.
    """
    pw = None
    if pos_weight is not None:
        pw = torch.full((logits.shape[1],) + (1,) * (logits.dim() - 2), float(pos_weight),
                        device=logits.device)
    bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float(),
                                                         reduction="none", pos_weight=pw)
    dims = [d for d in range(bce.dim()) if d != 1]
    if valid is None:
        return bce.mean(dim=dims)
    v = valid.float().expand_as(bce)
    return (bce * v).sum(dim=dims) / v.sum(dim=dims).clamp_min(1)


def ciss_bce(logits: torch.Tensor, label: torch.Tensor, class_ids: list[int],
             pos_weight: float = 1.0) -> torch.Tensor:
    """STAR's per-class BCE (0-d): ``sum_c mean_pixels BCE(logit_c, label == c)``.

    Args:
        logits: ``(B, K, *spatial)``; label: ``(B, 1, *spatial)`` global ids (255 ignored);
        class_ids: the class of each channel (K ids); pos_weight: weight of positive pixels
            (STAR: 4 on VOC's 21 classes; 1 = plain BCE).
    """
    ids = torch.as_tensor(class_ids, device=label.device).view(1, -1, *[1] * (label.dim() - 2))
    return bce_per_class(logits, label == ids, label != IGNORE_INDEX, pos_weight).sum()


class LitTask(L.LightningModule):
    """Trains ``model`` on ``task`` with the strategy's parameters and extra loss.

    Args:
        model: the stream's :class:`~cl_bench.models.ContinualModel`.
        strategy: supplies ``trainable_parameters()``, ``training_loss()``, ``activate()``.
        task: the task being learned; t: its 0-based index in the stream;
        on_first_step: ``None`` or a callable run once, at the first training step (the runner
            records the time to first step, ``timing.json`` ``first_step_unix``);
        feature_cache: ``None`` or a :class:`~cl_bench.models.feature_cache.FeatureCache` (the
            batches then carry ``"index"``);
        warmup_steps: linear learning-rate warm-up over the task's first steps (0 = none): the
            rate of every parameter group is scaled by ``min(1, (step + 1) / warmup_steps)``
            (Goyal et al. 2017, arXiv 1706.02677), as a Lightning-managed scheduler (its state
            is in the mid-task checkpoints, so a resumed task continues the same schedule);
        class_weights: ``train.class_weights`` for :class:`TaskLoss`.

    Raises:
        TrainingError: a non-finite loss (names task and step); already written results stay.
    """

    def __init__(self, model: nn.Module, strategy: Strategy, task: Task, t: int,
                 on_first_step=None, feature_cache=None, warmup_steps: int = 0,
                 class_weights: str = "none"):
        super().__init__()
        self.model, self.strategy, self.task, self.t = model, strategy, task, t
        self.loss_fn = TaskLoss(task, class_weights)
        self.warmup_steps = int(warmup_steps)
        self.on_first_step = on_first_step  # called once, at the first training step
        self.feature_cache = feature_cache  # a frozen backbone's outputs per sample, or None
        self._log_curves = True  # set in on_train_start: only when the trainer has a logger
        # Lightning's manual optimisation: the same zero_grad -> backward -> step per batch as its
        # automatic loop (bit-identical weights, checked by scripts/bench_overhead.py), without
        # the closure machinery that cost ~1 ms per step (~17 % of split_mnist's training time)
        self.automatic_optimization = False

    def on_train_start(self) -> None:
        self.strategy.activate(self.task)
        # curves only for a logger (the progress bar reads the returned loss): self.log costs
        # ~0.7 ms per call, a sizeable share of a small model's step
        self._log_curves = bool(self.trainer.loggers)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.on_first_step is not None:
            self.on_first_step()
            self.on_first_step = None
        x = batch["image"]
        features = (self.model.backbone(x) if self.feature_cache is None else
                    self.feature_cache(self.model.backbone, x, batch["index"]))
        out = self.model(x, self.task.name, features)
        batch = {**batch, "features": features}  # strategies reuse this step's backbone pass
        loss = self.strategy.task_loss(batch, out, self.t, self.loss_fn)
        log_curves = self._log_curves
        if log_curves:
            self.log(f"{self.task.name}/task_loss", loss.detach(), batch_size=len(out))
        extra = self.strategy.training_loss(batch, out, self.t)
        if extra is not None:
            if log_curves:
                self.log(f"{self.task.name}/strategy_loss", extra.detach(), batch_size=len(out))
            loss = loss + extra
        if not torch.isfinite(loss):
            raise TrainingError(
                f"task {self.task.name!r} (#{self.t + 1}): loss became {loss.item()} at step "
                f"{self.global_step}; lower train.lr or check the task's data. Rows computed "
                "before this task are kept in matrix.csv.")
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)  # precision plugin and DDP gradient sync, as in automatic mode
        opt.step()
        if self.warmup_steps:
            self.lr_schedulers().step()
        return loss.detach()  # for the progress bar

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Add what Lightning does not keep: RNG states and the strategy's state (for resume)."""
        checkpoint["cl_bench"] = {"rng": rng_state(), "strategy": self.strategy.state_dict(),
                                  "task": self.task.name}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "cl_bench" not in checkpoint:
            raise DataError(f"resume: checkpoints/{self.task.name}/mid_task.ckpt was not written "
                            "by cl_bench (no 'cl_bench' entry); nothing was changed. Move it away"
                            " to restart this task from its beginning (finished tasks are kept)")
        extra = checkpoint["cl_bench"]
        if extra.get("task") not in (None, self.task.name):
            raise TrainingError(f"mid-task checkpoint of task {extra.get('task')!r} loaded "
                                f"for task {self.task.name!r}")
        self.strategy.load_state_dict(extra.get("strategy", {}))
        if "rng" in extra:
            set_rng_state(extra["rng"])

    def configure_optimizers(self):
        groups = self.strategy.param_groups(self.task)
        if not groups:
            raise TrainingError(f"strategy {self.strategy.name!r} left no trainable parameters "
                                f"for task {self.task.name!r}")
        opt = torch.optim.AdamW(groups, weight_decay=self.strategy.weight_decay)
        if not self.warmup_steps:
            return opt
        warm = self.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ValidatedLitTask(LitTask):
    """:class:`LitTask` with a validation step, for ``train.early_stopping_patience > 0``
    (a separate class: Lightning warns about a ``validation_step`` without validation data)."""

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """The task loss on a batch of the task's validation set, logged as
        ``<task>/val_loss`` (averaged over the set): what ``train.early_stopping_patience``
        monitors. The strategy's extra loss is left out."""
        out = self.model(batch["image"], self.task.name)
        self.log(f"{self.task.name}/val_loss", self.loss_fn(out, batch["label"]),
                 batch_size=len(out), on_step=False, on_epoch=True, prog_bar=False)
