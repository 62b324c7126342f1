"""The LightningModule that trains one task of the stream (its losses:
:mod:`cl_bench.models.losses`)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from cl_bench.checkpoint import rng_state, set_rng_state
from cl_bench.data.base import Task
from cl_bench.errors import DataError, TrainingError
from cl_bench.models.losses import TaskLoss
from cl_bench.strategies.base import Strategy


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
