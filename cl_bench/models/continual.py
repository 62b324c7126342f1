"""The one model of a stream: a shared encoder plus one head per task."""

from __future__ import annotations

from typing import Annotated, Callable, Literal

import annotated_types as at
import torch
from torch import nn

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.kinds import KINDS, kind_spec
from cl_bench.models.backbones import UNetEncoder, ViTEncoder
from cl_bench.models.swin import (DecoderOutputHead, LinearSegmentationHead,
                                  PooledClassificationHead, PooledRegressionHead, SwinDecoder,
                                  SwinEncoder)
from cl_bench.models.heads import (CISSHead, ClassificationHead, ClassILHead, RegressionHead,
                                   SegmentationDecoder, TaskView)
from cl_bench.ranges import Fraction, NonNegativeInt, PositiveInt


class ContinualModel(nn.Module):
    """Shared backbone + per-task heads (task-incremental).

    Heads for *every* task of the stream are created up front (seeded), so a task can be
    evaluated before it is trained: the ``init`` row of R and the unseen upper triangle are real
    measurements of an untrained head on the current backbone (as needed for FWT, GEM).

    Args:
        backbone: the shared encoder.
        decoder_feature_size: width of segmentation decoders at full resolution.
        decoder_image_skip: give decoders UNETR's raw-image skip (see ``SegmentationDecoder``).
        regression_width: hidden width of regression heads (Swin: 0 = linear).
        regression_stages: the Swin stages a regression head pools (see
            :class:`~cl_bench.models.swin.PooledRegressionHead`); regression_rectify: it
            averages ``relu(stage)``.
        decoder: Swin segmentation head: ``"shared"`` (a
            :class:`~cl_bench.models.swin.DecoderOutputHead` on the backbone's own, pretrained
            decoder), ``"unetr"`` (Swin UNETR's decoder per task) or ``"linear"``
            (:class:`~cl_bench.models.swin.LinearSegmentationHead`, the paper-like budget).
        decoder_fp32, decoder_channels_last: the Swin UNETR decoder's ``fp32`` and
            ``channels_last`` (:class:`~cl_bench.models.swin.SwinDecoder`).

    Classification tasks get a :class:`ClassificationHead` each (task-incremental) or, in a
    class-incremental stream, share one growing :class:`ClassILHead` (each task's entry in
    ``heads`` is a :class:`TaskView` of it; :meth:`begin_task` activates a task's classes).
    The steps of a class-incremental segmentation stream likewise share one :class:`CISSHead`
    (per-class sigmoid 1x1 classifiers on the backbone's dense features, e.g. a
    :class:`~cl_bench.models.backbones.UNetEncoder`).

    Shapes:
        ``forward(x, task_name)``: ``x`` ``(B, C, *spatial)`` -> segmentation logits
        ``(B, K, *spatial)``, regression prediction ``(B,)`` (normalised target scale) or
        class logits ``(B, K)``.

    Raises:
        KeyError: ``forward`` with a task that has no head.
    """

    def __init__(self, backbone: ViTEncoder, decoder_feature_size: int = 8,
                 regression_width: int = 64, decoder_image_skip: bool = False,
                 regression_stages: tuple[int, ...] = (4,), regression_rectify: bool = False,
                 decoder: str = "unetr", regression_norm: str = "layer",
                 decoder_fp32: bool = False, decoder_channels_last: bool = False):
        super().__init__()
        self.decoder_fp32, self.decoder_channels_last = decoder_fp32, decoder_channels_last
        self.regression_stages = tuple(regression_stages)
        self.regression_rectify = bool(regression_rectify)
        self.regression_norm = regression_norm
        self.decoder = decoder
        self.backbone = backbone
        self.heads = nn.ModuleDict()
        self.decoder_feature_size = decoder_feature_size
        self.regression_width = regression_width
        self.decoder_image_skip = decoder_image_skip

    @property
    def encoder(self) -> ViTEncoder | UNetEncoder:
        """The encoder (:class:`ViTEncoder` or :class:`UNetEncoder`), also inside a peft wrapper."""
        enc = self.backbone
        return enc.get_base_model() if hasattr(enc, "get_base_model") else enc

    def add_head(self, task: Task) -> nn.Module:
        """Create the head of ``task``: the builder of its kind's head family
        (:attr:`cl_bench.kinds.KindSpec.head`) for this encoder family (:data:`HEAD_BUILDERS`):
        segmentation decoder, regression MLP or pooled head, classifier.

        Raises:
            UnknownKindError: ``task.kind`` is not in :data:`cl_bench.kinds.KINDS`.
            ValueError: a CISS step (they share one head: :meth:`add_heads`).
            ConfigError: a head the encoder family cannot build (a class-IL head on Swin).
        """
        enc = self.encoder
        family = "swin" if isinstance(enc, SwinEncoder) else "vit"
        head = HEAD_BUILDERS[family][kind_spec(task.kind).head](self, task, enc)
        self.heads[task.name] = head
        return head

    def add_heads(self, stream: list[Task]) -> None:
        """Create the heads of every task of ``stream``: one shared head per kind for the tasks
        whose kind shares one (:attr:`cl_bench.kinds.KindSpec.shared_head`: class-IL
        classification, CISS steps; built in :data:`~cl_bench.kinds.KINDS` order, from
        :data:`SHARED_HEAD_BUILDERS`), one head each for the others. On a Swin encoder every
        task gets its own head (shared heads are refused by :meth:`add_head`).

        Raises:
            UnknownKindError, ValueError, ConfigError: as :meth:`add_head`.
        """
        if isinstance(self.encoder, SwinEncoder):
            for task in stream:
                self.add_head(task)
            return
        sharing: dict[str, list[Task]] = {}  # kind -> its tasks that share one head
        for task in stream:
            if kind_spec(task.kind).shared_head(task):
                sharing.setdefault(task.kind, []).append(task)
        shared = {kind: SHARED_HEAD_BUILDERS[KINDS[kind].head](self.encoder, sharing[kind])
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
        """The backbone's outputs for ``x``: encoder tokens ``(B, N, D)`` (Swin: the deepest
        stage) and per-block hidden states (Swin: the stages, then a shared decoder's features).
        ``task_names``: the heads that will read them; a shared decoder (``backbone.decoder=
        shared``) runs only if one of them reads it (``reads_decoder``), e.g. not for the age
        head. ``None``: everything runs."""
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


def _shared_only(model: ContinualModel, task: Task, enc) -> nn.Module:
    """A CISS step has no head of its own: they share one (:meth:`ContinualModel.add_heads`)."""
    raise ValueError(f"task {task.name!r}: CISS steps share one head (add_heads)")


def _vit_decoder(model: ContinualModel, task: Task, enc) -> nn.Module:
    """UNETR's decoder (:class:`SegmentationDecoder`) on a ViT's hidden states."""
    return SegmentationDecoder(enc.in_channels, enc.hidden_size, enc.num_layers, enc.patch_size,
                               task.num_classes, model.decoder_feature_size, enc.spatial_dims,
                               model.decoder_image_skip)


def _vit_regressor(model: ContinualModel, task: Task, enc) -> nn.Module:
    """Pooled tokens -> MLP -> one scalar (:class:`RegressionHead`)."""
    return RegressionHead(enc.hidden_size, model.regression_width)


def _vit_classifier(model: ContinualModel, task: Task, enc) -> nn.Module:
    """A task-IL task's own linear classifier (:class:`ClassificationHead`)."""
    return ClassificationHead(enc.hidden_size, task.num_classes)


def _swin_decoder(model: ContinualModel, task: Task, enc: SwinEncoder) -> nn.Module:
    """Swin UNETR's decoder or the linear head, see :mod:`cl_bench.models.swin`. A checkpoint
    decoder kept by ``backbone.decoder_weights=keep`` initialises every segmentation decoder
    (strictly: same widths and image skip)."""
    if model.decoder == "linear":
        return LinearSegmentationHead(enc.stage_channels, task.num_classes)
    if model.decoder == "shared":
        return DecoderOutputHead(enc.feature_channels[-1], task.num_classes)
    head = SwinDecoder(enc.in_channels, enc.stage_channels, model.decoder_feature_size,
                       task.num_classes, model.decoder_image_skip,
                       fp32=model.decoder_fp32, channels_last=model.decoder_channels_last)
    if enc.pretrained_decoder:
        from cl_bench.models.backbones import load_strict
        load_strict(head, enc.pretrained_decoder, enc.weights, "segmentation decoder",
                    "backbone.decoder_feature_size (= the checkpoint's feature_size), "
                    "backbone.decoder_image_skip=true and the task's classes, or "
                    "backbone.decoder_weights=drop")
    return head


def _swin_regressor(model: ContinualModel, task: Task, enc: SwinEncoder) -> nn.Module:
    """A pooled-stage regression head (:class:`PooledRegressionHead`); with a shared decoder its
    features are a sixth input (index 5)."""
    return PooledRegressionHead(enc.feature_channels, model.regression_width,
                                model.regression_stages, model.regression_rectify,
                                norm=model.regression_norm)


def _swin_classifier(model: ContinualModel, task: Task, enc: SwinEncoder) -> nn.Module:
    """A pooled-stage classifier; a shared (class-IL) head is refused."""
    if kind_spec(task.kind).shared_head(task):
        raise ConfigError(f"backbone=swin_unetr: task {task.name!r} of kind {task.kind!r} "
                          f"({task.scenario}) is not supported on a Swin backbone; use a ViT "
                          "or UNet backbone for class-incremental streams")
    return PooledClassificationHead(enc.stage_channels, task.num_classes)


#: the head builders per encoder family (``vit``: :class:`ViTEncoder` and :class:`UNetEncoder`,
#: ``swin``: :class:`SwinEncoder`) and head family (:attr:`cl_bench.kinds.KindSpec.head`):
#: ``builder(model, task, encoder) -> nn.Module``; a new kind's head family needs an entry in each
HEAD_BUILDERS: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "vit": {"decoder": _vit_decoder, "regressor": _vit_regressor,
            "classifier": _vit_classifier, "ciss": _shared_only},
    "swin": {"decoder": _swin_decoder, "regressor": _swin_regressor,
             "classifier": _swin_classifier, "ciss": _shared_only},
}

#: the builders of a head shared by a stream's tasks of one kind (ViT and UNet encoders), per
#: head family: ``builder(encoder, tasks) -> nn.Module``; each task's entry in
#: ``ContinualModel.heads`` is a :class:`TaskView` of it
SHARED_HEAD_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "classifier": lambda enc, tasks: ClassILHead(enc.hidden_size, [len(t.classes) for t in tasks]),
    "ciss": lambda enc, tasks: CISSHead(enc.hidden_size, [t.classes for t in tasks],
                                        enc.spatial_dims),
}


def make_model(in_channels: PositiveInt = 1, img_size: PositiveInt = 64,
               patch_size: PositiveInt = 16, hidden_size: PositiveInt = 192,
               mlp_dim: PositiveInt = 768, num_layers: PositiveInt = 12,
               num_heads: PositiveInt = 3, spatial_dims: Literal[2, 3] = 3,
               dropout_rate: Fraction = 0.0, weights: str | None = None,
               decoder_feature_size: PositiveInt = 8, regression_width: PositiveInt = 64,
               decoder_image_skip: bool = False) -> ContinualModel:
    """Build the stream's :class:`ContinualModel` from a ``conf/backbone`` node.

    Args: as :class:`~cl_bench.models.backbones.ViTEncoder` plus the head widths.

    Raises:
        ConfigError / DataError: see :class:`~cl_bench.models.backbones.ViTEncoder`.
    """
    enc = ViTEncoder(in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers,
                     num_heads, spatial_dims, dropout_rate, weights)
    return ContinualModel(enc, decoder_feature_size, regression_width, decoder_image_skip)


def make_unet_model(in_channels: PositiveInt = 1, img_size: PositiveInt = 64,
                    spatial_dims: Literal[2, 3] = 2, channels: list[PositiveInt] = (16, 32, 64),
                    strides: list[PositiveInt] = (2, 2), num_res_units: NonNegativeInt = 1,
                    feature_size: PositiveInt = 32, norm: str = "instance",
                    weights: str | None = None) -> ContinualModel:
    """Build a :class:`ContinualModel` on a MONAI UNet feature extractor (``conf/backbone/unet2d``).

    Args: as :class:`~cl_bench.models.backbones.UNetEncoder`.

    Raises:
        ConfigError, DataError: see :class:`~cl_bench.models.backbones.UNetEncoder`.
    """
    enc = UNetEncoder(in_channels, img_size, spatial_dims, tuple(channels), tuple(strides),
                      num_res_units, feature_size, norm, weights)
    return ContinualModel(enc)


def make_swin_model(in_channels: PositiveInt = 1, img_size: Annotated[int, at.Ge(64)] = 64,
                    feature_size: PositiveInt = 24, depths: list[PositiveInt] = (2, 2, 2, 2),
                    num_heads: list[PositiveInt] = (3, 6, 12, 24), window_size: PositiveInt = 4,
                    dropout_rate: Fraction = 0.0, normalize: bool = False,
                    weights: str | None = None, decoder_weights: Literal["drop", "keep"] = "drop",
                    decoder_feature_size: PositiveInt = 12, decoder_image_skip: bool = False,
                    regression_width: NonNegativeInt = 0,
                    regression_stages: list[NonNegativeInt] | None = None,
                    regression_rectify: bool = False,
                    decoder: Literal["shared", "unetr", "linear"] = "shared",
                    regression_norm: Literal["train", "batch", "layer"] = "train",
                    fused_attention: bool = True, decoder_fp32: bool = True,
                    decoder_channels_last: bool = True) -> ContinualModel:
    """Build a :class:`ContinualModel` on MONAI's Swin transformer (``conf/backbone/swin_unetr``).

    Args: as :class:`~cl_bench.models.swin.SwinEncoder` plus the head widths
    (``decoder_feature_size``: the Swin UNETR decoder's width at 1/2 resolution;
    ``regression_width`` 0 = a linear regression head on the ``regression_stages`` (0-4: encoder
    stages; 5: the shared decoder's features; ``None``, the default: the backbone's final
    representation, 5 with ``decoder="shared"`` and 4 otherwise), averaged after a ReLU with
    ``regression_rectify``;
    ``decoder``: ``shared`` (the backbone's pretrained decoder), ``unetr`` or ``linear``;
    ``decoder_fp32`` / ``decoder_channels_last``: see :class:`~cl_bench.models.swin.SwinDecoder`).

    Raises:
        ConfigError: ``decoder_image_skip`` with the shared decoder (pretrained without one);
            and see :class:`~cl_bench.models.swin.SwinEncoder`. DataError: see there.
    """
    if decoder_image_skip and decoder == "shared":
        raise ConfigError("backbone.decoder_image_skip=true: the shared pretrained decoder "
                          "(backbone.decoder=shared) has no raw-image skip; use it with "
                          "backbone.decoder=unetr")
    if regression_stages is None:  # the final representation of what the backbone is
        regression_stages = (5,) if decoder == "shared" else (4,)
    enc = SwinEncoder(in_channels, img_size, feature_size, tuple(depths), tuple(num_heads),
                      window_size, dropout_rate, normalize, weights, decoder_weights,
                      fused_attention, decoder == "shared", decoder_feature_size,
                      bool(decoder_fp32), bool(decoder_channels_last))
    return ContinualModel(enc, decoder_feature_size, regression_width, decoder_image_skip,
                          tuple(regression_stages), regression_rectify, decoder, regression_norm,
                          bool(decoder_fp32), bool(decoder_channels_last))
