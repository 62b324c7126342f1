"""The strategy seam: named hooks the runner calls, with no-op defaults.

Hooks follow Avalanche's plugin points (Lomonaco et al. 2021, arXiv 2104.00405) without its
template inheritance: a strategy is one flat class overriding only what it needs. The step's
hooks keep Avalanche's names ``before_backward`` / ``after_backward``; its ``before_update`` is
``before_optimizer_step`` here. There is no ``after_optimizer_step``: no strategy needs one yet.
A strategy that needs this step's backbone outputs reads ``batch["features"]`` in
:meth:`Strategy.task_loss` / :meth:`Strategy.training_loss` (no forward hook needed).

Call order for a stream of T tasks (see :func:`cl_bench.runner.run`)::

    setup(model, stream)
    evaluate every task            -> row "init"   (activate(j) before each task j)
    for t, task in enumerate(stream):
        before_task(t, task)       # add head/adapter, choose what trains
        fit: per step (cl_bench.training.LitTask.training_step)
             loss = task_loss(batch, out, t, loss_fn) + training_loss(batch, out, t)
             zero_grad
             before_backward(loss, t)
             backward                                     # p.grad of the trainable parameters
             after_backward(loss, t)                      # edit p.grad here (InfLoRA)
             before_optimizer_step(optimizer, t)
             optimizer.step()                             # AdamW over param_groups(task)
        after_task(t, task)        # merge, masks, statistics ...
        evaluate every task        -> row t        (activate(j) before each task j)
        save(run_dir, t, task)     # e.g. adapters/<task>/
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.kinds import kind_spec
from cl_bench.ranges import NonNegativeFloat, PositiveFloat, checked


class Strategy:
    """Base class of every continual-learning strategy.

    Args:
        lr: AdamW learning rate of the shared parameters that train (backbone, adapters).
        head_lr: AdamW learning rate of the current task's head (a fresh decoder/MLP usually
            needs a larger one than a pretrained backbone).
        weight_decay: AdamW weight decay.

    Ranges: every constructor argument's type and range is its annotation
    (:mod:`cl_bench.ranges`), the only place it is written. ``__init__`` here and in every
    subclass is wrapped by :func:`cl_bench.ranges.checked` (:meth:`__init_subclass__`), so a
    direct call such as ``LoRA(rank=0)`` is refused as a config node with ``strategy.rank=0`` is.

    Raises:
        ConfigError: a non-positive learning rate or negative weight decay
        (keys ``strategy.lr``, ``strategy.head_lr``, ``strategy.weight_decay``); in a subclass,
        any argument outside its annotation, naming ``strategy.<argument>``.
    """

    #: short name used in result paths and tables
    name = "base"
    #: True if the model needs each test sample's task id to pick a per-task module (adapter),
    #: so the strategy cannot run a class-incremental stream
    needs_task_id = False
    #: True if :meth:`predict_task_id` retrieves the task (task-agnostic evaluation)
    task_agnostic = False
    #: the run's ``seed`` (set by the runner before :meth:`setup`): a strategy's own random
    #: choices (a replay buffer, a Fisher subset) derive their generators from it and the task
    #: index, so seeds differ in them too and a resumed run makes the same choices
    seed = 0
    #: ``train.cache_frozen_features`` (set by the runner): False recomputes frozen work every
    #: step instead of once per training sample, both the runner's backbone cache (with
    #: :meth:`frozen_backbone`) and a strategy's own (LwF's teacher outputs)
    cache_frozen = True
    #: ``train.class_weights`` (set by the runner): the segmentation class weights of every task
    #: loss, the current task's and any a strategy builds itself (replay, Fisher)
    class_weights = "none"

    def __init_subclass__(cls, **kwargs):
        """Wrap a subclass's own ``__init__`` in :func:`~cl_bench.ranges.checked` (group
        ``strategy``), unless it is wrapped already."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "__checked__", None):
            cls.__init__ = checked("strategy")(init)

    @checked("strategy")
    def __init__(self, lr: PositiveFloat = 1e-3, head_lr: PositiveFloat = 3e-3,
                 weight_decay: NonNegativeFloat = 0.0):
        self.lr, self.head_lr, self.weight_decay = float(lr), float(head_lr), float(weight_decay)
        self.model: nn.Module | None = None
        self.stream: list[Task] = []

    # ------------------------------------------------------------------ hooks
    def setup(self, model: nn.Module, stream: list[Task]) -> None:
        """Attach to the stream's model; heads of all tasks already exist.

        Raises:
            ConfigError: a class-incremental stream with a strategy that needs task ids.
        """
        self.model, self.stream = model, stream
        class_il = [t.name for t in stream if kind_spec(t.kind).shared_head(t)]
        if class_il and self.needs_task_id:
            hint = (" (its task-agnostic evaluation, tasks.scenario=task_il eval.task_id=predicted,"
                    " scores in the class-IL label space)" if self.task_agnostic else "")
            raise ConfigError(
                f"strategy={self.name} keeps one module per task and needs the task id at test, "
                f"which tasks.scenario=class_il does not give; use tasks.scenario=task_il{hint}, or"
                " a strategy with a shared model (seq_ft, seq_lp, ewc, lwf, er, joint)")

    def check_model(self, model: nn.Module) -> None:
        """Check the strategy's settings against the built model, before the stream's data are
        made (e.g. a LoRA rank against the targeted layers' widths). Default: nothing.

        Raises:
            ConfigError: naming the ``strategy.<key>`` that does not fit the backbone."""

    def before_task(self, t: int, task: Task) -> None:
        """Prepare task ``t`` (0-based): add modules, set ``requires_grad``."""

    def activate(self, task: Task) -> None:
        """Configure the model to run ``task`` (training or evaluation), e.g. pick its adapter."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates for the current task (default: ``requires_grad``)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def param_groups(self, task: Task) -> list[dict]:
        """Optimiser parameter groups: the task's head at ``head_lr``, the rest at ``lr``."""
        head = {id(p) for p in self.model.heads[task.name].parameters()}
        params = self.trainable_parameters()
        groups = [{"params": [p for p in params if id(p) in head], "lr": self.head_lr},
                  {"params": [p for p in params if id(p) not in head], "lr": self.lr}]
        return [g for g in groups if g["params"]]

    def task_loss(self, batch: dict, out: torch.Tensor, t: int, loss_fn) -> torch.Tensor:
        """The current task's own loss (0-d). Default: ``loss_fn(out, label)``, the task's
        :class:`~cl_bench.models.losses.TaskLoss`.
        A strategy that changes the task loss itself (STAR's rebalanced BCE) overrides this."""
        return loss_fn(out, batch["label"])

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        """Extra loss term added to the task loss (regularisers); ``None`` for none.

        ``batch``: ``"image"``, ``"label"``, ``"index"`` (positions in ``task.train``) and, in
        training, ``"features"``: this step's backbone outputs for ``batch["image"]`` (with their
        autograd graph), for heads of other tasks without a second backbone pass."""
        return None

    def before_backward(self, loss: torch.Tensor, t: int) -> None:
        """Called once per training step of task ``t`` (0-based), after ``zero_grad`` and
        before the backward pass, in :meth:`cl_bench.training.LitTask.training_step`.

        Args:
            loss: the step's total loss, 0-d (``task_loss + training_loss``, unitless, averaged
                over the batch), still attached to its autograd graph: do not call
                ``backward`` on it. The gradients of the trainable parameters are ``None``.
            t: index of the task being trained.

        Default: nothing. Raises nothing itself; an exception stops the task as a crash would
        (the last mid-task checkpoint is kept)."""

    def after_backward(self, loss: torch.Tensor, t: int) -> None:
        """Called once per training step of task ``t``, right after the backward pass of
        ``loss`` and before :meth:`before_optimizer_step`: the place to edit gradients in place
        (a projection, a mask), as a gradient hook registered on the parameters would, but only
        for the training steps (never for another backward pass, e.g. EWC's Fisher).

        Args:
            loss: the step's total loss, 0-d, the one just back-propagated.
            t: index of the task being trained.

        Gradients: ``p.grad`` of every trainable parameter has ``p``'s shape and holds
        d loss / d p for this batch (``None`` for a parameter the loss does not reach; under
        DDP already averaged over the processes; bf16-mixed keeps them float32, no loss
        scaling). Default: nothing."""

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, t: int) -> None:
        """Called once per training step of task ``t``, after :meth:`after_backward` and right
        before ``optimizer.step()``.

        Args:
            optimizer: the task's ``torch.optim.AdamW`` (its ``param_groups`` are those of
                :meth:`param_groups`, learning rates after this step's warm-up factor); the
                gradients are final.
            t: index of the task being trained.

        Default: nothing."""

    def frozen_backbone(self, task: Task) -> bool:
        """True if, while ``task`` trains, the backbone is frozen and deterministic (no dropout,
        no adapter training), so its outputs for a training sample never change: the runner then
        computes them once per sample (:mod:`cl_bench.models.feature_cache`). Default False."""
        return False

    def after_task(self, t: int, task: Task) -> None:
        """Consolidate after training task ``t`` (merge, masks, Fisher, prototypes)."""

    def predict_task_id(self, x: torch.Tensor) -> torch.Tensor | None:
        """Task-agnostic inference: ``(B,)`` task indices for ``x``, or ``None`` (oracle id)."""
        return None

    def save(self, run_dir: Path, t: int, task: Task) -> None:
        """Write strategy artefacts for task ``t`` under ``run_dir`` (e.g. adapters)."""

    def state_dict(self) -> dict:
        """Strategy state beyond the model's parameters (for resume)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""

    # ---------------------------------------------------------------- helpers
    def generator(self, t: int, salt: int = 0) -> torch.Generator:
        """A CPU ``torch.Generator`` seeded from the run's :attr:`seed`, task index ``t`` and a
        per-use ``salt``: independent of how much global randomness training consumed."""
        return torch.Generator().manual_seed(
            (int(self.seed) * 1_000_003 + (t + 1) * 10_007 + salt * 101) % (2 ** 63))

    def freeze_all_but(self, *modules: nn.Module) -> None:
        """Set ``requires_grad`` False everywhere, then True on ``modules``."""
        self.model.requires_grad_(False)
        for m in modules:
            m.requires_grad_(True)
