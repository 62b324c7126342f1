"""Input-subspace helpers shared by the gradient-projection LoRA strategies (inflora, duallora).

Two groups of functions:

* **Collecting a layer's inputs** over a task's data with forward pre-hooks
  (:func:`collect_layer_inputs`, :func:`task_images`): either the input covariance
  ``C = mean over tokens of x xᵀ`` (InfLoRA, Liang & Li 2024, arXiv 2404.00228, ``cur_matrix`` in
  its official code) or the per-sample mean token stacked as columns (the representation matrix of
  GPM, Saha et al. 2021, arXiv 2103.09762, built there from the [CLS]/patch inputs; our ViTs have no
  [CLS] token, so the mean over tokens stands in for it).
* **Pure linear algebra on those matrices** (no model, unit-tested): the GPM energy-threshold
  basis update (:func:`gpm_update`, Eq. 5 and 8-9 of GPM; the "DualGPM" update of InfLoRA's code),
  the dominant directions of a matrix outside a subspace (:func:`principal_directions`, InfLoRA's
  design of ``A_t``), projectors and the overlap measure used for the orthogonality checks
  (:func:`relative_overlap`).

Conventions: a *basis* is a ``(D, k)`` tensor with orthonormal columns (``k`` may be 0); a
*representation matrix* is ``(D, n)`` with one column per sample (or the ``(D, D)`` covariance, as
InfLoRA feeds GPM). All SVDs run in float64 on the CPU; bases are returned in float64 (cast them
where they are used).

Deviation from InfLoRA's code (``update_DualGPM``): the code keeps either the basis or, once it is
larger than D/2, its orthogonal complement ("retain" mode) to save memory; both describe the same
subspace (the stopping rule "explained energy >= eps" vs "remaining energy < 1 - eps" differs only
at exact ties), so we always keep the basis. On the first task the code takes
``r = #{cumulative energy < eps}`` directions, one fewer than needed to *reach* eps; we take the
fewest directions whose energy reaches eps on every task (the rule the code uses from task 2 on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

#: singular values below ``_RANK_TOL * largest`` count as zero (numerical rank)
_RANK_TOL = 1e-9


def empty_basis(dim: int) -> torch.Tensor:
    """A ``(dim, 0)`` float64 basis (no directions)."""
    return torch.zeros(dim, 0, dtype=torch.float64)


def task_images(dataset, batch_size: int, device: torch.device | str,
                max_samples: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the ``"image"`` batches of ``dataset`` in order, on ``device``, up to ``max_samples``.

    Shapes: each batch ``(B, C, *spatial)``.
    """
    seen = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = batch["image"]
        if max_samples is not None:
            if seen >= max_samples:
                return
            x = x[:max_samples - seen]
        seen += len(x)
        yield x.to(device)


@torch.no_grad()
def collect_layer_inputs(forward: Callable[[torch.Tensor], object],
                         modules: Mapping[str, nn.Module], batches: Iterable[torch.Tensor],
                         reduce: Literal["covariance", "mean_token"] = "covariance",
                         ) -> dict[str, torch.Tensor]:
    """Statistics of the inputs of ``modules`` while ``forward`` runs over ``batches``.

    A forward pre-hook on each module reads its first positional input ``x`` of shape
    ``(B, N, D)`` (tokens) or ``(B, D)``; no gradient is taken, the model's parameters and
    train/eval mode are left alone (the caller chooses the mode).

    Args:
        forward: runs the model on one batch, e.g. ``lambda x: model.features(x)``.
        modules: ``{name: module}`` whose inputs are collected.
        batches: input batches for ``forward``.
        reduce: ``"covariance"``: ``C = sum over samples and tokens of x xᵀ / #tokens``, the
            InfLoRA ``cur_matrix`` (``(D, D)``); ``"mean_token"``: the mean token of each sample
            as a column, ``(D, n_samples)`` (GPM's representation matrix, [CLS] replaced by the
            token mean).

    Returns:
        ``{name: float64 tensor on the CPU}``, keys in the order the modules were first called
        in the forward pass (the first key is the first layer a sample reaches). A module that was
        never called is missing.
    """
    if reduce not in ("covariance", "mean_token"):
        raise ValueError(f"reduce: expected 'covariance' or 'mean_token', got {reduce!r}")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    columns: dict[str, list[torch.Tensor]] = {}

    def hook_for(name: str):
        def hook(module, args):
            x = args[0].detach().to(torch.float64)
            if x.dim() == 2:
                x = x[:, None, :]
            x = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, N, D)
            if reduce == "covariance":
                tokens = x.reshape(-1, x.shape[-1])
                if name not in sums:
                    sums[name], counts[name] = torch.zeros(x.shape[-1], x.shape[-1],
                                                           dtype=torch.float64), 0
                sums[name] += (tokens.T @ tokens).cpu()
                counts[name] += tokens.shape[0]
            else:
                columns.setdefault(name, []).append(x.mean(dim=1).T.cpu())
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in modules.items()]
    try:
        for x in batches:
            forward(x)
    finally:
        for h in handles:
            h.remove()
    if reduce == "covariance":
        return {n: sums[n] / max(counts[n], 1) for n in sums}
    return {n: torch.cat(cols, dim=1) for n, cols in columns.items()}


def task_layer_inputs(model: nn.Module, modules: Mapping[str, nn.Module], dataset,
                      batch_size: int, max_samples: int | None,
                      reduce: Literal["covariance", "mean_token"]) -> dict[str, torch.Tensor]:
    """:func:`collect_layer_inputs` over a task's training images with ``model`` (a
    ContinualModel) in eval mode on its own device; its train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return collect_layer_inputs(model.features, modules,
                                    task_images(dataset, batch_size, device, max_samples),
                                    reduce=reduce)
    finally:
        model.train(was_training)


def projector(basis: torch.Tensor) -> torch.Tensor:
    """``M Mᵀ``: the ``(D, D)`` orthogonal projector onto the span of a ``(D, k)`` basis."""
    return basis @ basis.T


def complement_basis(basis: torch.Tensor) -> torch.Tensor:
    """An orthonormal ``(D, D - k)`` basis of the orthogonal complement of a ``(D, k)`` basis."""
    dim, k = basis.shape
    if k == 0:
        return torch.eye(dim, dtype=torch.float64)
    u, _, _ = torch.linalg.svd(basis.to(torch.float64), full_matrices=True)
    return u[:, k:]


def gpm_update(rep: torch.Tensor, basis: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """GPM / DualGPM basis update with an energy threshold (Saha et al. 2021, Eq. 5, 8-9).

    With ``R`` the new representation matrix and ``M`` the old basis::

        R_hat = R - M Mᵀ R                     (what the old subspace does not explain)
        U, S  = svd(R_hat)
        add the fewest k columns of U such that
        ( ||R||² - ||R_hat||² + sum_{i<k} S_i² ) / ||R||²  >= threshold

    (``||.||`` Frobenius). With no old basis this is the plain criterion: the fewest top singular
    directions of ``R`` whose energy share reaches ``threshold``. Directions with a numerically
    zero singular value are never added, so the basis never exceeds the rank of what it has seen.

    Args:
        rep: ``R``, ``(D, n)`` (samples as columns, or InfLoRA's ``(D, D)`` covariance).
        basis: ``M``, ``(D, k)`` orthonormal columns, or ``None`` / ``(D, 0)`` for none.
        threshold: energy share ``eps`` in ``(0, 1]``.

    Returns:
        ``(D, k')`` float64 basis, ``k' >= k``: the old columns unchanged, then the new ones
        (orthonormal to them and to each other).

    Raises:
        ValueError: a threshold outside ``(0, 1]`` or mismatched shapes.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold: expected a value in (0, 1], got {threshold}")
    r = rep.detach().to(torch.float64).cpu()
    dim = r.shape[0]
    m = empty_basis(dim) if basis is None else basis.detach().to(torch.float64).cpu()
    if m.shape[0] != dim:
        raise ValueError(f"basis has {m.shape[0]} rows, the representation {dim}")
    total = float((r ** 2).sum())
    if total == 0.0 or m.shape[1] >= dim:
        return m
    r_hat = r - m @ (m.T @ r)
    u, s, _ = torch.linalg.svd(r_hat, full_matrices=False)
    explained = (total - float((r_hat ** 2).sum())) / total
    keep = s > _RANK_TOL * float(torch.linalg.matrix_norm(r, ord=2))
    k = 0
    ratios = (s ** 2 / total).tolist()
    while explained < threshold and k < len(ratios) and bool(keep[k]) and m.shape[1] + k < dim:
        explained += ratios[k]
        k += 1
    if k == 0:
        return m
    new = u[:, :k]
    new = new - m @ (m.T @ new)  # numerical hygiene: exactly orthogonal to the old basis
    new, _ = torch.linalg.qr(new)
    return torch.cat([m, new], dim=1)


def energy_basis(rep: torch.Tensor, threshold: float, max_rank: int | None = None) -> torch.Tensor:
    """The fewest top left singular vectors of ``rep`` (``(D, n)``) whose energy share reaches
    ``threshold`` (:func:`gpm_update` without an old basis), at most ``max_rank`` of them.

    Returns:
        ``(D, k)`` float64 orthonormal basis, ``1 <= k`` unless ``rep`` is zero.
    """
    basis = gpm_update(rep, None, threshold)
    return basis if max_rank is None else basis[:, :max_rank]


def principal_directions(mat: torch.Tensor, basis: torch.Tensor | None, rank: int) -> torch.Tensor:
    """Top-``rank`` left singular vectors of ``(I - M Mᵀ) mat``: InfLoRA's design of ``A_t``.

    The SVD is taken in coordinates of the orthogonal complement of ``M`` (``Q`` with
    ``Q Qᵀ = I - M Mᵀ``: ``svd(Qᵀ mat)``, directions ``Q u``), so every returned direction lies
    in the complement exactly, also when ``(I - M Mᵀ) mat`` has fewer than ``rank`` non-zero
    singular values (a plain SVD would then return arbitrary vectors, possibly inside ``M``).

    Args:
        mat: ``(D, n)``, e.g. the input covariance ``C`` ``(D, D)``.
        basis: ``M``, ``(D, k)`` orthonormal, or ``None``.
        rank: number of directions wanted.

    Returns:
        ``(D, rank)`` float64: orthonormal columns in the complement of ``M``; if the complement
        has fewer than ``rank`` dimensions, the remaining columns are zero.
    """
    a = mat.detach().to(torch.float64).cpu()
    dim = a.shape[0]
    q = complement_basis(empty_basis(dim) if basis is None else basis)
    out = torch.zeros(dim, rank, dtype=torch.float64)
    if q.shape[1] == 0:
        return out
    u, _, _ = torch.linalg.svd(q.T @ a, full_matrices=True)
    k = min(rank, q.shape[1])
    out[:, :k] = q @ u[:, :k]
    return out


def relative_overlap(weight: torch.Tensor, basis: torch.Tensor | None) -> float:
    """``||W M||_F / ||W||_F`` for ``W`` ``(out, D)`` and a ``(D, k)`` basis ``M``.

    Equals ``||W M Mᵀ||_F / ||W||_F``: the share of ``W`` acting on ``span(M)``; 0 when ``W``
    annihilates the subspace (InfLoRA's ``A_t M = 0``, DualLoRA's ``ΔW P_prev = 0``), 1 when
    ``W`` lives inside it. 0.0 for an empty basis or a zero ``W``.
    """
    w = weight.detach().to(torch.float64).cpu()
    norm = float(torch.linalg.matrix_norm(w))
    if basis is None or basis.shape[1] == 0 or norm == 0.0:
        return 0.0
    return float(torch.linalg.matrix_norm(w @ basis.to(torch.float64).cpu())) / norm
