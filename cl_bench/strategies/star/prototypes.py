"""STAR's prototypes: per-class feature statistics after a step, the fake features drawn from
them, and STAR-Lite's derivation of prototypes from the old classifiers (formulas, sources and
deviations in :mod:`cl_bench.strategies.star`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cl_bench.models.heads import CISSHead


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
