"""A fresh supervised model per task, trained from scratch: what the data allow.

Not a continual-learning method but the reference a reader needs beside one: each task gets its
own randomly initialised MONAI network, trained on that task's data with the stream's steps and
batch size, and nothing is shared between tasks (no backbone, no transfer, no forgetting: BWT is 0
by construction and the R matrix's diagonal is an upper bound per task *for this budget*).

* segmentation: MONAI ``BasicUNet`` (a 2D/3D U-Net, Ronneberger et al. 2015, arXiv 1505.04597;
  Çiçek et al. 2016, arXiv 1606.06650), widths ``features`` (default 16, 16, 32, 64, 128, 16:
  1.4 M parameters in 3D);
* regression / classification: the same U-Net's encoder (its ``conv_0`` and four ``down``
  blocks), the global average of every level concatenated, then an MLP (regression: one scalar
  on the task's normalised target) or a linear classifier. On images smaller than 32 pixels a
  side the ``down`` blocks that would leave a level of one pixel (where instance norm has nothing
  to normalise) are left out: 8x8 digits keep ``conv_0``, ``down_1`` and ``down_2``.

The foundation-model backbone built from ``backbone=`` is dropped at ``setup`` (the run's
``params.json`` then counts only the per-task networks). Class-incremental streams are refused:
their tasks share one label space, which "a fresh model per task" cannot score.
"""

from __future__ import annotations

from typing import Annotated

import annotated_types as at
import torch
from torch import nn

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.kinds import kind_spec
from cl_bench.ranges import NonNegativeFloat, PositiveFloat, PositiveInt
from cl_bench.strategies.base import Strategy

#: the six widths of MONAI's ``BasicUNet``
UNetWidths = Annotated[list[PositiveInt], at.Len(6, 6)]


class NoBackbone(nn.Module):
    """Stands in for the dropped backbone: passes the image through unchanged.

    Shapes: ``forward(x)`` -> ``(x, [])``.
    """

    def __init__(self, in_channels: int, spatial_dims: int):
        super().__init__()
        self.in_channels, self.spatial_dims = in_channels, spatial_dims
        self.hidden_size, self.num_layers, self.patch_size = 0, 0, 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        return x, []

    @staticmethod
    def tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
        return x


class ScratchSegmenter(nn.Module):
    """MONAI ``BasicUNet`` on the raw image.

    Shapes: ``forward(to_grid, image, hidden, image)`` -> logits ``(B, K, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 features: tuple[int, ...]):
        super().__init__()
        from monai.networks.nets import BasicUNet
        self.net = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels,
                             out_channels=num_classes, features=features)

    def forward(self, to_grid, tokens, hidden, image) -> torch.Tensor:
        return self.net(image)


class ScratchEncoderHead(nn.Module):
    """The encoder of a MONAI ``BasicUNet`` + global pooling of every level + MLP / linear.

    Args:
        spatial_dims, in_channels: of the images; features: the U-Net's widths;
        out: 1 (regression: ``(B,)``) or the number of classes (logits ``(B, K)``);
        width: MLP hidden width (regression);
        side: the images' smallest side (pixels / voxels); levels that would be 1 wide are
            dropped (``None``: all five).

    Shapes: ``forward(to_grid, image, hidden, image)`` -> ``(B,)`` or ``(B, K)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: tuple[int, ...],
                 out: int, width: int = 64, regression: bool = True, side: int | None = None):
        super().__init__()
        from monai.networks.nets import BasicUNet
        unet = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1,
                         features=features)
        levels = [unet.conv_0, unet.down_1, unet.down_2, unet.down_3, unet.down_4]
        if side is not None:  # level k is side / 2^k wide: keep those at least 2 wide
            levels = levels[:max(1, min(5, int(side).bit_length() - 1))]
        self.levels = nn.ModuleList(levels)
        d = sum(features[:len(levels)])
        self.norm = nn.LayerNorm(d)
        self.regression = regression
        self.out = (nn.Sequential(nn.Linear(d, width), nn.GELU(), nn.Linear(width, 1))
                    if regression else nn.Linear(d, out))

    def forward(self, to_grid, tokens, hidden, image) -> torch.Tensor:
        x, pooled = image, []
        for level in self.levels:
            x = level(x)
            pooled.append(x.flatten(2).mean(-1))
        y = self.out(self.norm(torch.cat(pooled, dim=1)))
        return y.squeeze(-1) if self.regression else y


def _side(task: Task) -> int:
    """The smallest spatial side of ``task``'s images (its first training sample's)."""
    return int(min(task.train[0]["image"].shape[1:]))


class Scratch(Strategy):
    """A fresh from-scratch network per task (see module docstring).

    Args:
        features: the ``BasicUNet`` widths (6 values).
        regression_width: MLP width of the regression head.
        lr: unused (there is no shared part); head_lr: AdamW learning rate of the task's network;
        weight_decay: AdamW weight decay.

    Raises:
        ConfigError: ``strategy.features`` not 6 positive ints; at ``setup``, a class-incremental
        stream or a task kind it cannot model.
    """

    name = "scratch"

    def __init__(self, features: UNetWidths = (16, 16, 32, 64, 128, 16),
                 regression_width: PositiveInt = 64, lr: PositiveFloat = 1e-3,
                 head_lr: PositiveFloat = 1e-3, weight_decay: NonNegativeFloat = 0.0):
        super().__init__(lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        features = tuple(features)
        self.features, self.regression_width = features, int(regression_width)

    def setup(self, model: nn.Module, stream: list[Task]) -> None:
        super().setup(model, stream)
        enc = model.encoder
        c, sd = enc.in_channels, enc.spatial_dims
        builders = {  # a fresh network per head family (cl_bench.kinds.KindSpec.head)
            "decoder": lambda task, side: ScratchSegmenter(sd, c, task.num_classes,
                                                           self.features),
            "regressor": lambda task, side: ScratchEncoderHead(sd, c, self.features, 1,
                                                               self.regression_width, side=side),
            "classifier": lambda task, side: ScratchEncoderHead(
                sd, c, self.features, task.num_classes, regression=False, side=side)}
        for task in stream:
            spec = kind_spec(task.kind)
            if spec.head not in builders or spec.shared_head(task):
                raise ConfigError(
                    f"strategy=scratch: task {task.name!r} ({task.kind}, {task.scenario}) shares "
                    "a label space with other tasks; a fresh model per task cannot score it. "
                    "Use strategy=joint as the upper bound of a class-incremental stream")
            side = _side(task)
            if spec.head == "decoder" and side < 32:
                raise ConfigError(
                    f"strategy=scratch: task {task.name!r} has images {side} wide; its U-Net "
                    "(MONAI BasicUNet) halves them four times and needs at least 32 "
                    "(e.g. tasks.size=32)")
            model.heads[task.name] = builders[spec.head](task, side)
        model.backbone = NoBackbone(c, sd)

    def before_task(self, t: int, task: Task) -> None:
        self.freeze_all_but(self.model.heads[task.name])
