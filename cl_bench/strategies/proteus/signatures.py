"""PROTEUS's task signatures: a Dirichlet-process Gaussian mixture per task, fitted with sklearn
and re-scored in torch (:mod:`cl_bench.strategies.proteus` (b)).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from cl_bench.errors import DataError


# ----------------------------------------------------------------------- the signatures
def fit_signature(emb: np.ndarray, n_components: int, covariance_type: str, reg_covar: float,
                  weight_concentration_prior: float | None, max_iter: int,
                  random_state: int) -> tuple[dict[str, torch.Tensor], object]:
    """Fit a DP Gaussian mixture to ``emb`` ``(N, D)``; return it as tensors and the sklearn fit.

    The dict holds ``means (K, D)``, ``prec_chol`` (``(K, D)`` for diag/spherical, ``(K, D, D)``
    for full/tied), ``offset (K,)`` (log mixing weight + the variational terms of sklearn's
    ``BayesianGaussianMixture._estimate_log_prob``), ``weights (K,)``, ``center (D,)`` and
    ``spread ()`` (RMS distance of ``emb`` to its mean), all float64.

    Raises:
        DataError: fewer than 2 samples.
    """
    from scipy.special import digamma
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    n, d = emb.shape
    if n < 2:
        raise DataError(f"strategy=proteus: a task needs >= 2 training samples to fit its "
                        f"retrieval signature, got {n}")
    gm = BayesianGaussianMixture(
        n_components=min(n_components, n), covariance_type=covariance_type, reg_covar=reg_covar,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=weight_concentration_prior, max_iter=max_iter,
        random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(emb)
    k = gm.means_.shape[0]
    log_w = gm._estimate_log_weights()
    dof = np.broadcast_to(np.asarray(gm.degrees_of_freedom_, dtype=np.float64), (k,))
    log_lambda = d * np.log(2.0) + np.sum(digamma(0.5 * (dof - np.arange(d)[:, None])), 0)
    offset = log_w - 0.5 * d * np.log(dof) + 0.5 * (log_lambda - d / gm.mean_precision_)
    pc = np.asarray(gm.precisions_cholesky_, dtype=np.float64)
    if covariance_type == "spherical":
        pc = np.repeat(pc[:, None], d, axis=1)
    elif covariance_type == "tied":
        pc = np.repeat(pc[None], k, axis=0)
    center = emb.mean(0)
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)  # noqa: E731
    sig = {"means": t(gm.means_), "prec_chol": t(pc), "offset": t(offset),
           "weights": t(gm.weights_), "center": t(center),
           "spread": t(np.sqrt(((emb - center) ** 2).sum(1).mean()))}
    return sig, gm


def signature_log_likelihood(sig: dict[str, torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
    """Per-sample log-likelihood ``(N,)`` of ``emb`` ``(N, D)`` under a stored signature.

    Equals sklearn's ``BayesianGaussianMixture.score_samples`` of the fitted mixture.
    """
    x = emb.to(torch.float64)
    mu, pc = sig["means"].to(x.device), sig["prec_chol"].to(x.device)
    d = x.shape[1]
    if pc.dim() == 2:  # diagonal (spherical expanded): (K, D)
        y = (x[:, None, :] - mu[None]) * pc[None]                      # (N, K, D)
        log_det = pc.log().sum(1)
    else:  # full / tied: (K, D, D), y_k = (x - mu_k) @ P_k
        y = torch.einsum("nd,kde->nke", x, pc) - torch.einsum("kd,kde->ke", mu, pc)[None]
        log_det = torch.diagonal(pc, dim1=1, dim2=2).log().sum(1)
    log_gauss = -0.5 * (d * math.log(2 * math.pi) + (y ** 2).sum(-1)) + log_det  # (N, K)
    return torch.logsumexp(log_gauss + sig["offset"].to(x.device), dim=1)
