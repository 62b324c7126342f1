"""STAR's replay bookkeeping: fake features and background repetitions per iteration, the
pixel counts carried from step to step, and the storage compared with raw replay (formulas in
:mod:`cl_bench.strategies.star`).
"""

from __future__ import annotations

import math

import torch

from cl_bench.data.ciss import Setting
from cl_bench.ranges import check_value


# --------------------------------------------------------------------- replay bookkeeping
def _check_setting(setting: str) -> None:
    """Raises ConfigError (``tasks.setting``) for a setting other than overlapped / disjoint."""
    check_value("tasks.setting", setting, Setting)


def replay_counts(n_prev: torch.Tensor, n_pred: torch.Tensor, iters_per_epoch: int,
                  setting: str) -> torch.Tensor:
    """Fake features per iteration for each old class ``(K_old,)`` int64.

    overlapped: ``int((n_prev - n_pred) / iters)``; disjoint: ``int(n_prev / iters)``; >= 0
    (truncation toward zero as ``tensor.to(torch.int)`` in the official code).
    """
    _check_setting(setting)
    n_prev = torch.as_tensor(n_prev, dtype=torch.float64)
    n_pred = torch.as_tensor(n_pred, dtype=torch.float64)
    num = n_prev - n_pred if setting == "overlapped" else n_prev
    return torch.trunc(num / max(int(iters_per_epoch), 1)).clamp_min(0).long()


def background_ratio(n_prev_bg: float, n_pred_bg: float, n_new_classes: int,
                     setting: str) -> float:
    """Background repetition ratio r (>= 0; 0 if the old model predicts no background).

    overlapped: ``n_prev_bg (1 - 0.01 |C_new|) / n_pred_bg - 0.5``;
    disjoint: ``n_prev_bg / n_pred_bg``.
    """
    _check_setting(setting)
    n_prev_bg, n_pred_bg = float(n_prev_bg), float(n_pred_bg)
    if n_pred_bg <= 0:
        return 0.0
    if setting == "overlapped":
        return max(n_prev_bg * (1 - 0.01 * n_new_classes) / n_pred_bg - 0.5, 0.0)
    return max(n_prev_bg / n_pred_bg, 0.0)


def updated_counts(n_prev: torch.Tensor, n_pred: torch.Tensor, n_new_classes: int,
                   setting: str, variant: str = "basic") -> torch.Tensor:
    """Background + old-class pixel counts carried past step t ``(K_old + 1,)`` (see module doc)."""
    _check_setting(setting)
    prev = torch.as_tensor(n_prev, dtype=torch.float32).clone()
    pred = torch.as_tensor(n_pred, dtype=torch.float32)
    out = prev.clone()
    if variant == "lite":
        out[0] = pred[0] + prev[0]
    elif setting == "overlapped":
        out[0] = 0.5 * pred[0] + prev[0] * (1 - 0.01 * n_new_classes)
    else:
        out[0] = pred[0] + prev[0]
        out[1:] = prev[1:] + pred[1:]
    return out


def replay_weights(n_fake: int, n_bg: int, n_positions: int,
                   bg_ratio: float) -> tuple[float, float]:
    """``(w_f, w_b) = (n_fake / Q, r * n_bg / Q)``, Q = feature positions of the batch."""
    q = max(int(n_positions), 1)
    return n_fake / q, bg_ratio * n_bg / q


# ------------------------------------------------------------------------------- storage
def storage_bytes(n_classes: int, feature_dim: int, image_shape: tuple[int, ...],
                  variant: str = "basic") -> dict:
    """Bytes STAR keeps after learning ``n_classes`` vs a raw replay buffer of one image
    (float32, ``image_shape`` = ``(C, *spatial)``) + mask (uint8) per class.

    Returns:
        ``{"stored": {part: bytes, "total": ...}, "raw_replay": {...}, "ratio": raw / stored}``.
    """
    k, d = int(n_classes), int(feature_dim)
    stored = {"pixel_counts": (k + 1) * 4}
    if variant == "basic":
        stored.update(prototypes=k * d * 4, noise=k * d * 4, norm_mean_sd=2 * k * 4)
    stored["total"] = sum(stored.values())
    pixels = math.prod(image_shape[1:])
    per_sample = math.prod(image_shape) * 4 + pixels
    raw = {"samples": k, "image_shape": list(image_shape), "bytes_per_sample": per_sample,
           "total": k * per_sample}
    return {"stored": stored, "raw_replay": raw, "ratio": raw["total"] / stored["total"]}
