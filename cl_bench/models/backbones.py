"""Backbones: MONAI Vision Transformers and UNet, their heads and the loading of their
(foundation-model) weights.

The encoder is MONAI's :class:`monai.networks.nets.ViT` (Dosovitskiy et al. 2021, arXiv 2010.11929;
3D use as in UNETR, Hatamizadeh et al. 2022, arXiv 2103.10497). Its linear layers are named
``qkv``, ``out_proj`` (attention) and ``linear1``, ``linear2`` (MLP), the names peft's LoRA targets.
:class:`UNetEncoder` is a MONAI UNet as a dense feature extractor. Both build their heads with
:class:`ViTHeads` (:mod:`cl_bench.models.heads`); their ``conf/backbone`` factories are
:func:`make_model` and :func:`make_unet_model`. The shipped checkpoints of every family are named
in :data:`PRETRAINED` and resolved by :func:`resolve_weights`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from monai.networks.nets import ViT
from torch import nn

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError, DataError
from cl_bench.models.continual import ContinualModel, HeadFactory
from cl_bench.models.heads import (CISSHead, ClassificationHead, ClassILHead, RegressionHead,
                                   SegmentationDecoder)
from cl_bench.models.weights import WRAPPER_PREFIXES, log_detail, read_state_dict
from cl_bench.ranges import Fraction, NonNegativeInt, PositiveInt

log = logging.getLogger(__name__)

#: checkpoints shipped inside the package; each one's card (``<name>.json`` beside it) names the
#: script and command that produced it (:data:`PRODUCED_BY`)
ASSETS = Path(__file__).resolve().parent.parent / "assets"
PRETRAINED = {"vit3d_tiny_mae": ASSETS / "vit3d_tiny_mae.safetensors",
              "vit2d_mnist_uci": ASSETS / "vit2d_mnist_uci.safetensors",
              "unet2d_uci": ASSETS / "unet2d_uci.safetensors",
              "swin_brain_ssl": ASSETS / "swin_brain_ssl.safetensors",
              "swin_brain_fm": ASSETS / "swin_brain_fm.safetensors"}
PRODUCED_BY = {"vit3d_tiny_mae": "scripts/pretrain_backbone.py",
               "vit2d_mnist_uci": "scripts/pretrain_backbone_2d.py",
               "unet2d_uci": "scripts/pretrain_backbone_2d.py --target unet2d_uci",
               "swin_brain_ssl": "scripts/pretrain_swin_ssl.py",
               "swin_brain_fm": "scripts/pretrain_swin.py --recipe tissue_inpaint_volumes --steps 2000"}

# prefixes under which other codebases store a MONAI ViT state dict
_PREFIXES = WRAPPER_PREFIXES + ("state_dict.", "encoder.", "vit.", "swinViT.")
# UNETR decoder modules: present in a UNETR checkpoint, not part of the encoder
_UNETR_DECODER = ("encoder1.", "encoder2.", "encoder3.", "encoder4.", "decoder2.", "decoder3.",
                  "decoder4.", "decoder5.", "out.")


def check_input(x: torch.Tensor, in_channels: int, img_size: int, spatial_dims: int) -> None:
    """An encoder's input check: ``x`` must be ``(B, in_channels, img_size, ...)`` with
    ``spatial_dims`` spatial axes.

    Raises:
        DataError: another shape, naming both and the keys that set them.
    """
    expected = (in_channels,) + (img_size,) * spatial_dims
    if tuple(x.shape[1:]) != expected:
        raise DataError(f"backbone expects images of shape (B, {', '.join(map(str, expected))}),"
                        f" got {tuple(x.shape)}; set backbone.img_size / the stream's size to agree")


class GridFeatures:
    """Mixin of the encoders whose features are already grids ``(B, C, *spatial)`` (the UNet's
    output, the Swin transformer's deepest stage): no token reshaping, global-average pooling."""

    @staticmethod
    def tokens_to_grid(features: torch.Tensor) -> torch.Tensor:
        """The features are already a grid ``(B, C, *spatial)``: returned as they are."""
        return features

    @staticmethod
    def pool(features: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> ``(B, C)``: the global average."""
        return features.flatten(2).mean(-1)


class ViTEncoder(nn.Module):
    """A MONAI ViT used as the stream's shared encoder.

    Args:
        in_channels: image channels C.
        img_size: cubic (3D) or square (2D) input side length in voxels; must be divisible by
            ``patch_size``.
        patch_size: patch side length in voxels.
        hidden_size: token width; ``mlp_dim``, ``num_layers``, ``num_heads`` as in MONAI's ViT.
        spatial_dims: 3 (volumes) or 2 (images).
        weights: ``None`` (random init), the name of a shipped checkpoint (``"vit3d_tiny_mae"``) or
            a path to a ``.safetensors``/``.pt``/``.pth``/``.ckpt`` file holding a MONAI ViT,
            UNETR or compatible state dict (see :func:`load_encoder_weights`).

    Shapes:
        input ``(B, C, *[img_size] * spatial_dims)``; output ``(tokens, hidden)`` with tokens
        ``(B, N, hidden_size)``, ``N = (img_size / patch_size) ** spatial_dims`` and ``hidden``
        the list of every block's output, each ``(B, N, hidden_size)``.

    Raises:
        ConfigError: sizes that do not divide or a missing shipped checkpoint name.
        DataError: an unreadable checkpoint or one whose keys do not match.
    """

    #: default peft LoRA targets: the attention projections of every block
    lora_targets = ("qkv", "out_proj")

    def __init__(self, in_channels: int = 1, img_size: int = 64, patch_size: int = 16,
                 hidden_size: int = 192, mlp_dim: int = 768, num_layers: int = 12,
                 num_heads: int = 3, spatial_dims: int = 3, dropout_rate: float = 0.0,
                 weights: str | None = None):
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(f"backbone.img_size ({img_size}) must be divisible by "
                              f"backbone.patch_size ({patch_size})")
        if hidden_size % num_heads:
            raise ConfigError(f"backbone.hidden_size ({hidden_size}) must be divisible by "
                              f"backbone.num_heads ({num_heads})")
        self.in_channels, self.img_size, self.patch_size = in_channels, img_size, patch_size
        self.hidden_size, self.num_layers, self.spatial_dims = hidden_size, num_layers, spatial_dims
        self.grid = img_size // patch_size
        self.vit = ViT(in_channels=in_channels, img_size=img_size, patch_size=patch_size,
                       hidden_size=hidden_size, mlp_dim=mlp_dim, num_layers=num_layers,
                       num_heads=num_heads, spatial_dims=spatial_dims, dropout_rate=dropout_rate,
                       classification=False)
        self.weights = weights
        if weights:
            load_encoder_weights(self.vit, resolve_weights(weights))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        check_input(x, self.in_channels, self.img_size, self.spatial_dims)
        return self.vit(x)

    @staticmethod
    def pool(tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, hidden)`` tokens -> ``(B, hidden)``: their mean (MONAI's ViT has no [CLS])."""
        return tokens.mean(1)

    def tokens_to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, hidden)`` tokens -> ``(B, hidden, g, g[, g])`` feature map, g = img/patch."""
        b = tokens.shape[0]
        shape = (b,) + (self.grid,) * self.spatial_dims + (self.hidden_size,)
        dims = (0, self.spatial_dims + 1) + tuple(range(1, self.spatial_dims + 1))
        return tokens.reshape(shape).permute(dims).contiguous()


def resolve_weights(weights: str) -> Path:
    """Map a shipped checkpoint name or a user path to an existing file.

    Raises:
        ConfigError: unknown shipped name; DataError: the path does not exist.
    """
    if weights in PRETRAINED:
        path = PRETRAINED[weights]
        if not path.is_file():
            raise ConfigError(f"backbone.weights={weights}: the shipped checkpoint {path} is missing;"
                              f" reinstall cl_bench or rebuild it with {PRODUCED_BY[weights]}")
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DataError(f"backbone.weights: no checkpoint file at {path} (expected a .safetensors, "
                        f".pt, .pth or .ckpt file, or one of {sorted(PRETRAINED)})")
    return path


def map_vit_keys(sd: dict[str, torch.Tensor], target_keys: set[str]) -> tuple[dict, list[str]]:
    """Rename checkpoint keys to MONAI ViT keys.

    Strips wrapper prefixes (``module.``, ``model.``, ``backbone.``, ``encoder.``, ``vit.``) until a
    key matches ``target_keys``; UNETR decoder keys (``encoder1.`` … ``out.``) are dropped and
    returned as ignored. Keys that still match nothing are kept under their name so the caller
    reports them as unexpected.

    Returns:
        ``(mapped state dict, ignored keys)``.
    """
    mapped, ignored = {}, []
    for key, value in sd.items():
        k = key
        while k not in target_keys and k.startswith(_PREFIXES):
            k = k.split(".", 1)[1]
        if k not in target_keys and k.startswith(_UNETR_DECODER):
            ignored.append(key)
            continue
        mapped[k] = value
    return mapped, ignored


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], path: Path, what: str,
                keys_to_check: str) -> None:
    """Load ``sd`` into ``module`` strictly (cast to the module's dtypes).

    Raises:
        DataError: missing keys, unexpected keys or shape mismatches, all listed, naming
        ``path`` and the config keys to check.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def show(xs):
            return ", ".join(xs[:8]) + (f" … (+{len(xs) - 8} more)" if len(xs) > 8 else "") or "none"
        raise DataError(
            f"backbone.weights: {path} does not fit the configured {what}.\n"
            f"  missing keys ({len(missing)}): {show(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {show(unexpected)}\n"
            f"  shape mismatches ({len(shapes)}): {show(shapes)}\n"
            f"  Check {keys_to_check}.")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def load_encoder_weights(vit: ViT, path: Path) -> None:
    """Load a foundation-model checkpoint into a MONAI ViT, strictly.

    Accepts MONAI ``ViT`` and ``UNETR`` state dicts (the UNETR decoder is ignored) under the usual
    wrapper prefixes. The position embedding must match the configured grid.

    Raises:
        DataError: unreadable file, or missing/unexpected keys or shape mismatches (all listed).
    """
    sd = read_state_dict(path)
    mapped, ignored = map_vit_keys(sd, set(vit.state_dict()))
    load_strict(vit, mapped, path, "backbone",
                "backbone.hidden_size/num_layers/num_heads/patch_size/img_size/in_channels")
    log_detail(log, "loaded %d encoder tensors from %s (%d decoder keys ignored)", len(mapped),
               path, len(ignored))


class UNetEncoder(GridFeatures, nn.Module):
    """A MONAI ``UNet`` as a dense feature extractor (encoder + decoder) for 2D/3D segmentation
    streams whose classifier grows (class-incremental segmentation).

    The UNet (Ronneberger et al. 2015, arXiv 1505.04597; MONAI's residual-unit variant, Kerfoot
    et al. 2018) maps the image to a ``feature_size``-channel map at full resolution, followed by
    a ReLU, so features are non-negative like the ASPP output of the DeepLab-v3 decoder that CISS
    methods such as STAR classify with 1x1 convolutions. It offers the interface of
    :class:`ViTEncoder` that heads and the runner use (``in_channels``, ``spatial_dims``,
    ``hidden_size`` = ``feature_size``, ``tokens_to_grid`` = identity). It has no ``qkv``-style
    linear layers, so LoRA-family strategies refuse it in ``setup``.

    Args:
        in_channels: image channels; img_size: input side (checked at forward);
        spatial_dims: 2 or 3; channels: UNet widths per level; strides: down-sampling per level
            (``len(channels) - 1`` entries); num_res_units: residual units per block;
        feature_size: width of the output feature map F; norm: MONAI norm name.
        weights: ``None`` (random init), a shipped checkpoint name (``"unet2d_uci"``, pretrained
            on canvases of sklearn's UCI digits by ``scripts/pretrain_backbone_2d.py``) or a path
            to a state dict of MONAI's ``UNet`` with this configuration (loaded strictly).

    Shapes:
        input ``(B, C, *[img_size] * spatial_dims)``; output ``(features, [])`` with features
        ``(B, feature_size, *[img_size] * spatial_dims)``.

    Raises:
        ConfigError: ``strides`` not one shorter than ``channels``, an image side that the
        strides do not divide, or an unknown shipped checkpoint name;
        DataError: an unreadable checkpoint or one that does not fit (keys listed).
    """

    def __init__(self, in_channels: int = 1, img_size: int = 64, spatial_dims: int = 2,
                 channels: tuple[int, ...] = (16, 32, 64), strides: tuple[int, ...] = (2, 2),
                 num_res_units: int = 1, feature_size: int = 32, norm: str = "instance",
                 weights: str | None = None):
        super().__init__()
        from monai.networks.nets import UNet

        channels, strides = tuple(int(c) for c in channels), tuple(int(s) for s in strides)
        if len(strides) != len(channels) - 1:
            raise ConfigError(f"backbone.strides: expected {len(channels) - 1} entries (one fewer "
                              f"than backbone.channels {list(channels)}), got {list(strides)}")
        down = int(torch.tensor(strides).prod())
        if img_size % down:
            raise ConfigError(f"backbone.img_size ({img_size}) must be divisible by the product "
                              f"of backbone.strides ({down})")
        self.in_channels, self.img_size, self.spatial_dims = in_channels, img_size, spatial_dims
        self.hidden_size, self.num_layers, self.patch_size = feature_size, 0, 1
        self.unet = UNet(spatial_dims=spatial_dims, in_channels=in_channels,
                         out_channels=feature_size, channels=channels, strides=strides,
                         num_res_units=num_res_units, norm=norm)
        self.weights = weights
        if weights:
            path = resolve_weights(weights)
            sd = {k.removeprefix("unet."): v for k, v in read_state_dict(path).items()}
            load_strict(self.unet, sd, path, "UNet",
                        "backbone.channels/strides/num_res_units/feature_size/in_channels")
            log_detail(log, "loaded %d UNet tensors from %s", len(sd), path)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        check_input(x, self.in_channels, self.img_size, self.spatial_dims)
        return torch.relu(self.unet(x)), []


@dataclass(frozen=True)
class ViTHeads(HeadFactory):
    """The heads of :class:`ViTEncoder` and :class:`UNetEncoder` (:mod:`cl_bench.models.heads`),
    read from the encoder's ``hidden_size`` (token width; the UNet's feature channels),
    ``num_layers``, ``patch_size``, ``in_channels`` and ``spatial_dims``.

    Args:
        decoder_feature_size: width of a segmentation decoder (:class:`SegmentationDecoder`,
            UNETR's) at full resolution.
        regression_width: hidden width of a regression head (:class:`RegressionHead`).
        decoder_image_skip: the decoders get UNETR's raw-image skip.

    Builds: segmentation -> :class:`SegmentationDecoder`; regression -> :class:`RegressionHead`;
    task-IL classification -> :class:`ClassificationHead`; shared: class-IL classification ->
    one :class:`ClassILHead`, CISS steps -> one :class:`CISSHead`.

    Raises:
        ValueError: a segmentation decoder on an encoder whose ``patch_size`` is not 16 (as
        :class:`SegmentationDecoder`); a CISS step's own head (:class:`HeadFactory`).
    """

    decoder_feature_size: int = 8
    regression_width: int = 64
    decoder_image_skip: bool = False
    backbone = "vit"

    def build_decoder(self, task: Task, enc: nn.Module) -> nn.Module:
        """UNETR's decoder (:class:`SegmentationDecoder`) on a ViT's hidden states."""
        return SegmentationDecoder(enc.in_channels, enc.hidden_size, enc.num_layers,
                                   enc.patch_size, task.num_classes, self.decoder_feature_size,
                                   enc.spatial_dims, self.decoder_image_skip)

    def build_regressor(self, task: Task, enc: nn.Module) -> nn.Module:
        """Pooled tokens -> MLP -> one scalar (:class:`RegressionHead`)."""
        return RegressionHead(enc.hidden_size, self.regression_width)

    def build_classifier(self, task: Task, enc: nn.Module) -> nn.Module:
        """A task-IL task's own linear classifier (:class:`ClassificationHead`)."""
        return ClassificationHead(enc.hidden_size, task.num_classes)

    def build_shared(self, head: str, tasks: list[Task], enc: nn.Module) -> nn.Module:
        """Class-IL classification: one growing :class:`ClassILHead`; CISS: one
        :class:`CISSHead` on the encoder's dense features."""
        if head == "classifier":
            return ClassILHead(enc.hidden_size, [len(t.classes) for t in tasks])
        if head == "ciss":
            return CISSHead(enc.hidden_size, [t.classes for t in tasks], enc.spatial_dims)
        return super().build_shared(head, tasks, enc)


def make_model(in_channels: PositiveInt = 1, img_size: PositiveInt = 64,
               patch_size: PositiveInt = 16, hidden_size: PositiveInt = 192,
               mlp_dim: PositiveInt = 768, num_layers: PositiveInt = 12,
               num_heads: PositiveInt = 3, spatial_dims: Literal[2, 3] = 3,
               dropout_rate: Fraction = 0.0, weights: str | None = None,
               decoder_feature_size: PositiveInt = 8, regression_width: PositiveInt = 64,
               decoder_image_skip: bool = False) -> ContinualModel:
    """Build the stream's :class:`~cl_bench.models.continual.ContinualModel` on a MONAI ViT
    (``conf/backbone/vit*.yaml``, ``unetr.yaml``).

    Args: as :class:`ViTEncoder` plus the head settings of :class:`ViTHeads`.

    Raises:
        ConfigError / DataError: see :class:`ViTEncoder`.
    """
    enc = ViTEncoder(in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers,
                     num_heads, spatial_dims, dropout_rate, weights)
    return ContinualModel(enc, ViTHeads(decoder_feature_size, regression_width,
                                        decoder_image_skip))


def make_unet_model(in_channels: PositiveInt = 1, img_size: PositiveInt = 64,
                    spatial_dims: Literal[2, 3] = 2, channels: list[PositiveInt] = (16, 32, 64),
                    strides: list[PositiveInt] = (2, 2), num_res_units: NonNegativeInt = 1,
                    feature_size: PositiveInt = 32, norm: str = "instance",
                    weights: str | None = None) -> ContinualModel:
    """Build a :class:`~cl_bench.models.continual.ContinualModel` on a MONAI UNet feature
    extractor (``conf/backbone/unet2d``), with :class:`ViTHeads`' default settings.

    Args: as :class:`UNetEncoder`.

    Raises:
        ConfigError, DataError: see :class:`UNetEncoder`.
    """
    enc = UNetEncoder(in_channels, img_size, spatial_dims, tuple(channels), tuple(strides),
                      num_res_units, feature_size, norm, weights)
    return ContinualModel(enc, ViTHeads())
