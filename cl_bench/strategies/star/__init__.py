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

Package layout: :mod:`.prototypes` (per-class statistics, fake features, the lite derivation),
:mod:`.replay` (counts and weights of the replay, storage), :mod:`.losses` (L_mbce, OCFM, SAD,
the old-class negatives, pseudo-labels), :mod:`.strategy` (the :class:`STAR` hooks); every
public name is re-exported here (``cl_bench.strategies.star.STAR`` is the ``_target_``).

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
  step, seed 0); with weight 1 it is 0.11 (results/reference/ciss/README.md has the 3-seed table).
"""

from __future__ import annotations

from cl_bench.strategies.star.prototypes import (add_sums, class_sums, classifier_weights,
                                                 combine_lite, derive_prototypes, lite_noise,
                                                 prototype_statistics, sample_basic, sample_lite,
                                                 statistics_from_sums)
from cl_bench.strategies.star.replay import (background_ratio, replay_counts, replay_weights,
                                             storage_bytes, updated_counts)
from cl_bench.strategies.star.losses import (class_centres, ocfm_loss, old_negative_loss,
                                             old_predictions, rebalanced_bce, sad_loss)
from cl_bench.strategies.star.strategy import STAR, VARIANTS

__all__ = ["add_sums", "class_sums", "classifier_weights", "combine_lite", "derive_prototypes",
           "lite_noise", "prototype_statistics", "sample_basic", "sample_lite",
           "statistics_from_sums", "background_ratio", "replay_counts", "replay_weights",
           "storage_bytes", "updated_counts", "class_centres", "ocfm_loss", "old_negative_loss",
           "old_predictions", "rebalanced_bce", "sad_loss", "STAR", "VARIANTS"]
