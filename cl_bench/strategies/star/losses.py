"""STAR's losses: the rebalanced BCE, OCFM, SAD and the optional old-class negatives, and the old
model's pseudo-labels (formulas, sources and deviations in :mod:`cl_bench.strategies.star`).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from cl_bench.kinds import IGNORE_INDEX, bce_per_class
from cl_bench.models.heads import CISSHead
from cl_bench.strategies.star.prototypes import _rows, classifier_weights


# ------------------------------------------------------------------------------- losses
def rebalanced_bce(new_logits: torch.Tensor, label: torch.Tensor, new_ids: list[int],
                   fake_logits: torch.Tensor | None = None, bg_logits: torch.Tensor | None = None,
                   w_fake: float = 0.0, w_bg: float = 0.0, pos_weight: float = 1.0) -> torch.Tensor:
    """STAR's L_mbce (0-d): ``sum_c (L_ori,c + w_f L_fake,c + w_b L_bg,c) / (1 + w_f + w_b)``.

    Args:
        new_logits: ``(B, C_new, *spatial)`` logits of the step's classes;
        label: ``(B, 1, *spatial)``;
        new_ids: their class ids; fake_logits, bg_logits: ``(N, C_new)`` logits of fake and
        repeated background features (target 0; None or empty: no term);
        w_fake, w_bg: :func:`replay_weights`; pos_weight: weight of positive pixels in L_ori.
    """
    ids = torch.as_tensor(list(new_ids), device=label.device).view(1, -1, *[1] * (label.dim() - 2))
    target = (label == ids)
    valid = (label != IGNORE_INDEX).expand_as(target)
    loss = bce_per_class(new_logits, target, valid, pos_weight)
    for logits, w in ((fake_logits, w_fake), (bg_logits, w_bg)):
        if logits is not None and len(logits) and w:
            loss = loss + w * bce_per_class(logits, torch.zeros_like(logits))
    return (loss / (1 + w_fake + w_bg)).sum()


def ocfm_loss(features: torch.Tensor, old_features: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """OCFM (0-d): ``sum (F - F_old)^2 M / (sum M * D)``; 0 when M is empty.

    Args:
        features, old_features: ``(B, D, *spatial)``; mask: ``(B, 1, *spatial)`` bool/0-1.
    """
    m = mask.to(features.dtype)
    den = m.sum() * features.shape[1]
    if float(den) == 0:
        return features.sum() * 0
    return ((features - old_features).square() * m).sum() / den


def class_centres(features: torch.Tensor, label: torch.Tensor,
                  class_ids: list[int]) -> torch.Tensor:
    """``(C, D)``: ``normalise(sum_{label = c} normalise(F))`` per class (0 if absent)."""
    f = F.normalize(_rows(features), p=2, dim=1)
    lab = label.reshape(-1)
    ids = torch.as_tensor(list(class_ids), dtype=lab.dtype, device=lab.device)
    onehot = (lab[:, None] == ids[None]).to(f.dtype)
    return F.normalize(onehot.T @ f, p=2, dim=1)


def sad_loss(centres: torch.Tensor, old_prototypes: torch.Tensor) -> torch.Tensor:
    """SAD (0-d): ``mean_n 1 / min_o ||p_o - c_n||`` (distances clamped at 1e-6).

    Args:
        centres: ``(C_new, D)`` (:func:`class_centres`); old_prototypes: ``(K_old, D)``.
    """
    dist = (centres[:, None, :] - old_prototypes[None, :, :]).norm(dim=2)
    return (1 / dist.min(dim=1).values.clamp_min(1e-6)).mean()


def old_negative_loss(features: torch.Tensor, label: torch.Tensor, new_ids: list[int],
                      head: CISSHead, n_old: int) -> torch.Tensor:
    """Our deviation (off in the official code): BCE with target 0 of the old classes' logits
    on the pixels the step's ground truth labels as a new class (0-d; 0 when there are none).

    A pixel labelled new class n is not an old class (one label per pixel), but STAR's loss
    trains only the new classes' logits, so nothing stops an old classifier from claiming the
    new class's pixels; on look-alike classes (digits) it does, and the new classes collapse.
    The old classifiers' weights are detached, so the loss moves only the features (the old
    classifiers stay as in the official code). Per old class: the mean over those pixels,
    then the sum over old classes (as L_ori sums over classes).

    Args:
        features: F ``(B, D, *spatial)``; label: ``(B, 1, *spatial)`` global ids;
        new_ids: the step's class ids; head: the CISS head; n_old: number of old classes
        (its first ``n_old`` channels).
    """
    ids = torch.as_tensor(list(new_ids), device=label.device)
    rows = features.movedim(1, -1)[torch.isin(label[:, 0], ids)]
    if not len(rows) or not n_old:
        return features.new_zeros(())
    weight, bias = classifier_weights(head, len(head.cls))  # detached
    logits = rows @ weight[:n_old].to(rows).T + bias[:n_old].to(rows)
    return bce_per_class(logits, torch.zeros_like(logits)).sum()


def old_predictions(old_logits: torch.Tensor) -> torch.Tensor:
    """``(B, K_old, *spatial)`` logits -> ``(B, *spatial)``: 0 background, k + 1 for channel k."""
    prob = torch.sigmoid(old_logits.float())
    return torch.where(prob.amax(dim=1) > 0.5, prob.argmax(dim=1) + 1,
                       torch.zeros_like(prob[:, 0], dtype=torch.long))
