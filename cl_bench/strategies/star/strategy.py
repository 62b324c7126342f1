"""The :class:`STAR` strategy (STAR and STAR-Lite): the hooks that gather the statistics, plan
the replay and combine the losses of :mod:`.prototypes`, :mod:`.replay` and :mod:`.losses`
(formulas, sources and deviations in :mod:`cl_bench.strategies.star`).
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

from cl_bench.data.base import Task
from cl_bench.data.ciss import SETTINGS
from cl_bench.errors import ConfigError
from cl_bench.kinds import CISS
from cl_bench.ranges import NonNegativeFloat, PositiveFloat, PositiveInt
from cl_bench.models.heads import CISSHead, TaskView
from cl_bench.files import write_json
from cl_bench.strategies.base import Strategy
from cl_bench.strategies.star.prototypes import (_rows, add_sums, class_sums, classifier_weights,
                                                 combine_lite, derive_prototypes, lite_noise,
                                                 sample_basic, sample_lite, statistics_from_sums)
from cl_bench.strategies.star.replay import (background_ratio, replay_counts, replay_weights,
                                             storage_bytes, updated_counts)
from cl_bench.strategies.star.losses import (class_centres, ocfm_loss, old_negative_loss,
                                             old_predictions, rebalanced_bce, sad_loss)

log = logging.getLogger(__name__)

VARIANTS = ("basic", "lite")


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
        self._extra: torch.Tensor | None = None

    # ------------------------------------------------------------------ hooks
    def setup(self, model: nn.Module, stream: list[Task]) -> None:
        """Attach to a CISS stream's model.

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

    def before_task(self, t: int, task: Task) -> None:
        self.freeze_all_but(self.model.backbone, self.model.heads[task.name])
        self.step, self._extra, self.old_model = {"t": t}, None, None
        if t > 0:
            self.old_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    def task_loss(self, batch: dict, out: torch.Tensor, t: int, loss_fn) -> torch.Tensor:
        """STAR's rebalanced BCE on logits ``out`` ``(B, K, *spatial)`` against ``batch["label"]``
        ``(B, 1, *spatial)`` (Chen et al., NeurIPS 2023, no arXiv id; STAR-Lite, TPAMI 2025),
        with replayed old-class and background features from step 1 on; L_OCFM, L_SAD and the
        optional old-class negatives are kept for :meth:`training_loss`. They read this step's
        feature map F ``(B, D, *spatial)``, the encoder grid of ``batch["features"][0]`` (the
        backbone outputs the runner passes, with their graph: no second pass, no forward hook).
        Returns a 0-d loss (unitless). ``loss_fn`` (the runner's task loss) is not used.

        Raises:
            RuntimeError: from step 1 on, a batch without ``"features"`` (a caller other than
            :class:`cl_bench.training.LitTask`)."""
        head, x, label = self.head, batch["image"], batch["label"]
        lo, hi = sum(head.sizes[:t]), sum(head.sizes[:t + 1])
        new_ids = head.class_ids[lo:hi]
        pos_weight = self.pos_weight if self.pos_weight is not None else self.stream[t].pos_weight
        self._extra = None
        if t == 0 or self.old_model is None:
            return rebalanced_bce(out[:, lo:hi], label, new_ids, pos_weight=pos_weight)
        if "features" not in batch:
            raise RuntimeError("STAR.task_loss needs batch['features'], this step's backbone "
                               "outputs (as cl_bench.training.LitTask passes them)")
        # F (B, D, *spatial): the map the CISS head classified this step, with its graph
        feats = self.model.encoder.tokens_to_grid(batch["features"][0])
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
