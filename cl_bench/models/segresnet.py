"""The SegResNet backbone family: MONAI's SegResNet encoder, its heads and its factory.

SegResNet (Myronenko 2018, "3D MRI brain tumor segmentation using autoencoder regularization",
arXiv 1810.11654; MONAI :class:`monai.networks.nets.SegResNet`, without the VAE branch) is a
convolutional encoder-decoder: an initial 3x3x3 convolution to ``init_filters`` channels, then
``len(blocks_down)`` levels, each (but the first) opening with a stride-2 3x3x3 convolution that
doubles the channels, followed by ``blocks_down[k]`` pre-activation residual blocks (group norm,
ReLU, 3x3x3 convolution, twice, plus the identity). The decoder mirrors it: per level a 1x1x1
convolution halving the channels, trilinear up-sampling, the encoder's skip added, residual
blocks; a final group norm, ReLU and 1x1x1 convolution to the classes.

Here the encoder (:class:`SegResNetEncoder`) is the shared backbone and each segmentation task
gets its own SegResNet decoder (:class:`SegResNetDecoder`); a regression or task-IL
classification task gets a pooled head on the deepest level (:class:`PooledLevelHead`). The
LoRA targets are the encoder's residual convolutions (``conv1.conv``, ``conv2.conv``: peft wraps
``nn.Conv3d``/``nn.Conv2d``); the initial and the down-sampling convolutions stay frozen.
Deviations: no VAE regularisation branch (MONAI's ``SegResNet`` has none either); one decoder per
task instead of one per network. No weights ship: random initialisation, or a MONAI
``SegResNet`` state dict from a local file (its encoder part; :func:`load_segresnet_weights`).

``conf/backbone/segresnet.yaml`` names :func:`make_segresnet_model`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Literal

import annotated_types as at
import torch
from monai.networks.blocks.segresnet_block import ResBlock, get_conv_layer, get_upsample_layer
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.models.backbones import GridFeatures, check_input, load_strict, resolve_weights
from cl_bench.models.continual import ContinualModel, HeadFactory
from cl_bench.models.weights import WRAPPER_PREFIXES, log_detail, read_state_dict
from cl_bench.ranges import NonNegativeInt, PositiveInt, checked

log = logging.getLogger(__name__)

#: residual blocks per encoder level (MONAI / Myronenko: 1, 2, 2, 4)
BlocksDown = Annotated[list[PositiveInt], at.MinLen(1)]
#: the keys of a MONAI SegResNet checkpoint that are its decoder (ignored by the encoder)
_DECODER_KEYS = ("up_layers.", "up_samples.", "conv_final.", "conv_final")


def _norm(num_groups: int) -> tuple:
    """MONAI's group norm spec (SegResNet's default, 8 groups)."""
    return ("GROUP", {"num_groups": num_groups})


class SegResNetEncoder(GridFeatures, nn.Module):
    """MONAI's SegResNet encoder (module docstring) as the stream's shared encoder.

    Args:
        in_channels: image channels C.
        img_size: input side in voxels (cubic / square); divisible by ``2 ** (levels - 1)``.
        spatial_dims: 3 (volumes) or 2 (images).
        init_filters: channels of the first level (doubles per level; SegResNet: 8 for
            speed, 16 or 32 in the paper's BraTS runs).
        blocks_down: residual blocks per level (SegResNet: ``(1, 2, 2, 4)``).
        num_groups: groups of every group norm; must divide ``init_filters``.
        weights: ``None`` (random init) or a path to a MONAI ``SegResNet`` state dict of this
            shape (:func:`load_segresnet_weights`).

    Shapes:
        input ``(B, C, *[img_size] * spatial_dims)``; output ``(deepest, levels)``: ``levels``
        the outputs of the ``L = len(blocks_down)`` levels, level k
        ``(B, init_filters * 2**k, *[img_size / 2**k] * spatial_dims)``; ``deepest`` is
        ``levels[-1]``. There is no ``stage_channels``: the reliance probe
        (:mod:`cl_bench.probes`, defined on a Swin's five stages) does not apply.

    Raises:
        ConfigError: a side the levels do not divide, a group count that does not divide
        ``init_filters``, a value out of its range (naming ``backbone.<key>``);
        DataError: an unreadable checkpoint or one that does not fit (keys listed).
    """

    #: peft LoRA targets: the two 3x3x3 convolutions of every residual block (MONAI
    #: ``ResBlock.conv1/conv2``, each a ``Convolution`` holding the ``nn.Conv3d`` as ``conv``)
    lora_targets: tuple[str, ...] = ("conv1.conv", "conv2.conv")

    @checked("backbone")
    def __init__(self, in_channels: PositiveInt = 1, img_size: PositiveInt = 64,
                 spatial_dims: Literal[2, 3] = 3, init_filters: PositiveInt = 8,
                 blocks_down: BlocksDown = (1, 2, 2, 4), num_groups: PositiveInt = 8,
                 weights: str | None = None):
        super().__init__()
        from monai.networks.nets import SegResNet

        blocks_down = tuple(int(b) for b in blocks_down)
        down = 2 ** (len(blocks_down) - 1)
        if img_size % down:
            raise ConfigError(f"backbone.img_size ({img_size}) must be divisible by {down} "
                              f"(2 ** (levels - 1), backbone.blocks_down={list(blocks_down)})")
        if init_filters % num_groups:
            raise ConfigError(f"backbone.num_groups ({num_groups}) must divide "
                              f"backbone.init_filters ({init_filters})")
        self.in_channels, self.img_size, self.spatial_dims = in_channels, img_size, spatial_dims
        self.init_filters, self.num_groups = init_filters, num_groups
        #: channels of each level's output, shallow to deep
        self.level_channels = [init_filters * 2 ** k for k in range(len(blocks_down))]
        self.hidden_size = self.level_channels[-1]
        self.net = SegResNet(spatial_dims=spatial_dims, init_filters=init_filters,
                             in_channels=in_channels, out_channels=1, norm=_norm(num_groups),
                             blocks_down=blocks_down, blocks_up=())
        self.net.conv_final = None  # the encoder only: no decoder, no output layer
        self.weights = weights
        if weights:
            load_segresnet_weights(self.net, weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        check_input(x, self.in_channels, self.img_size, self.spatial_dims)
        deepest, levels = self.net.encode(x)
        return deepest, levels


def load_segresnet_weights(net: nn.Module, weights: str) -> None:
    """Load the encoder part of a MONAI ``SegResNet`` state dict into ``net``, strictly.

    Wrapper prefixes (``module.``, ``model.``, ``net.``, ``backbone.``, ``_orig_mod.``) are
    stripped until a key matches; the decoder's keys (``up_layers.``, ``up_samples.``,
    ``conv_final.``) are ignored.

    Raises:
        DataError: no such file, an unreadable one, or missing / unexpected keys or shape
        mismatches (all listed, naming the config keys to check).
    """
    path = resolve_weights(weights)
    own = set(net.state_dict())
    mapped, ignored = {}, 0
    for key, value in read_state_dict(path).items():
        k = key
        while k not in own and k.startswith(WRAPPER_PREFIXES):
            k = k.split(".", 1)[1]
        if k not in own and k.startswith(_DECODER_KEYS):
            ignored += 1
            continue
        mapped[k] = value
    load_strict(net, mapped, path, "SegResNet encoder",
                "backbone.init_filters/blocks_down/num_groups/in_channels/spatial_dims")
    log_detail(log, "loaded %d SegResNet encoder tensors from %s (%d decoder keys ignored)",
               len(mapped), path, ignored)


class SegResNetDecoder(nn.Module):
    """SegResNet's decoder (module docstring) on the encoder's levels, one per segmentation task.

    Module names as MONAI ``SegResNet``'s (``up_samples``, ``up_layers``, ``conv_final``).

    Args:
        level_channels: channels of the encoder's levels, shallow to deep (each twice the one
            before, as :class:`SegResNetEncoder`'s).
        out_channels: classes K including background.
        spatial_dims: 2 or 3; num_groups: group norm groups; blocks_up: residual blocks per
            decoder level (SegResNet: 1).

    Shapes:
        ``forward(to_grid, deepest, levels, image)`` -> logits ``(B, K, *spatial)`` at the
        first level's (the input's) resolution.
    """

    def __init__(self, level_channels: list[int], out_channels: int, spatial_dims: int = 3,
                 num_groups: int = 8, blocks_up: int = 1):
        super().__init__()
        norm, sd = _norm(num_groups), spatial_dims
        self.up_samples, self.up_layers = nn.ModuleList(), nn.ModuleList()
        for c in reversed(level_channels[1:]):  # deepest first: c -> c / 2, then up-sample
            self.up_samples.append(nn.Sequential(
                get_conv_layer(sd, c, c // 2, kernel_size=1),
                get_upsample_layer(sd, c // 2, upsample_mode="nontrainable")))
            self.up_layers.append(nn.Sequential(*[ResBlock(sd, c // 2, norm=norm)
                                                  for _ in range(blocks_up)]))
        first = level_channels[0]
        self.conv_final = nn.Sequential(
            get_norm_layer(name=norm, spatial_dims=sd, channels=first),
            get_act_layer(("RELU", {"inplace": True})),
            get_conv_layer(sd, first, out_channels, kernel_size=1, bias=True))

    def forward(self, to_grid, deepest: torch.Tensor, levels: list[torch.Tensor],
                image: torch.Tensor) -> torch.Tensor:
        x = levels[-1]
        for i, (up, layer) in enumerate(zip(self.up_samples, self.up_layers)):
            x = layer(up(x) + levels[-2 - i])  # a new tensor: the levels stay as they were
        return self.conv_final(x)


class PooledLevelHead(nn.Module):
    """The deepest level's global average -> layer norm -> linear (``width`` 0) or MLP.

    Args:
        channels: the deepest level's channels D; out: outputs (1 for a regression task,
            whose output is squeezed, K for a classifier); width: MLP hidden width, 0 = linear;
        regression: squeeze the single output.

    Shapes:
        ``forward(to_grid, deepest (B, D, *grid), levels, image)`` -> ``(B,)`` (regression,
        normalised target scale) or logits ``(B, K)``.
    """

    def __init__(self, channels: int, out: int, width: int = 0, regression: bool = False):
        super().__init__()
        self.regression = regression
        self.norm = nn.LayerNorm(channels)
        self.mlp = (nn.Linear(channels, out) if not width else
                    nn.Sequential(nn.Linear(channels, width), nn.GELU(), nn.Linear(width, out)))

    def forward(self, to_grid, deepest: torch.Tensor, levels, image) -> torch.Tensor:
        out = self.mlp(self.norm(deepest.flatten(2).mean(-1)))
        return out.squeeze(-1) if self.regression else out


@dataclass(frozen=True)
class SegResNetHeads(HeadFactory):
    """The heads of a :class:`SegResNetEncoder`.

    Args:
        blocks_up: residual blocks per level of a segmentation task's :class:`SegResNetDecoder`.
        regression_width: MLP width of a regression head (:class:`PooledLevelHead`), 0 = linear.

    Builds: segmentation -> :class:`SegResNetDecoder`; regression and task-IL classification ->
    :class:`PooledLevelHead`. Shared heads (class-IL, CISS) are refused.

    Raises:
        ConfigError: a shared head (naming the backbone).
    """

    blocks_up: int = 1
    regression_width: int = 64
    backbone = "segresnet"

    def build_decoder(self, task: Task, enc: SegResNetEncoder) -> nn.Module:
        return SegResNetDecoder(enc.level_channels, task.num_classes, enc.spatial_dims,
                                enc.num_groups, self.blocks_up)

    def build_regressor(self, task: Task, enc: SegResNetEncoder) -> nn.Module:
        return PooledLevelHead(enc.level_channels[-1], 1, self.regression_width, regression=True)

    def build_classifier(self, task: Task, enc: SegResNetEncoder) -> nn.Module:
        return PooledLevelHead(enc.level_channels[-1], task.num_classes)


@checked("backbone")
def make_segresnet_model(in_channels: PositiveInt = 1, img_size: PositiveInt = 64,
                         spatial_dims: Literal[2, 3] = 3, init_filters: PositiveInt = 8,
                         blocks_down: BlocksDown = (1, 2, 2, 4), num_groups: PositiveInt = 8,
                         blocks_up: NonNegativeInt = 1, regression_width: NonNegativeInt = 64,
                         weights: str | None = None) -> ContinualModel:
    """Build a :class:`~cl_bench.models.continual.ContinualModel` on a SegResNet encoder
    (``conf/backbone/segresnet.yaml``).

    Args: as :class:`SegResNetEncoder` plus the head settings of :class:`SegResNetHeads`.

    Raises:
        ConfigError, DataError: see :class:`SegResNetEncoder`.
    """
    enc = SegResNetEncoder(in_channels, img_size, spatial_dims, init_filters, list(blocks_down),
                           num_groups, weights)
    return ContinualModel(enc, SegResNetHeads(blocks_up, regression_width))
