"""Training one task of the stream: the LightningModule (:class:`LitTask`, its losses in
:mod:`cl_bench.models.losses`), the Lightning Trainer the runner makes per task, and the
atomic, interval-limited mid-task checkpoints (:mod:`cl_bench.checkpoint`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from cl_bench import checkpoint as ckpt
from cl_bench import signals
from cl_bench.checkpoint import rng_state, set_rng_state
from cl_bench.data.base import Task
from cl_bench.errors import ConfigError, DataError, TrainingError
from cl_bench.files import atomic_write
from cl_bench.models.feature_cache import IndexedDataset, as_batch
from cl_bench.models.losses import TaskLoss
from cl_bench.progress import TaskProgressBar, progress_callback
from cl_bench.strategies.base import Strategy

log = logging.getLogger(__name__)


class LitTask(L.LightningModule):
    """Trains ``model`` on ``task`` with the strategy's parameters and extra loss.

    Args:
        model: the stream's :class:`~cl_bench.models.ContinualModel`.
        strategy: supplies ``param_groups()``, ``task_loss()``, ``training_loss()``,
            ``activate()``; each step calls its ``before_backward``, ``after_backward`` and
            ``before_optimizer_step`` around ``zero_grad -> backward -> step``
            (:class:`~cl_bench.strategies.base.Strategy`).
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
        names = [self.task.name]
        features = (self.model.features(x, names) if self.feature_cache is None else
                    self.feature_cache(lambda v: self.model.features(v, names), x,
                                       batch["index"]))
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
        strategy, t = self.strategy, self.t
        strategy.before_backward(loss, t)
        self.manual_backward(loss)  # precision plugin and DDP gradient sync, as in automatic mode
        strategy.after_backward(loss, t)  # edits of p.grad (InfLoRA's frozen rows)
        strategy.before_optimizer_step(opt.optimizer, t)
        opt.step()
        if self.warmup_steps:
            self.lr_schedulers().step()
        return loss.detach()  # for the progress bar

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Raise a Ctrl-C that Python dropped (one that landed in an object's ``__del__``;
        :mod:`cl_bench.signals`): Lightning then stops the fit as for any Ctrl-C and the
        runner says how to resume. A hook of the module, which Lightning calls every batch
        anyway; a callback of its own cost every step one more dispatch of each callback hook."""
        signals.check()

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


class ValidationChecks(L.Callback):
    """Validation checks during a task: every ``every`` training steps, the task's metric on its
    validation set (Dice, MAE, accuracy, mIoU: :func:`cl_bench.evaluation.evaluate_task` with
    ``split="val"``, as the rows of ``matrix_val.csv`` are scored), logged as
    ``<task>/val_<metric>`` and written to ``val_checks.csv`` in the run directory (one row per
    check: task, step, metric, value, seconds of the check). With ``patience > 0`` the task
    stops once ``patience`` checks in a row did not improve on the best value (early stopping,
    Prechelt 1998, "Early stopping - but when?", in the metric's own direction); with
    ``restore_best`` the trainable parameters and the buffers then go back to those of the best
    check (as Keras' ``EarlyStopping(restore_best_weights=True)``), else the task ends with the
    weights of its last step (Lightning's ``EarlyStopping``).

    A check runs in inference mode on zero-copy slices of the validation tensors, draws no
    random number and changes no weight, so a run with checks and no stopping trains exactly
    as one without checks (the same weights to the bit; tested). Its state (best value and
    step, checks without improvement, the best weights, the rows) is in the mid-task
    checkpoints, so a resumed task continues the same rule.

    Args:
        run_dir: the run directory (``val_checks.csv``); model, strategy, task: what is trained;
        every: steps between checks (``train.val_every_n_steps``); patience:
        ``train.early_stopping_patience`` (0: checks only); restore_best:
        ``train.early_stopping_restore_best``; batch_size: ``train.eval_batch_size``;
        bf16: bfloat16 autocast for the checks (the run's precision).
    """

    def __init__(self, run_dir: Path, model: nn.Module, strategy: Strategy, task: Task,
                 every: int, patience: int = 0, restore_best: bool = False,
                 batch_size: int = 4, bf16: bool = False):
        self.run_dir, self.model, self.strategy, self.task = Path(run_dir), model, strategy, task
        self.every, self.patience, self.restore_best = int(every), int(patience), restore_best
        self.batch_size, self.bf16 = int(batch_size), bool(bf16)
        self.best: float | None = None
        self.best_step, self.wait = 0, 0
        self.best_state: dict | None = None
        self.rows: list[dict] = []

    @property
    def state_key(self) -> str:
        return f"ValidationChecks[{self.task.name}]"

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait,
                "best_state": self.best_state, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.wait = state["best"], state["best_step"], state["wait"]
        self.best_state, self.rows = state["best_state"], list(state["rows"])

    def _snapshot(self) -> dict:
        """The trainable parameters and every buffer, cloned (what a restore puts back)."""
        state = {f"p:{n}": p.detach().clone() for n, p in self.model.named_parameters()
                 if p.requires_grad}
        state.update({f"b:{n}": b.detach().clone() for n, b in self.model.named_buffers()})
        return state

    @torch.no_grad()
    def _restore(self) -> None:
        params, buffers = dict(self.model.named_parameters()), dict(self.model.named_buffers())
        for key, value in self.best_state.items():
            kind, name = key.split(":", 1)
            (params if kind == "p" else buffers)[name].copy_(value)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every or (self.rows and self.rows[-1]["step"] >= step):
            return
        from cl_bench.evaluation import evaluate_task  # evaluation imports the strategies

        start = time.perf_counter()
        device = next(self.model.parameters()).device
        value = float(evaluate_task(self.model, self.strategy, self.task, self.batch_size,
                                    device, self.bf16, split="val")[self.task.metric])
        self.strategy.activate(self.task)  # as at the task's start (evaluation activates too)
        seconds = time.perf_counter() - start
        higher = self.task.higher_is_better
        if self.best is None or (value > self.best if higher else value < self.best):
            self.best, self.best_step, self.wait = value, step, 0
            if self.restore_best:
                self.best_state = self._snapshot()
        else:
            self.wait += 1
        self.rows.append({"task": self.task.name, "step": step, "metric": self.task.metric,
                          "value": value, "best_step": self.best_step,
                          "seconds": round(seconds, 3)})
        for logger in trainer.loggers:
            logger.log_metrics({f"{self.task.name}/val_{self.task.metric}": value}, step=step)
        if trainer.is_global_zero:
            self._write()
        if self.patience and self.wait >= self.patience:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        stopped = trainer.global_step
        if self.restore_best and self.best_state is not None and self.best_step != stopped:
            self._restore()
            log.info("task %s: weights of step %d restored (best validation %s %.4g)",
                     self.task.name, self.best_step, self.task.metric, self.best)

    def _write(self) -> None:
        """``val_checks.csv``: the rows of the tasks before this one (already in the file),
        then this task's checks so far."""
        import pandas as pd

        path = self.run_dir / "val_checks.csv"
        frames = []
        if path.is_file():
            old = pd.read_csv(path)
            frames.append(old[old["task"] != self.task.name])
        frames.append(pd.DataFrame(self.rows))
        table = pd.concat(frames, ignore_index=True)
        atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def compile_model(model: torch.nn.Module) -> None:
    """``hardware.compile``: ``torch.compile`` the encoder and every head in place
    (``nn.Module.compile``: state-dict keys, checkpoints and hooks are unchanged). The first step
    of each task pays the compilation (minutes for the Swin backbone on 2 CPU cores; inductor
    needs a C++ compiler), and a new adapter or head recompiles."""
    model.encoder.compile()
    for head in model.heads.values():
        head.compile()


def make_trainer(cfg: DictConfig, run_dir: Path, task_name: str, steps_per_epoch: int,
                  logger, t: int = 0, num_tasks: int = 1,
                  checks: ValidationChecks | None = None,
                  precision: str = "32-true") -> L.Trainer:
    """The Lightning Trainer of task ``t`` (0-based) of ``num_tasks``: ``train.max_steps``
    steps, the progress line, mid-task checkpoints every ``train.checkpoint_every_n_epochs``
    epochs (``steps_per_epoch`` batches each), and ``checks`` (:class:`ValidationChecks`: the
    validation checks and early stopping) if given.

    Raises:
        ConfigError: (``hardware``) Lightning refuses the accelerator, devices, strategy or
            precision.
    """
    hw, train = cfg.hardware, cfg.train
    progress = progress_callback(t, num_tasks, task_name, train.max_steps,
                                 train.log_every_n_steps, bool(train.progress_bar))
    callbacks = [progress]
    if checks is not None:  # before the checkpoints (Lightning also puts those last)
        callbacks.append(checks)
    if train.checkpoint_every_n_epochs > 0:
        # after the last batch of an epoch: from there Lightning resumes exactly (a checkpoint
        # taken in on_train_epoch_end replays one batch of that epoch on restore)
        callbacks.append(EpochEndCheckpoint(
            train.checkpoint_min_interval_s,
            dirpath=str(ckpt.mid_task_dir(run_dir, task_name)), filename="mid_task",
            every_n_train_steps=train.checkpoint_every_n_epochs * steps_per_epoch, save_top_k=1,
            enable_version_counter=False))
    try:
        return L.Trainer(max_steps=train.max_steps, max_epochs=-1,  # max_steps decides
                         accelerator=hw.accelerator, devices=hw.devices, strategy=hw.strategy,
                         num_nodes=hw.num_nodes,
                         precision=precision,
                         deterministic=hw.deterministic, plugins=cluster_plugins(),
                         logger=logger if logger is not None else False, callbacks=callbacks,
                         enable_checkpointing=any(isinstance(c, ModelCheckpoint)
                                                  for c in callbacks),
                         enable_model_summary=False,
                         enable_progress_bar=isinstance(progress, TaskProgressBar),
                         default_root_dir=str(run_dir),
                         log_every_n_steps=train.log_every_n_steps)
    except (MisconfigurationException, ValueError, RuntimeError) as e:
        raise ConfigError(f"hardware: Lightning refused accelerator={hw.accelerator!r}, "
                          f"devices={hw.devices!r}, strategy={hw.strategy!r}, "
                          f"precision={hw.precision!r}: {e}") from None


class EpochEndCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint at epoch ends (``every_n_train_steps`` a multiple of the
    epoch's steps), skipping a save due less than ``min_interval_s`` seconds after the task
    started or after the last save (a 4-second split_mnist stream wrote 15 checkpoints, now none);
    a kill loses at most ``min_interval_s`` plus an epoch of a task."""

    def __init__(self, min_interval_s: float, **kwargs):
        super().__init__(**kwargs)
        self.min_interval_s = float(min_interval_s)
        self._since = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._since = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._since < self.min_interval_s:
            return
        saved = self._last_global_step_saved
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._last_global_step_saved != saved:
            self._since = time.monotonic()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but each ``.ckpt`` is written to a temporary file and
    renamed over the old one (:func:`~cl_bench.files.atomic_write`): a full disk or a kill
    during the write leaves the previous mid-task checkpoint readable (Lightning writes in place),
    and the failure is a :class:`~cl_bench.errors.StorageError` naming the file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write(Path(path), lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(
            checkpoint, tmp, storage_options))


def cluster_plugins() -> list:
    """Under SLURM, Lightning's cluster environment without its own requeue: submitit requeues
    (``hardware=slurm``) and the runner resumes from ``checkpoints/``; atomic checkpoint files."""
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False), AtomicCheckpointIO()]
    return [LightningEnvironment(), AtomicCheckpointIO()]


def fit_task(cfg: DictConfig, run_dir: Path, model: nn.Module, strategy: Strategy, task: Task,
             t: int, num_tasks: int, logger, precision: str, cache=None,
             on_first_step=None) -> int:
    """Train ``task`` (index ``t``) for ``train.max_steps`` steps with a new Trainer, continuing
    its mid-task checkpoint (``checkpoints/<task>/mid_task.ckpt``) if one exists. With
    ``train.val_every_n_steps > 0`` and a validation set, :class:`ValidationChecks` scores the
    task on it every that many steps (``val_checks.csv``) and, with
    ``train.early_stopping_patience > 0``, stops the task once its validation metric stops
    improving. ``cache``: a :class:`~cl_bench.models.feature_cache.FeatureCache` or ``None``;
    ``on_first_step``: called once at the first step. Returns the trainer's global step.

    Raises:
        ConfigError: Lightning refuses the hardware settings; DataError / TrainingError: an
            unreadable mid-task checkpoint, a non-finite loss.
    """
    train = cfg.train
    if train.batch_size > len(task.train):
        log.warning("train.batch_size=%d exceeds task %s's %d training samples: every step "
                    "uses the whole training set", train.batch_size, task.name, len(task.train))
    # batches carry "index" (their positions in task.train): the key of per-sample caches
    loader = DataLoader(IndexedDataset(task.train), batch_size=train.batch_size, shuffle=True,
                        collate_fn=as_batch)  # IndexedDataset collates its batches itself
    checks = None
    if train.val_every_n_steps > 0 and task.val is not None:
        checks = ValidationChecks(run_dir, model, strategy, task, train.val_every_n_steps,
                                  train.early_stopping_patience,
                                  bool(train.early_stopping_restore_best),
                                  train.eval_batch_size, precision.startswith("bf16"))
    trainer = make_trainer(cfg, run_dir, task.name, max(len(loader), 1), logger, t, num_tasks,
                           checks, precision)
    mid = ckpt.mid_task_path(run_dir, task.name)
    if mid:
        ckpt.check_mid_task(run_dir, mid)
        log.info("continuing task %s from %s", task.name, mid)
    trainer.fit(LitTask(model, strategy, task, t, on_first_step, cache, train.warmup_steps,
                        train.class_weights), train_dataloaders=loader,
                ckpt_path=str(mid) if mid else None)
    if checks is not None and checks.patience and trainer.global_step < train.max_steps:
        log.info("task %s: stopped early at step %d of %d (validation %s not better for %d "
                 "checks; best %.4g at step %d)", task.name, trainer.global_step,
                 train.max_steps, task.metric, checks.patience, checks.best, checks.best_step)
    return trainer.global_step
