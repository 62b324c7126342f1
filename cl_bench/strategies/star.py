"""STAR: prototype replay for class-incremental semantic segmentation (CISS).

Sources:

* ``basic``: Chen et al., "Saving 100x Storage: Prototype Replay for Reconstructing Training
  Sample Distribution in Class-Incremental Semantic Segmentation", NeurIPS 2023 (no arXiv id
  found); official code github.com/jinpeng0528/STAR (``trainer/trainer_voc.py``,
  ``base/base_trainer.py``, ``models/loss.py``, ``models/model.py``), read for every formula below.
* ``lite``: Chen et al., "Replay Without Saving: Prototype Derivation and Distribution Rebalance
  for Class-Incremental Semantic Segmentation", IEEE TPAMI 2025; official code
  github.com/jinpeng0528/STAR-TPAMI (``compute_prototype.py``, ``trainer/trainer_voc.py``,
  STAR-Lite scripts with ``--noise_type dist``).

The model (``cl_bench.models.heads.CISSHead``): one 1x1 classifier per step on a shared feature
map F ``(B, D, *spatial)`` (STAR: the 256-d ASPP output; here the backbone's dense features),
an independent sigmoid per foreground class; a pixel is background where no class has
probability > 0.5. Everything trains (backbone and every classifier), as in the official code.

**After step t** (one pass over the step's training data, labels at the feature resolution,
which is the identity for a stride-1 backbone), per new class c with pixels P_c:

* ``p_c = normalise(sum_{i in P_c} normalise(F_i))``                      (prototype, D)
* ``sigma_c = sqrt(mean_{i in P_c} (normalise(F_i) - p_c)^2)`` per channel  (noise, D)
* ``mu_c, s_c`` = mean and (unbiased) SD of ``||F_i||`` over P_c           (norm statistics)
* ``N_c = |P_c|``; at step 0 also ``N_bg`` = background pixels.
  ``basic`` keeps all of these; ``lite`` keeps only the pixel counts N.

**Before step t >= 1** the frozen old model (a copy of the model after step t-1) labels the
step's data: ``pred`` = its prediction restricted to old classes; ``N_pred[c]`` = pixels that are
background in the ground truth and predicted c; ``N_pred[bg]`` = background in both. Then, with
``I`` iterations per epoch and ``|C_t|`` new classes (see :func:`replay_counts`,
:func:`background_ratio`, :func:`updated_counts`):

* fake features per iteration and old class: ``n_c = int((N[c] - N_pred[c]) / I)`` (overlapped)
  or ``int(N[c] / I)`` (disjoint, and ``lite`` in both settings), at least 0;
* background repetition ratio ``r = N[bg] (1 - 0.01 |C_t|) / N_pred[bg] - 0.5`` (overlapped) or
  ``N[bg] / N_pred[bg]`` (disjoint, ``lite``), at least 0;
* counts carried to the next step: overlapped ``N'[bg] = 0.5 N_pred[bg] + N[bg](1 - 0.01|C_t|)``,
  ``N'[c] = N[c]``; disjoint ``N'[bg] = N_pred[bg] + N[bg]``, ``N'[c] = N[c] + N_pred[c]``;
  ``lite`` ``N'[bg] = N_pred[bg] + N[bg]``, ``N'[c] = N[c]``; then the new classes' counts.

**Training step t >= 1** (per batch of B images with Q = B * prod(spatial) feature positions):

* fake features: basic ``f = (p_c + eps * sigma_c) * s``, ``eps ~ N(0, 1)``, ``s ~ N(mu_c, s_c)``
  drawn per element as in the official code; lite ``f = ||F||_batch * normalise(p_c + tan(theta)
  u)``, ``u`` a random unit vector orthogonal to p_c, ``theta = 2 asin(min(|z sigma|, 1.999) / 2)``,
  ``z ~ N(0, 1)``, ``sigma`` = mean over old classes of the distance from p_c to its nearest other
  prototype, ``||F||_batch`` the mean feature norm of the batch (no gradient);
* background repetition: the features of pixels that are background in the ground truth *and*
  predicted background by the old model are classified a second time;
* rebalanced BCE (:func:`rebalanced_bce`) on the *new* classes' logits only, fake and repeated
  features with target 0: ``L_mbce = sum_{c in C_t} (L_ori,c + w_f L_fake,c + w_b L_bg,c) /
  (1 + w_f + w_b)``, ``w_f = n_fake / Q``, ``w_b = r * n_bg / Q``; ``L_ori`` uses ``pos_weight``;
* OCFM (old-class feature maintaining, official ``PKDLoss``, :func:`ocfm_loss`):
  ``sum (F - F_old)^2 M / (sum M * D)``, M = pixels background in the ground truth and an old
  class for the old model;
* SAD (similarity-aware discriminative loss, official ``ContLoss``, :func:`sad_loss`):
  ``mean_{n in C_t} 1 / min_o ||p_o - c_n||``, ``c_n = normalise(sum_{label = n}
  normalise(F))`` of the batch (0 for a class absent from the batch, which adds a constant);
* ``L = L_mbce + ocfm_weight * L_OCFM + sad_weight * L_SAD`` (code: 1, 5, 0.05). Step 0 trains
  ``L_ori`` alone. :meth:`STAR.task_loss` returns ``L_mbce``; :meth:`STAR.training_loss` the rest.

**Lite prototype derivation** (before step t >= 1, :func:`derive_prototypes`): with the old
classifiers' weights W ``(K, D)`` and biases b, find ``x >= 0`` ``(K, D)`` minimising
``BCE(x W^T + b, I_K)`` (AdamW, lr 2.5e-4, weight decay 0.01, 500,000 iterations, projected to
``x >= 0`` after each step, the iterate of lowest loss kept), then ``p_c = normalise(
normalise(x_c) + normalise(sum normalise(F_old)))`` over the pixels of the step's data that the
old model predicts as c (:func:`combine_lite`). Nothing but the pixel counts is stored.

Shapes: features ``(B, D, *spatial)``; labels ``(B, 1, *spatial)`` global class ids (0 background,
255 ignored); prototypes/noise ``(K, D)``; norm statistics ``(2, K)`` (mean, SD); counts
``(K + 1,)`` background first, then classes in the head's channel order.

Storage (:meth:`STAR.save`): ``<run_dir>/star/storage.json`` compares the bytes kept (float32
tensors) with a raw replay buffer of one image (float32) + mask (uint8) per stored class.

Errors: :class:`~cl_bench.errors.ConfigError` for a bad hyper-parameter (names the key) and, in
:meth:`STAR.setup`, for a stream that is not a CISS stream.

Deviations:

* pseudo-labels of the old model use the evaluation rule (sigmoid > 0.5); the official training
  code thresholds the raw logit at 0.5 (i.e. sigmoid > 0.62) for OCFM, background repetition and
  the predicted counts;
* ``L_ori`` averages over pixels that are not 255 (the official code treats 255 as background);
* basic: the noise of a step >= 1 class is measured around that class's own prototype (the
  official ``compute_noise`` indexes the concatenated old + new prototypes with the new-class
  index, i.e. uses an old class's prototype);
* the iterations per epoch I = ceil(n_train / B), B the size of the first training batch of the
  step; the per-iteration counts apply to every step whatever ``train.max_steps`` is;
* one learning rate for every classifier (``head_lr``) and one for the backbone (``lr``), AdamW,
  no poly schedule (official: SGD, backbone lr, ASPP and old classifiers 10x, new 100x);
  old classifiers get no gradient from STAR's losses, so they only move by weight decay;
* OCFM is 0 for a batch without masked pixels (official: 0/0); SAD clamps distances at 1e-6;
* an empty class gets a zero prototype/noise/norm; the norm SD of a 1-pixel class is 0;
  lite with a single old class uses ``sigma = 0``;
* lite derivation: the iterate with the lowest loss is kept (official: the iterate right after
  it); Adam's update is written out (same formulas as ``torch.optim.AdamW``) for speed;
* optional, off by default (``old_negative_weight`` 0 = the official loss): a BCE with target 0
  on the old classes' logits at the pixels labelled a new class, reaching the features only
  (:func:`old_negative_loss`). On seg_mnist the official loss lets old digit classifiers claim
  the new digits (after step 1 of 6-2 disjoint: mean max old-class probability 0.75 on
  new-class pixels vs 0.44 / 0.33 for the new classes; new-class mIoU 0.006 after the last
  step, seed 0); with weight 1 it is 0.11 (README "CISS" has the 3-seed table).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cl_bench.data.base import CISS, IGNORE_INDEX, Task
from cl_bench.data.ciss import SETTINGS, Setting
from cl_bench.errors import ConfigError
from cl_bench.ranges import NonNegativeFloat, PositiveFloat, PositiveInt, check_value
from cl_bench.models.heads import CISSHead, TaskView
from cl_bench.models.losses import bce_per_class
from cl_bench.files import write_json
from cl_bench.strategies.base import Strategy

log = logging.getLogger(__name__)

VARIANTS = ("basic", "lite")


# ------------------------------------------------------------------------ prototype statistics
def _rows(features: torch.Tensor) -> torch.Tensor:
    """``(B, D, *spatial)`` -> ``(B * prod(spatial), D)``, rows in ``label.reshape(-1)`` order."""
    return features.movedim(1, -1).reshape(-1, features.shape[1])


def class_sums(features: torch.Tensor, label: torch.Tensor, class_ids: list[int]) -> dict:
    """Per-class sums of one batch (float64), to be added over batches.

    Args:
        features: ``(B, D, *spatial)``; label: ``(B, 1, *spatial)`` global ids (255 ignored);
        class_ids: the K classes to summarise.

    Returns:
        ``count (K,)``, ``sum_nf (K, D)`` = sum of normalise(F), ``sum_nf2 (K, D)`` = sum of its
        squares, ``sum_norm (K,)``, ``sum_norm2 (K,)`` = sums of ``||F||`` and ``||F||^2``,
        ``background`` (0-d) = pixels labelled 0.
    """
    f = _rows(features.detach()).double()
    lab = label.reshape(-1).to(f.device)
    ids = torch.as_tensor(list(class_ids), dtype=lab.dtype, device=lab.device)
    onehot = (lab[:, None] == ids[None]).double()
    nf = F.normalize(f, p=2, dim=1)
    norm = f.norm(dim=1)
    return {"count": onehot.sum(0), "sum_nf": onehot.T @ nf, "sum_nf2": onehot.T @ nf.square(),
            "sum_norm": onehot.T @ norm, "sum_norm2": onehot.T @ norm.square(),
            "background": (lab == 0).sum().double()}


def add_sums(total: dict | None, part: dict) -> dict:
    """``total + part`` entry-wise (``total`` None: ``part``)."""
    return dict(part) if total is None else {k: total[k] + part[k] for k in total}


def statistics_from_sums(sums: dict) -> dict:
    """STAR's per-class statistics from :func:`class_sums` totals (float32).

    Returns:
        ``prototypes (K, D)`` = normalise(sum normalise(F)); ``noise (K, D)`` = per-channel RMS of
        normalise(F) - p_c; ``norm (2, K)`` = mean and unbiased SD of ``||F||``; ``counts (K,)``;
        ``background`` (0-d). Empty classes get zeros.
    """
    n = sums["count"]
    proto = F.normalize(sums["sum_nf"], p=2, dim=1)
    safe = n.clamp_min(1)[:, None]
    msd = (sums["sum_nf2"] - 2 * proto * sums["sum_nf"] + n[:, None] * proto.square()) / safe
    noise = torch.where(n[:, None] > 0, msd.clamp_min(0).sqrt(), torch.zeros_like(msd))
    mean = sums["sum_norm"] / n.clamp_min(1)
    var = (sums["sum_norm2"] - n * mean.square()) / (n - 1).clamp_min(1)
    sd = torch.where(n > 1, var.clamp_min(0).sqrt(), torch.zeros_like(var))
    return {"prototypes": proto.float(), "noise": noise.float(),
            "norm": torch.stack([mean, sd]).float(), "counts": n.float(),
            "background": sums["background"].float()}


def prototype_statistics(features: torch.Tensor, label: torch.Tensor,
                         class_ids: list[int]) -> dict:
    """:func:`statistics_from_sums` of one feature map + label map (see :func:`class_sums`)."""
    return statistics_from_sums(class_sums(features, label, class_ids))


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


# ------------------------------------------------------------------------- fake features
def sample_basic(prototypes: torch.Tensor, noise: torch.Tensor, norm: torch.Tensor,
                 counts: torch.Tensor) -> torch.Tensor:
    """STAR fake features ``(sum(counts), D)``: ``(p_c + eps * sigma_c) * s``, ``s ~ N(mu_c, s_c)``
    per element (as the official code), rows grouped by class in order."""
    idx = torch.repeat_interleave(torch.arange(len(counts), device=prototypes.device),
                                  counts.to(prototypes.device))
    p = prototypes[idx]
    f = p + torch.randn_like(p) * noise[idx]
    s = torch.randn_like(f) * norm[1, idx][:, None] + norm[0, idx][:, None]
    return f * s


def sample_lite(prototypes: torch.Tensor, sigma: float, counts: torch.Tensor,
                scale: float) -> torch.Tensor:
    """STAR-Lite fake features ``(sum(counts), D)``: unit vectors at chord distance
    ``min(|z sigma|, 1.999)`` from p_c in a random direction, times ``scale``."""
    idx = torch.repeat_interleave(torch.arange(len(counts), device=prototypes.device),
                                  counts.to(prototypes.device))
    p = prototypes[idx]
    r = (torch.randn(len(p), device=p.device) * sigma).abs().clamp(max=1.999)
    theta = 2 * torch.asin(r / 2)
    u = torch.rand_like(p) - 0.5
    u = F.normalize(u - (u * p).sum(1, keepdim=True) * p, dim=1)
    return F.normalize(p + torch.tan(theta)[:, None] * u, dim=1) * scale


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


# -------------------------------------------------------------------------- lite derivation
def classifier_weights(head: CISSHead, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(K, D)`` and biases ``(K,)`` of the first ``n_steps`` step classifiers."""
    ws = [c.weight.detach().flatten(1) for c in head.cls[:n_steps]]
    bs = [c.bias.detach() if c.bias is not None else torch.zeros(len(w)) for c, w in
          zip(head.cls[:n_steps], ws)]
    return torch.cat(ws).float().cpu(), torch.cat(bs).float().cpu()


@torch.no_grad()
def derive_prototypes(weight: torch.Tensor, bias: torch.Tensor, iters: int = 500_000,
                      lr: float = 2.5e-4, weight_decay: float = 0.01,
                      return_raw: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """STAR-Lite: ``x >= 0`` ``(K, D)`` with ``sigmoid(x W^T + b) ~ I``, normalised rows.

    Minimises the mean BCE against the identity with AdamW (betas 0.9/0.999, eps 1e-8), zero
    init, projecting onto ``x >= 0`` after each step; returns normalise(x) of the lowest loss
    (and x itself if ``return_raw``).
    """
    k = weight.shape[0]
    eye = torch.eye(k)
    x = torch.zeros_like(weight)
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    b1, b2, eps = 0.9, 0.999, 1e-8
    best, best_x = math.inf, x.clone()
    wt = weight.T.contiguous()
    for step in range(1, int(iters) + 1):
        z = torch.addmm(bias, x, wt)
        loss = float(F.binary_cross_entropy_with_logits(z, eye))
        if loss < best:
            best, best_x = loss, x.clone()
        g = (torch.sigmoid(z) - eye).div_(k * k) @ weight
        x.mul_(1 - lr * weight_decay)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2 ** step)).add_(eps)
        x.addcdiv_(m, denom, value=-lr / (1 - b1 ** step)).clamp_(min=0)
    z = torch.addmm(bias, x, wt)
    if float(F.binary_cross_entropy_with_logits(z, eye)) < best:
        best_x = x
    unit = F.normalize(best_x, p=2, dim=1)
    return (unit, best_x) if return_raw else unit


def combine_lite(derived: torch.Tensor, data_sum: torch.Tensor) -> torch.Tensor:
    """``normalise(derived + normalise(data_sum))``: derived ``(K, D)`` unit rows, data_sum
    ``(K, D)`` = sum of normalise(F_old) over pixels the old model predicts as each class."""
    return F.normalize(derived + F.normalize(data_sum, p=2, dim=1), p=2, dim=1)


def lite_noise(prototypes: torch.Tensor) -> float:
    """Mean over classes of the distance to the nearest other prototype (0 for one class)."""
    if len(prototypes) < 2:
        return 0.0
    d = torch.cdist(prototypes.double(), prototypes.double())
    d.fill_diagonal_(math.inf)
    return float(d.min(dim=1).values.mean())


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


# ------------------------------------------------------------------------------ strategy
class STAR(Strategy):
    """STAR (``variant=basic``, NeurIPS 2023) or STAR-Lite (``variant=lite``, TPAMI 2025) on a
    CISS stream; formulas, sources and deviations in the module docstring.

    Args:
        variant: ``basic`` (stored prototypes + statistics) or ``lite`` (prototypes derived from
            the old classifier; only pixel counts stored).
        pos_weight: weight of positive pixels in L_ori (official: 4 on VOC, 30 on ADE20K);
            ``None``: the stream's ``tasks.pos_weight`` (the baselines' value).
        ocfm_weight: weight of L_OCFM (official ``pkd``: 5).
        sad_weight: weight of L_SAD (official ``cont``: 0.05).
        lite_iters, lite_lr, lite_weight_decay: AdamW of the lite derivation (official
            500,000, 2.5e-4, 0.01).
        stats_batch_size: batch size of the statistics passes (no effect on results).
        old_negative_weight: weight of :func:`old_negative_loss` (ours, not in the code;
            0 = the official loss).
        lr, head_lr, weight_decay: AdamW settings (:class:`Strategy`).

    Shapes: features ``(B, D, *spatial)``, labels ``(B, 1, *spatial)``; kept state in
    :attr:`bank`: ``numbers (K + 1,)`` and, basic, ``prototypes``/``noise (K, D)``,
    ``norm (2, K)``.

    Raises:
        ConfigError: an unknown variant, a non-positive pos_weight / lite_lr / lite_iters /
        stats_batch_size, a negative weight; in :meth:`setup`, a stream that is not a
        class-incremental segmentation stream.

    Deviations: listed in the module docstring (pseudo-label threshold, ignored pixels, noise
    of later-step classes, iterations per epoch, optimiser, degenerate cases, the optional
    old-class negatives).
    """

    name = "star"

    def __init__(self, variant: Literal["basic", "lite"] = "basic",
                 pos_weight: PositiveFloat | None = None, ocfm_weight: NonNegativeFloat = 5.0,
                 sad_weight: NonNegativeFloat = 0.05, lite_iters: PositiveInt = 500_000,
                 lite_lr: PositiveFloat = 2.5e-4, lite_weight_decay: NonNegativeFloat = 0.01,
                 stats_batch_size: PositiveInt = 16, old_negative_weight: NonNegativeFloat = 0.0,
                 lr: PositiveFloat = 1e-3, head_lr: PositiveFloat = 3e-3,
                 weight_decay: NonNegativeFloat = 0.0):
        super().__init__(lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        self.variant = variant
        self.name = "star" if variant == "basic" else "star_lite"
        self.pos_weight, self.ocfm_weight, self.sad_weight = (
            None if pos_weight is None else float(pos_weight), float(ocfm_weight),
            float(sad_weight))
        self.lite_iters, self.lite_lr = int(lite_iters), float(lite_lr)
        self.lite_weight_decay = float(lite_weight_decay)
        self.stats_batch_size = int(stats_batch_size)
        self.old_negative_weight = float(old_negative_weight)
        self.head: CISSHead | None = None
        self.setting = "overlapped"
        self.old_model: nn.Module | None = None
        #: kept across steps: numbers (K+1,), basic also prototypes/noise (K, D), norm (2, K)
        self.bank: dict[str, torch.Tensor] = {}
        #: the current step's derived quantities (t, n_pred, numbers, bg_ratio, per_iter, ...)
        self.step: dict = {}
        self.storage: list[dict] = []
        self._captured: dict[str, torch.Tensor] = {}
        self._extra: torch.Tensor | None = None
        self._hook = None

    # ------------------------------------------------------------------ hooks
    def setup(self, model: nn.Module, stream: list[Task]) -> None:
        """Attach to a CISS stream's model; keeps the features of each training forward.

        Raises:
            ConfigError: a task that is not a class-incremental segmentation step, or a
            setting other than overlapped / disjoint.
        """
        super().setup(model, stream)
        bad = [t for t in stream if t.kind != CISS]
        if bad:
            raise ConfigError(
                f"strategy={self.name} needs a class-incremental segmentation stream "
                f"(tasks=seg_mnist_6-1 or voc); got kind {bad[0].kind!r} (task {bad[0].name!r})")
        setting = stream[0].info.get("setting")
        if setting not in SETTINGS:
            raise ConfigError(f"tasks.setting: strategy={self.name} needs overlapped or "
                              f"disjoint, got {setting!r}")
        view = model.heads[stream[0].name]
        if not (isinstance(view, TaskView) and isinstance(view.shared, CISSHead)):
            raise ConfigError(f"strategy={self.name} needs the shared CISSHead of a CISS stream, "
                              f"got {type(view).__name__}")
        self.setting, self.head = setting, view.shared
        if self._hook is not None:
            self._hook.remove()
        head, store = self.head, self._captured

        def keep_features(module, args, output):
            # only the live head (a deep copy shares this function) and only while training
            if module is head and torch.is_grad_enabled():
                store["features"] = args[0](args[1])

        self._hook = self.head.register_forward_hook(keep_features)

    def before_task(self, t: int, task: Task) -> None:
        self.freeze_all_but(self.model.backbone, self.model.heads[task.name])
        self.step, self._extra, self.old_model = {"t": t}, None, None
        self._captured.clear()
        if t > 0:
            self.old_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    def task_loss(self, batch: dict, out: torch.Tensor, t: int, loss_fn) -> torch.Tensor:
        head, x, label = self.head, batch["image"], batch["label"]
        lo, hi = sum(head.sizes[:t]), sum(head.sizes[:t + 1])
        new_ids = head.class_ids[lo:hi]
        pos_weight = self.pos_weight if self.pos_weight is not None else self.stream[t].pos_weight
        feats = self._captured.pop("features", None)
        self._extra = None
        if t == 0 or self.old_model is None:
            return rebalanced_bce(out[:, lo:hi], label, new_ids, pos_weight=pos_weight)
        if feats is None:
            raise RuntimeError("STAR: the CISS head's features were not captured; was setup() "
                               "called on this model?")
        old_feats, old_logits = self._old_outputs(x, lo)
        old_pred = old_predictions(old_logits)
        self._ensure_step(t, task=None)
        self._ensure_per_iter(len(x))
        lab = label[:, 0]
        # fake features of old classes and repeated background pixels, target 0 on new classes
        counts = self.step["per_iter"]
        if self.variant == "basic":
            old_protos = self.bank["prototypes"][:lo].to(x.device)
            fake = sample_basic(old_protos, self.bank["noise"][:lo].to(x.device),
                                self.bank["norm"][:, :lo].to(x.device), counts)
        else:
            old_protos = self.step["prototypes"].to(x.device)
            scale = float(feats.detach().norm(dim=1).mean())
            fake = sample_lite(old_protos, self.step["sigma"], counts, scale)
        region_bg = (lab == 0) & (old_pred == 0)
        bg_feats = feats.movedim(1, -1)[region_bg]
        w_f, w_b = replay_weights(len(fake), len(bg_feats), lab.numel(), self.step["bg_ratio"])
        loss = rebalanced_bce(out[:, lo:hi], label, new_ids,
                              self._classify_rows(fake)[:, lo:hi] if len(fake) else None,
                              self._classify_rows(bg_feats)[:, lo:hi] if len(bg_feats) else None,
                              w_f, w_b, pos_weight)
        mask = ((lab == 0) & (old_pred > 0)).unsqueeze(1)
        extra = self.ocfm_weight * ocfm_loss(feats, old_feats, mask)
        if self.sad_weight:
            extra = extra + self.sad_weight * sad_loss(class_centres(feats, label, new_ids),
                                                       old_protos)
        if self.old_negative_weight:
            extra = extra + self.old_negative_weight * old_negative_loss(
                feats, label, new_ids, self.head, lo)
        self._extra = extra
        return loss

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        extra, self._extra = self._extra, None
        return extra

    def after_task(self, t: int, task: Task) -> None:
        """Store the step's class statistics (basic) or pixel counts (lite)."""
        head = self.head
        lo, hi = sum(head.sizes[:t]), sum(head.sizes[:t + 1])
        new_ids = head.class_ids[lo:hi]
        if t > 0 and self.old_model is not None:
            self._ensure_step(t, task)
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        total = None
        with torch.no_grad():
            for batch in self._loader(task):
                label = batch["label"]
                if self.variant == "basic":
                    feats = self.encoder_grid(self.model, batch["image"].to(device))
                else:  # lite keeps counts only: no forward pass
                    feats = torch.zeros(label.shape[0], 1, *label.shape[2:])
                total = add_sums(total, class_sums(feats, label.to(feats.device), new_ids))
        self.model.train(was_training)
        stats = statistics_from_sums(total)
        prev = stats["background"].view(1) if t == 0 else self.step["numbers"]
        self.bank["numbers"] = torch.cat([prev.float().cpu(), stats["counts"].cpu()])
        if self.variant == "basic":
            for key, dim in (("prototypes", 0), ("noise", 0), ("norm", 1)):
                new = stats[key].cpu()
                old = self.bank.get(key)
                self.bank[key] = new if old is None or t == 0 else torch.cat([old, new], dim=dim)
        self.old_model = None

    def save(self, run_dir: Path, t: int, task: Task) -> None:
        """Write ``run_dir/star/storage.json`` (stored bytes vs a raw replay buffer) and log it."""
        k = len(self.bank["numbers"]) - 1
        d = self.head.cls[0].in_channels
        shape = tuple(task.train[0]["image"].shape)
        info = storage_bytes(k, d, shape, self.variant)
        info["stored_tensor_bytes"] = int(sum(v.numel() * v.element_size()
                                              for v in self.bank.values()))
        info.update(variant=self.variant, step=t, after_task=task.name, classes_stored=k,
                    feature_dim=d)
        self.storage = [s for s in self.storage if s["step"] != t] + [info]
        write_json(Path(run_dir) / "star" / "storage.json", dict(info, history=self.storage))
        log.info("%s after %s: %d bytes kept for %d classes (%s) vs %d bytes for a raw replay "
                 "of one image + mask per class: %.1fx less", self.name, task.name,
                 info["stored"]["total"], k, ", ".join(b for b in info["stored"] if b != "total"),
                 info["raw_replay"]["total"], info["ratio"])

    def state_dict(self) -> dict:
        def plain(v):
            return v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
        return {"variant": self.variant, "bank": {k: plain(v) for k, v in self.bank.items()},
                "step": {k: plain(v) for k, v in self.step.items()},
                "storage": copy.deepcopy(self.storage)}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.bank = dict(state["bank"])
        self.step = dict(state["step"])
        self.storage = list(state.get("storage", []))

    # ---------------------------------------------------------------- helpers
    def _loader(self, task: Task) -> DataLoader:
        """The step's training data in order, with its own generator: the statistics passes
        draw nothing from the global RNG (so resumed and uninterrupted runs stay identical)."""
        return DataLoader(task.train, batch_size=self.stats_batch_size, shuffle=False,
                          generator=torch.Generator())

    @staticmethod
    def encoder_grid(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The feature map F ``(B, D, *spatial)`` the CISS head classifies."""
        return model.encoder.tokens_to_grid(model.features(x)[0])

    def _classify_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every step's classifier on feature vectors ``(N, D)`` -> ``(N, K)``."""
        spatial = self.head.cls[0].weight.dim() - 2
        return self.head.classify(rows.reshape(*rows.shape, *[1] * spatial)).flatten(1)

    def _old_outputs(self, x: torch.Tensor, n_old: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Old model's F ``(B, D, *spatial)`` and old-class logits ``(B, n_old, *spatial)``."""
        old = self.old_model.to(x.device)
        with torch.no_grad():
            feats = self.encoder_grid(old, x)
            shared = old.heads[self.stream[0].name].shared
            return feats, shared.classify(feats)[:, :n_old]

    def _ensure_step(self, t: int, task: Task | None) -> None:
        """Once per step t >= 1: the old model's counts on the step's data, the carried counts,
        the background ratio and (lite) the derived prototypes and their noise."""
        if "numbers" in self.step and self.step.get("t") == t:
            return
        task = task or self.stream[t]
        head = self.head
        n_old, n_new = sum(head.sizes[:t]), head.sizes[t]
        device = next(self.old_model.parameters()).device
        n_pred = torch.zeros(n_old + 1, dtype=torch.float64)
        data_sum = torch.zeros(n_old, head.cls[0].in_channels, dtype=torch.float64)
        with torch.no_grad():
            for batch in self._loader(task):
                feats, logits = self._old_outputs(batch["image"].to(device), n_old)
                pred = old_predictions(logits).cpu()
                bg = batch["label"][:, 0] == 0
                n_pred += torch.bincount(pred[bg].reshape(-1), minlength=n_old + 1).double()
                if self.variant == "lite":
                    onehot = F.one_hot(pred.reshape(-1), n_old + 1)[:, 1:].double()
                    data_sum += onehot.T @ F.normalize(_rows(feats.cpu()).double(), dim=1)
        prev = self.bank["numbers"]
        rule = self.setting if self.variant == "basic" else "disjoint"
        step = {"t": t, "n_pred": n_pred.float(),
                "numbers": updated_counts(prev, n_pred, n_new, self.setting, self.variant),
                "bg_ratio": background_ratio(prev[0], n_pred[0], n_new, rule)}
        if self.variant == "lite":
            start = time.perf_counter()
            w, b = classifier_weights(self.old_model.heads[self.stream[0].name].shared, t)
            derived = derive_prototypes(w, b, self.lite_iters, self.lite_lr,
                                        self.lite_weight_decay)
            step["prototypes"] = combine_lite(derived, data_sum.float())
            step["sigma"] = lite_noise(step["prototypes"])
            log.info("%s step %d: %d prototypes derived from the old classifier in %.1f s "
                     "(%d iterations), noise %.3f", self.name, t, len(derived),
                     time.perf_counter() - start, self.lite_iters, step["sigma"])
        self.step = step
        log.info("%s step %d: old-model counts on the step's data %s (background first), "
                 "background ratio %.3f", self.name, t, n_pred.long().tolist(), step["bg_ratio"])

    def _ensure_per_iter(self, batch_size: int) -> None:
        if "per_iter" in self.step:
            return
        t = self.step["t"]
        iters = math.ceil(len(self.stream[t].train) / max(batch_size, 1))
        prev, pred = self.bank["numbers"], self.step["n_pred"]
        rule = self.setting if self.variant == "basic" else "disjoint"
        self.step["iters"] = iters
        self.step["per_iter"] = replay_counts(prev[1:], pred[1:], iters, rule)
