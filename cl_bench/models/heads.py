"""Task heads on top of a :class:`~cl_bench.models.backbones.ViTEncoder`.

* :class:`SegmentationDecoder`: the UNETR decoder (Hatamizadeh et al. 2022, arXiv 2103.10497)
  built from MONAI's UNETR blocks (module names as in MONAI's ``UNETR``). Deviations from UNETR:
  the skip paths up-sample with transposed convolutions only (``conv_block=False``); the default
  tiny backbone uses ``feature_size`` 8 instead of 16 and no raw-image skip (``image_skip=False``),
  so the decoder reads the backbone's features only: a light "probe" decoder, 6x cheaper on CPU,
  and one through which a drifting backbone shows as forgetting. ``backbone=unetr`` keeps the skip.
* :class:`RegressionHead`: layer-normed mean of the tokens -> MLP -> one scalar (a normalised
  target; the task de-normalises to native units).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn


class SegmentationDecoder(nn.Module):
    """UNETR-style decoder from ViT hidden states (blocks L/4, L/2, 3L/4 and the output).

    Args:
        in_channels: image channels C (the input skip).
        hidden_size: token width of the encoder.
        num_layers: encoder depth L (chooses the skip layers).
        patch_size: encoder patch side; must be 16 (four 2x up-samplings), as in UNETR.
        out_channels: segmentation classes K including background.
        feature_size: decoder width at full resolution (UNETR: 16).
        spatial_dims: 2 or 3.
        image_skip: UNETR's full-resolution skip from the raw image (``encoder1``). Without it
            (the light default) every voxel's prediction comes from the backbone's features
            alone, as for a probe on a foundation model; the last stage only up-samples.

    Shapes:
        ``forward(grid_fn, tokens, hidden, image)`` returns logits ``(B, K, *spatial)``.

    Raises:
        ValueError: patch size other than 16.
    """

    def __init__(self, in_channels: int, hidden_size: int, num_layers: int, patch_size: int,
                 out_channels: int, feature_size: int = 8, spatial_dims: int = 3,
                 image_skip: bool = False):
        super().__init__()
        if patch_size != 16:
            raise ValueError(f"SegmentationDecoder needs backbone.patch_size=16, got {patch_size}")
        fs, sd, norm = feature_size, spatial_dims, "instance"
        # UNETR takes blocks 3, 6, 9 of 12: the same fractions of any depth
        self.skip_layers = tuple(min(k * num_layers // 4, num_layers - 1) for k in (1, 2, 3))
        self.image_skip = image_skip
        self.encoder2 = UnetrPrUpBlock(sd, hidden_size, fs * 2, 2, 3, 1, 2, norm, False, True)
        self.encoder3 = UnetrPrUpBlock(sd, hidden_size, fs * 4, 1, 3, 1, 2, norm, False, True)
        self.encoder4 = UnetrPrUpBlock(sd, hidden_size, fs * 8, 0, 3, 1, 2, norm, False, True)
        self.decoder5 = UnetrUpBlock(sd, hidden_size, fs * 8, 3, 2, norm, res_block=True)
        self.decoder4 = UnetrUpBlock(sd, fs * 8, fs * 4, 3, 2, norm, res_block=True)
        self.decoder3 = UnetrUpBlock(sd, fs * 4, fs * 2, 3, 2, norm, res_block=True)
        if image_skip:
            self.encoder1 = UnetrBasicBlock(sd, in_channels, fs, 3, 1, norm, res_block=True)
            self.decoder2 = UnetrUpBlock(sd, fs * 2, fs, 3, 2, norm, res_block=True)
        else:  # a single transposed convolution to full resolution
            self.decoder2 = UnetrPrUpBlock(sd, fs * 2, fs, 0, 3, 1, 2, norm, False, True)
        self.out = UnetOutBlock(sd, fs, out_channels)

    def forward(self, to_grid, tokens: torch.Tensor, hidden: list[torch.Tensor],
                image: torch.Tensor) -> torch.Tensor:
        a, b, c = (to_grid(hidden[i]) for i in self.skip_layers)
        enc2, enc3, enc4 = self.encoder2(a), self.encoder3(b), self.encoder4(c)
        dec3 = self.decoder5(to_grid(tokens), enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        if self.image_skip:
            return self.out(self.decoder2(dec1, self.encoder1(image)))
        return self.out(self.decoder2(dec1))


class RegressionHead(nn.Module):
    """Pooled tokens -> MLP -> one scalar.

    Args:
        hidden_size: token width D.
        width: MLP hidden width.

    Shapes:
        ``forward(grid_fn, tokens (B, N, D), hidden, image)`` -> ``(B,)`` normalised prediction.
    """

    def __init__(self, hidden_size: int, width: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, to_grid, tokens: torch.Tensor, hidden: list[torch.Tensor],
                image: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(tokens).mean(dim=1)).squeeze(-1)


class ClassificationHead(nn.Module):
    """Pooled tokens -> linear classifier (a task-incremental task's own head).

    Args:
        hidden_size: token width D; num_classes: the task's classes K.

    Shapes:
        ``forward(grid_fn, tokens (B, N, D), hidden, image)`` -> logits ``(B, K)``.
    """

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.fc = nn.Linear(hidden_size, num_classes)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` tokens -> ``(B, D)`` pooled, normalised features."""
        return self.norm(tokens).mean(dim=1)

    def forward(self, to_grid, tokens: torch.Tensor, hidden: list[torch.Tensor],
                image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(tokens))


#: logit given to classes outside the active set (finite, so distillation stays finite)
MASKED_LOGIT = -1e4


class ClassILHead(ClassificationHead):
    """One growing classifier shared by the tasks of a class-incremental stream.

    The output units of task k's classes become active when task k begins
    (:meth:`begin_task`); logits of inactive classes are :data:`MASKED_LOGIT`, so training on
    task k and evaluation afterwards classify among every class seen so far, with no task id
    (van de Ven et al. 2022, arXiv 1904.07734, "class-IL"). Evaluating a task not yet trained
    also activates that task's classes (so the ``init`` row and FWT are measurable).

    Args:
        hidden_size: token width D; sizes: number of classes of each task, in stream order.

    Shapes:
        ``forward(grid_fn, tokens, hidden, image, task_index)`` -> logits ``(B, sum(sizes))``.
    """

    def __init__(self, hidden_size: int, sizes: list[int]):
        super().__init__(hidden_size, sum(sizes))
        self.sizes = list(sizes)
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.long))

    def begin_task(self, t: int) -> None:
        """Activate the classes of tasks ``0..t``."""
        self.n_seen.fill_(max(int(self.n_seen), t + 1))

    def active(self, task_index: int) -> torch.Tensor:
        """``(K,)`` bool mask of the output units active when running task ``task_index``."""
        upto = sum(self.sizes[:max(int(self.n_seen), task_index + 1)])
        mask = torch.zeros(sum(self.sizes), dtype=torch.bool, device=self.n_seen.device)
        mask[:upto] = True
        return mask

    def forward(self, to_grid, tokens, hidden, image, task_index: int = 0) -> torch.Tensor:
        logits = super().forward(to_grid, tokens, hidden, image)
        return logits.masked_fill(~self.active(task_index), MASKED_LOGIT)


class CISSHead(nn.Module):
    """The growing per-class sigmoid classifier of class-incremental semantic segmentation.

    One 1x1 convolution per step on the shared feature map F (as STAR's ``cls`` ModuleList on the
    DeepLab-v3 ASPP output; Chen et al., NeurIPS 2023, code github.com/jinpeng0528/STAR). Output
    channel k scores foreground class ``class_ids[k]`` with an independent sigmoid; background
    has no channel: a pixel is background where no active class has probability > 0.5, else the
    class of the largest probability (STAR's evaluation rule). Channels of steps not begun yet
    are :data:`MASKED_LOGIT` (sigmoid 0, zero loss and gradient against a 0 target), so shapes
    stay fixed while classes are added. As for :class:`ClassILHead`, running step t activates
    the classes of steps ``0..max(seen, t)``.

    Args:
        feature_size: channels of F; steps: the foreground class ids of each step, in order;
        spatial_dims: 2 or 3.

    Shapes:
        ``forward(to_grid, features (B, F, *spatial), hidden, image, task_index)`` -> logits
        ``(B, K, *spatial)``, K = number of foreground classes of the stream;
        :meth:`classify` on features ``(N, F, *any)`` -> ``(N, K, *any)`` with every step
        active (for replayed features); :meth:`predict` logits -> class map ``(B, *spatial)``.
    """

    def __init__(self, feature_size: int, steps: list[list[int]], spatial_dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.steps = [list(map(int, s)) for s in steps]
        self.sizes = [len(s) for s in self.steps]
        self.class_ids = [c for s in self.steps for c in s]
        self.cls = nn.ModuleList([conv(feature_size, n, kernel_size=1) for n in self.sizes])
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.long))

    def begin_task(self, t: int) -> None:
        """Activate the classes of steps ``0..t``."""
        self.n_seen.fill_(max(int(self.n_seen), t + 1))

    def n_active(self, task_index: int) -> int:
        """Number of active channels when running step ``task_index``."""
        return sum(self.sizes[:max(int(self.n_seen), task_index + 1)])

    def active_classes(self, task_index: int) -> list[int]:
        """Global class ids of the active channels, in channel order."""
        return self.class_ids[:self.n_active(task_index)]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """All steps' 1x1 classifiers on ``features`` ``(N, F, *any)`` -> ``(N, K, *any)``."""
        return torch.cat([c(features) for c in self.cls], dim=1)

    def forward(self, to_grid, features, hidden, image, task_index: int = 0) -> torch.Tensor:
        logits = self.classify(to_grid(features))
        k = self.n_active(task_index)
        if k == logits.shape[1]:
            return logits
        mask = torch.arange(logits.shape[1], device=logits.device) < k
        return logits.masked_fill(~mask.view(1, -1, *[1] * (logits.dim() - 2)), MASKED_LOGIT)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, *spatial)`` -> class map ``(B, *spatial)`` (0 = background)."""
        prob = torch.sigmoid(logits.float())
        best = prob.argmax(dim=1)
        ids = torch.as_tensor(self.class_ids, device=logits.device)[best]
        return torch.where(prob.amax(dim=1) > 0.5, ids, torch.zeros_like(ids))


class TaskView(nn.Module):
    """Task ``task_index``'s entry in ``ContinualModel.heads`` for a head shared by all tasks."""

    def __init__(self, shared: ClassILHead | CISSHead, task_index: int):
        super().__init__()
        self.shared, self.task_index = shared, task_index

    def forward(self, to_grid, tokens, hidden, image) -> torch.Tensor:
        return self.shared(to_grid, tokens, hidden, image, self.task_index)
