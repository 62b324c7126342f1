"""PROTEUS: composed low-rank modules + parameter-free task retrieval by per-task signatures.

Source: "PROTEUS" (arXiv 2603.13235). No public code; this is a reconstruction from reviews
(docs/architecture.md §7; built from the paper's reviews) — every choice below is a config value.

(a) Module composition. Per adapted ``nn.Linear`` ``W`` (``out x in``) of the frozen backbone,
task k owns a low-rank component ``(A_k: (r, in), B_k: (out, r))`` and, per layer, a vector of
composition coefficients ``c_k: (k,)`` over the frozen components of the earlier tasks::

    h = W x + s * ( sum_{i<k} c_{k,i} B_i A_i  +  B_k A_k ) x ,      s = alpha / r
      = W x + s * ΔW_k x

(``S_k = sum_{i<k} c_{k,i} B_i A_i`` is the selective re-use of old knowledge, ``B_k A_k`` the new
component). While task k trains only ``A_k, B_k, c_k`` and task k's head are updated, and::

    L = L_task + orth_lambda * sum_layers sum_{i<k} sum |A_i A_kᵀ|     (O-LoRA, arXiv 2310.14152)
               + coef_l1     * sum_layers ||c_k||_1                      (selective composition)
               + update_l1   * sum_layers ||ΔW_k||_1 + update_l2 * sum_layers ||ΔW_k||_F²

``||ΔW_k||_F²`` is computed from the factors (``sum((B'ᵀB') ⊙ (A Aᵀ))``, small square matrices);
``||ΔW_k||_1`` forms ``ΔW_k`` (``out x in``) and is skipped when its weight is 0. With
``orthogonal_init`` the rows of a new ``A_k`` are first projected onto the orthogonal complement of
the earlier ``A_i`` rows (while ``sum r < in``), so the penalty starts at ~0. ``B_k`` starts at
zero and ``c_k`` at ``coef_init``. After task k everything of task k is frozen, so task j's
composed update never changes afterwards: with the oracle task id BWT is exactly 0 (as ``lora``).

Why not peft: peft LoRA layers sum the active adapters with fixed scalings (and
``add_weighted_adapter`` bakes fixed weights into a new adapter); learned, per-layer composition
coefficients with gradients need their own module, :class:`ProteusLinear`, which wraps the
target ``nn.Linear`` (kept as ``base_layer``, as in peft; parameter names contain ``lora_`` and
``.<task>.`` so the runner's parameter counts work unchanged).

(b) Task retrieval by signatures. After task k, task k's training images are embedded with the
backbone carrying task k's composed adapter, ``h_k(x) = mean over tokens of the last layer's
(normed) output`` ``(B, D)`` (optionally L2-normalised), and a Dirichlet-process Gaussian mixture is
fitted to them (sklearn ``BayesianGaussianMixture(weight_concentration_prior_type=
"dirichlet_process")``, at most ``n_components`` components). At test time ``x`` goes through
every trained task's adapted backbone (T passes) and the task whose signature gives the highest
log-likelihood ``log p_k(h_k(x))`` is chosen. ``retrieval: frozen`` is the cheap variant: one pass
through the frozen backbone (no adapter), all signatures fitted in that shared space. The fitted
mixtures are stored as plain tensors (means, precision Cholesky factors and the per-component
constants of sklearn's variational ``score_samples``), and :func:`signature_log_likelihood`
re-scores them in torch: it reproduces ``BayesianGaussianMixture.score_samples`` (to float64
rounding), and the state loads with ``torch.load(weights_only=True)``.

Cluster separation (the paper bounds retrieval error by it): ``save`` writes
``retrieval/separation_after_<task>.{json,png}``: for each trained signature k and trained task j,
``sep[k][j] = ||c_k - m_kj|| / ((s_k + s_kj) / 2)`` with ``c_k, s_k`` the centre and RMS spread of
signature k's training embeddings and ``m_kj, s_kj`` those of task j's test images embedded with
task k's adapter (frozen: the shared space); ``min_separation[k] = min_{j != k} sep[k][j]``, plus
the mean log-likelihood matrix and the retrieval accuracy on those samples.

Package layout: :mod:`.layer` (:class:`ProteusLinear`), :mod:`.signatures` (the DP-GMM fit
and its torch re-scoring), :mod:`.strategy` (the :class:`Proteus` hooks); every public name is
re-exported here (``cl_bench.strategies.proteus.Proteus`` is the ``_target_``).

Shapes: images ``(B, C, *spatial)``; embeddings ``(B, D)``, D = backbone hidden size;
``predict_task_id`` returns ``(B,)`` long stream indices (only trained tasks are candidates;
before any task is trained it returns zeros).

Deviations:
    * The paper's exact regularisers, coefficient parametrisation and retrieval layer are not
      public: coefficients are per layer and per task (one vector ``c_k`` per adapted layer), the
      update regulariser is an elastic net on ``ΔW_k`` (weights ``update_l1``, ``update_l2``).
    * MONAI's ViT has no [CLS] token: the signature embedding is the mean over tokens of the last
      layer's output.
    * The frozen variant uses the same DP-GMM signature (not k-means).
    * ``save`` reads the seen tasks' *test* images for the separation diagnostics (as the runner's
      evaluation does); nothing of them is stored or trained on.
"""

from __future__ import annotations

from cl_bench.strategies.proteus.layer import ProteusLinear, orthogonality_penalty
from cl_bench.strategies.proteus.signatures import fit_signature, signature_log_likelihood
from cl_bench.strategies.proteus.strategy import (COVARIANCE_TYPES, CovarianceType, Proteus,
                                                  Retrieval, RETRIEVAL_MODES)

__all__ = ["orthogonality_penalty", "ProteusLinear", "fit_signature", "signature_log_likelihood",
           "COVARIANCE_TYPES", "CovarianceType", "Proteus", "Retrieval", "RETRIEVAL_MODES"]
