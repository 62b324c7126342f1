"""The one model of a stream: a shared encoder plus one head per task.

:class:`ContinualModel` knows no backbone family. It talks to its encoder through a small
interface, and builds heads through the family's :class:`HeadFactory` (docs/architecture.md §6):

* the encoder (an ``nn.Module``; peft may wrap it, :attr:`ContinualModel.encoder` unwraps it):
  ``in_channels`` and ``spatial_dims`` (checked against the stream, :meth:`~ContinualModel.
  check_stream`); ``forward(x) -> (features, hidden)``, what every head reads; ``tokens_to_grid``
  and ``pool``, passed to the heads; optionally ``lora_targets`` (the adapter strategies'
  default layers), ``AUTO_BF16`` (``hardware.precision=auto``), and a part some heads skip
  (``decoder`` with a ``run_decoder`` switch: :meth:`~ContinualModel.features`);
* the head factory: one ``build_<head family>(task, encoder)`` per head family of the task kinds
  (:attr:`cl_bench.kinds.KindSpec.head`) and :meth:`HeadFactory.build_shared` for the kinds whose
  tasks share one head. It holds the family's head settings (widths, which decoder), set by the
  family's factory from its ``conf/backbone`` node.

A family is one module holding its encoder, its head factory and its ``make_*_model`` factory
(e.g. :mod:`cl_bench.models.swin`, :mod:`cl_bench.models.segresnet`), named by the ``_target_``
of its ``conf/backbone`` file. Nothing here names a family but :func:`__getattr__`'s aliases (the
factory paths that run directories recorded before the factories moved).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.kinds import KINDS, kind_spec
from cl_bench.models.heads import TaskView


class HeadFactory:
    """How a backbone family builds the heads of a stream's tasks, with its head settings.

    One method per head family of the task kinds (:attr:`cl_bench.kinds.KindSpec.head`):
    ``build_decoder`` (segmentation), ``build_regressor``, ``build_classifier``, ``build_ciss``,
    each ``(task, encoder) -> nn.Module``; and :meth:`build_shared` ``(head family, tasks,
    encoder) -> nn.Module``, one head shared by the tasks of a kind that shares one
    (:attr:`cl_bench.kinds.KindSpec.shared_head`: class-IL classification, CISS steps). A head is
    called as ``head(to_grid, features, hidden, image)`` with the encoder's outputs and the image
    ``(B, C, *spatial)``, and returns segmentation logits ``(B, K, *spatial)``, a regression
    prediction ``(B,)`` (normalised target scale) or class logits ``(B, K)``.

    This base refuses every head: a family overrides what it can build. A new head family (a new
    row of :data:`~cl_bench.kinds.KINDS`) is a new ``build_<family>`` method here, refusing, and
    in the families that can build it.

    Raises (the refusals):
        ConfigError: naming the backbone (:attr:`backbone`), the task and its kind.
        ValueError: :meth:`build_ciss` (CISS steps have no head of their own: they share one,
            :meth:`ContinualModel.add_heads`).
    """

    #: the backbone in messages (its ``conf/backbone`` option)
    backbone: str = "this backbone"

    def build(self, task: Task, encoder: nn.Module) -> nn.Module:
        """``task``'s own head: the builder of its kind's head family.

        Raises:
            UnknownKindError: ``task.kind`` is not in :data:`cl_bench.kinds.KINDS`; and see the
            class docstring."""
        return getattr(self, f"build_{kind_spec(task.kind).head}")(task, encoder)

    def refuse(self, task: Task, hint: str = "") -> ConfigError:
        """The error of a head this family cannot build (returned, for ``raise``)."""
        return ConfigError(f"backbone={self.backbone}: task {task.name!r} of kind {task.kind!r} "
                           f"({task.scenario}) is not supported on this backbone"
                           f"{'; ' + hint if hint else ''}")

    def build_decoder(self, task: Task, encoder: nn.Module) -> nn.Module:
        raise self.refuse(task)

    def build_regressor(self, task: Task, encoder: nn.Module) -> nn.Module:
        raise self.refuse(task)

    def build_classifier(self, task: Task, encoder: nn.Module) -> nn.Module:
        raise self.refuse(task)

    def build_ciss(self, task: Task, encoder: nn.Module) -> nn.Module:
        raise ValueError(f"task {task.name!r}: CISS steps share one head (add_heads)")

    def build_shared(self, head: str, tasks: list[Task], encoder: nn.Module) -> nn.Module:
        """One head of family ``head`` shared by ``tasks`` (each task's entry in
        ``ContinualModel.heads`` is a :class:`~cl_bench.models.heads.TaskView` of it)."""
        raise self.refuse(tasks[0], "use a ViT or UNet backbone for class-incremental streams")


class ContinualModel(nn.Module):
    """Shared backbone + per-task heads (task-incremental).

    Heads for *every* task of the stream are created up front (seeded), so a task can be
    evaluated before it is trained: the ``init`` row of R and the unseen upper triangle are real
    measurements of an untrained head on the current backbone (as needed for FWT, GEM).

    Args:
        backbone: the shared encoder (the interface in the module docstring).
        heads: the backbone family's :class:`HeadFactory`, holding its head settings; built by
            the family's ``make_*_model`` factory (``_target_`` of ``conf/backbone/<name>.yaml``).

    Each task gets the head its family builds for its kind (:meth:`add_head`) or, for the tasks
    of a kind that share one (class-IL classification, CISS steps), a
    :class:`~cl_bench.models.heads.TaskView` of one shared head (:meth:`add_heads`;
    :meth:`begin_task` activates a task's classes).

    Shapes:
        ``forward(x, task_name)``: ``x`` ``(B, C, *spatial)`` -> segmentation logits
        ``(B, K, *spatial)``, regression prediction ``(B,)`` (normalised target scale) or
        class logits ``(B, K)``.

    Raises:
        KeyError: ``forward`` with a task that has no head.
    """

    def __init__(self, backbone: nn.Module, heads: HeadFactory):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict()
        #: the family's head builders and settings (not a module: no parameters, no state)
        self.head_factory = heads

    @property
    def encoder(self) -> nn.Module:
        """The encoder, also inside a peft wrapper (peft's ``get_base_model``)."""
        enc = self.backbone
        return enc.get_base_model() if hasattr(enc, "get_base_model") else enc

    def add_head(self, task: Task) -> nn.Module:
        """Create the head of ``task``: the family's builder for its kind's head family
        (:attr:`cl_bench.kinds.KindSpec.head`, :meth:`HeadFactory.build`).

        Raises:
            UnknownKindError: ``task.kind`` is not in :data:`cl_bench.kinds.KINDS`.
            ValueError: a CISS step (they share one head: :meth:`add_heads`).
            ConfigError: a head the backbone family cannot build (naming the backbone).
        """
        head = self.head_factory.build(task, self.encoder)
        self.heads[task.name] = head
        return head

    def add_heads(self, stream: list[Task]) -> None:
        """Create the heads of every task of ``stream``: one shared head per kind for the tasks
        whose kind shares one (:attr:`cl_bench.kinds.KindSpec.shared_head`: class-IL
        classification, CISS steps; built first, in :data:`~cl_bench.kinds.KINDS` order, by
        :meth:`HeadFactory.build_shared`), then one head each for the others, in stream order.

        Raises:
            UnknownKindError, ValueError, ConfigError: as :meth:`add_head`; ConfigError: a
            shared head the family cannot build.
        """
        sharing: dict[str, list[Task]] = {}  # kind -> its tasks that share one head
        for task in stream:
            if kind_spec(task.kind).shared_head(task):
                sharing.setdefault(task.kind, []).append(task)
        shared = {kind: self.head_factory.build_shared(KINDS[kind].head, sharing[kind],
                                                       self.encoder)
                  for kind in KINDS if kind in sharing}  # table order: the seeded init order
        for task in stream:
            members = sharing.get(task.kind, [])
            if task in members:
                self.heads[task.name] = TaskView(shared[task.kind], members.index(task))
            else:
                self.add_head(task)

    def check_stream(self, stream: list[Task], backbone_name: str | None = None) -> None:
        """Each task's images fit the encoder: ``in_channels`` channels and ``spatial_dims``
        spatial axes (checked on each task's first training image, before any head is made).

        Raises:
            ConfigError: naming the task and ``backbone.in_channels`` / the backbone
                (``backbone_name``, the config's ``backbone.name``) whose dimensions differ.
        """
        enc = self.encoder
        for task in stream:
            channels = task.train[0]["image"].shape[0]
            if channels != enc.in_channels:
                raise ConfigError(f"task {task.name!r} has {channels}-channel images but "
                                  f"backbone.in_channels is {enc.in_channels}; make them agree")
            spatial = task.train[0]["image"].dim() - 1
            if spatial != enc.spatial_dims:
                raise ConfigError(f"task {task.name!r} has {spatial}D images but backbone "
                                  f"{backbone_name!r} has spatial_dims={enc.spatial_dims}; "
                                  f"pick a {spatial}D backbone")

    def count_params(self, task: Task, trainable: list[nn.Parameter]) -> dict:
        """``params.json``'s entry for ``task`` while ``trainable`` (the strategy's
        ``trainable_parameters()``) train: what trains, split into the task's LoRA adapters, its
        head (for a task whose head is a decoder, that decoder) and the rest (backbone weights),
        with the adapters' share of the backbone (the brain-MRI study's "< 0.1 % of
        parameters", arXiv 2602.23533). Counts are numbers of scalars; ``*_pct`` percentages."""
        def n(params) -> int:
            return sum(p.numel() for p in params)

        trainable_n = n(trainable)
        total = n(self.parameters())
        backbone = n(p for name, p in self.encoder.named_parameters() if "lora_" not in name)
        adapters = n(p for name, p in self.backbone.named_parameters()
                     if "lora_" in name and f".{task.name}." in name)
        head_ids = {id(p) for p in self.heads[task.name].parameters()}
        head = n(self.heads[task.name].parameters())
        head_trainable = n(p for p in trainable if id(p) in head_ids)
        return {"trainable": trainable_n, "total": total,
                "trainable_pct": 100.0 * trainable_n / total, "backbone": backbone, "head": head,
                "decoder": head if kind_spec(task.kind).head == "decoder" else 0,
                "adapter": adapters,
                "trainable_backbone": trainable_n - head_trainable - adapters,
                "adapter_pct_of_backbone": 100.0 * adapters / backbone if backbone else 0.0,
                "adapter_pct_of_total": 100.0 * adapters / total,
                "head_pct_of_total": 100.0 * head / total}

    def begin_task(self, task: Task) -> None:
        """Called before training ``task``: a class-IL head activates the task's classes."""
        head = self.heads[task.name]
        if isinstance(head, TaskView):
            head.shared.begin_task(head.task_index)

    @torch.no_grad()
    def calibrate_head(self, task: Task, batch_size: int, cache=None, track: bool = True) -> bool:
        """Before training ``task``: a head with a ``calibrate`` method (a data-dependent input
        standardisation, :class:`~cl_bench.models.swin.PooledRegressionHead`) gets the pooled
        features of the whole training set on the current backbone, in order, in eval mode;
        ``track``: the head also follows the backbone's changes during training (its ``track``
        attribute; False for a frozen backbone, whose statistics stay exact).
        ``cache``: the task's :class:`~cl_bench.models.feature_cache.FeatureCache` when the
        backbone is frozen; the backbone outputs computed here then fill it, so training does
        not compute them again (every shipped backbone is the same in eval and training mode:
        no dropout, no batch norm). Consumes no random numbers. Returns whether the head was
        calibrated."""
        head = self.heads[task.name]
        norm = getattr(head, "norm", "batch")
        if not hasattr(head, "calibrate") or norm not in ("batch", "train"):
            return False  # no data-dependent standardisation (e.g. a per-subject layer norm)
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        pooled = []
        for i in range(0, len(task.train), batch_size):
            x = torch.stack([task.train[j]["image"] for j in
                             range(i, min(i + batch_size, len(task.train)))]).to(device)
            _, stages = (self.features(x, [task.name]) if cache is None else
                         cache(lambda v: self.features(v, [task.name]), x,
                               torch.arange(i, i + len(x))))
            pooled.append(head.pooled(stages))
        head.calibrate(torch.cat(pooled))
        head.track = bool(track) and norm == "batch"  # "train": frozen at task start
        self.train(was)
        return True

    def features(self, x: torch.Tensor, task_names: list[str] | None = None
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The backbone's outputs for ``x``, ``(features, hidden)`` as the encoder returns them
        (a ViT: tokens ``(B, N, D)`` and every block's ``(B, N, D)``; a grid encoder such as the
        Swin: its deepest map ``(B, C, *grid)`` and its stages, then a shared decoder's
        features). ``task_names``: the heads that will read them; an encoder's optional part
        (its ``decoder``, switched by ``run_decoder``: Swin UNETR's shared decoder) runs only if
        one of them reads it (``reads_decoder``), e.g. not for the age head. ``None``:
        everything runs."""
        enc = self.encoder
        if task_names is None or getattr(enc, "decoder", None) is None:
            return self.backbone(x)
        needed = any(getattr(self.heads[n], "reads_decoder", False) for n in task_names)
        was, enc.run_decoder = enc.run_decoder, needed
        try:
            return self.backbone(x)
        finally:
            enc.run_decoder = was

    def forward_heads(self, x: torch.Tensor, task_names: list[str], features=None
                      ) -> dict[str, torch.Tensor]:
        """One backbone pass (or ``features``, its outputs already computed for ``x``), then
        the heads of ``task_names``: ``{name: output}``."""
        tokens, hidden = self.features(x, task_names) if features is None else features
        return {n: self.heads[n](self.encoder.tokens_to_grid, tokens, hidden, x)
                for n in task_names}

    def forward(self, x: torch.Tensor, task_name: str, features=None) -> torch.Tensor:
        """``task_name``'s head on ``x``; ``features``: ``self.backbone(x)`` if already computed
        (a frozen backbone's cached outputs, :mod:`cl_bench.models.feature_cache`)."""
        tokens, hidden = self.features(x, [task_name]) if features is None else features
        return self.heads[task_name](self.encoder.tokens_to_grid, tokens, hidden, x)


#: factory paths recorded by run directories before the factories moved to their families'
#: modules (``backbone._target_`` in ``checkpoints/config.yaml``, which a resume compares key by
#: key, and in the shipped conf/backbone files, kept so): name -> its module now
_MOVED = {"make_model": "cl_bench.models.backbones",
          "make_unet_model": "cl_bench.models.backbones",
          "make_swin_model": "cl_bench.models.swin"}


def __getattr__(name: str):
    """``cl_bench.models.continual.make_swin_model`` and the other moved factories (PEP 562):
    imported from their family's module on first use.

    Raises:
        AttributeError: any other missing name."""
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
