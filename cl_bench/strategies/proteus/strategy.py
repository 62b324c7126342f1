"""The :class:`Proteus` strategy: composed low-rank modules and signature-based task retrieval
(formulas, source and deviations in :mod:`cl_bench.strategies.proteus`).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from cl_bench.data.base import Task
from cl_bench.files import atomic_write, write_text
from cl_bench.ranges import (NonEmptyStrList, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                             PositiveInt)
from cl_bench.strategies.base import Strategy
from cl_bench.strategies.lora import check_target_modules, matches_target
from cl_bench.strategies.proteus.layer import ProteusLinear
from cl_bench.strategies.proteus.signatures import fit_signature, signature_log_likelihood


Retrieval = Literal["adapted", "frozen"]
RETRIEVAL_MODES = typing.get_args(Retrieval)
#: sklearn's covariance types
CovarianceType = Literal["diag", "full", "spherical", "tied"]
COVARIANCE_TYPES = typing.get_args(CovarianceType)


def _key(task_name: str) -> str:
    """A module-dict key for a task name (no dots)."""
    return task_name.replace(".", "_")


# ------------------------------------------------------------------------- the strategy
class Proteus(Strategy):
    """PROTEUS (arXiv 2603.13235): composed LoRA modules + signature-based task retrieval.

    Args:
        rank: rank r of each task's new component (> 0).
        alpha: scale numerator, ``s = alpha / r`` (> 0).
        target_modules: names of the backbone's ``nn.Linear`` layers to adapt (MONAI ViT:
            ``qkv``, ``out_proj``, ``linear1``, ``linear2``; Swin: ``attn.qkv``, ``attn.proj``,
            ``mlp.linear1``, ``mlp.linear2``); ``None``: the backbone's ``lora_targets`` that are
            Linear layers (its attention projections; a shared decoder's convolutions stay
            frozen: the composed components are weight matrices).
        coef_init: initial composition coefficients ``c_{k,i}`` (finite).
        coef_l1: weight of ``||c_k||_1`` (>= 0; selectivity of the composition).
        orth_lambda: weight of the O-LoRA orthogonality penalty ``sum |A_i A_kᵀ|`` (>= 0).
        update_l1, update_l2: weights of ``||ΔW_k||_1`` and ``||ΔW_k||_F²`` (>= 0).
        orthogonal_init: start ``A_k`` orthogonal to the earlier ``A_i`` (see module docstring).
        retrieval: ``adapted`` (T passes, signature of task k in task k's adapted space) or
            ``frozen`` (one pass through the frozen backbone).
        n_components: truncation level of the Dirichlet-process mixture (> 0).
        covariance_type: ``diag``, ``full``, ``spherical`` or ``tied`` (sklearn's).
        reg_covar: added to the covariance diagonals (> 0).
        weight_concentration_prior: DP concentration (> 0); ``None``: sklearn's 1/n_components.
        normalize: L2-normalise the embeddings before fitting and scoring.
        max_fit_samples: at most this many training images per task for the signature (> 0).
        gmm_max_iter: variational EM iterations (> 0).
        random_state: seed of the mixture fit and of the subsampling (>= 0).
        embed_batch_size: batch size of the embedding passes (> 0).
        separation_max_samples: test images per task for the separation diagnostics (> 0).
        lr, head_lr, weight_decay: optimiser settings (components at ``lr``, head at ``head_lr``).

    Raises:
        ConfigError: any value out of range (naming ``strategy.<key>``); a target module the
            backbone does not have (at ``setup``, naming ``strategy.target_modules``).
        DataError: a task with fewer than 2 training samples (no signature can be fitted).
    """

    name = "proteus"
    needs_task_id = True
    task_agnostic = True

    def __init__(self, rank: PositiveInt = 8, alpha: PositiveFloat = 16.0,
                 target_modules: NonEmptyStrList | None = None, coef_init: float = 0.0,
                 coef_l1: NonNegativeFloat = 1e-3, orth_lambda: NonNegativeFloat = 0.5,
                 update_l1: NonNegativeFloat = 0.0, update_l2: NonNegativeFloat = 1e-4,
                 orthogonal_init: bool = True, retrieval: Retrieval = "adapted",
                 n_components: PositiveInt = 5,
                 covariance_type: CovarianceType = "diag",
                 reg_covar: PositiveFloat = 1e-4,
                 weight_concentration_prior: PositiveFloat | None = None, normalize: bool = False,
                 max_fit_samples: PositiveInt = 2000, gmm_max_iter: PositiveInt = 200,
                 random_state: NonNegativeInt = 0, embed_batch_size: PositiveInt = 64,
                 separation_max_samples: PositiveInt = 256, lr: PositiveFloat = 1e-3,
                 head_lr: PositiveFloat = 3e-3, weight_decay: NonNegativeFloat = 0.0):
        super().__init__(lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / int(rank)
        self.target_modules = None if target_modules is None else list(target_modules)
        self.coef_init, self.coef_l1, self.orth_lambda = float(coef_init), float(coef_l1), \
            float(orth_lambda)
        self.update_l1, self.update_l2 = float(update_l1), float(update_l2)
        self.orthogonal_init, self.retrieval, self.normalize = bool(orthogonal_init), retrieval, \
            bool(normalize)
        self.n_components, self.covariance_type, self.reg_covar = int(n_components), \
            covariance_type, float(reg_covar)
        self.weight_concentration_prior = (None if weight_concentration_prior is None
                                           else float(weight_concentration_prior))
        self.max_fit_samples, self.gmm_max_iter = int(max_fit_samples), int(gmm_max_iter)
        self.random_state, self.embed_batch_size = int(random_state), int(embed_batch_size)
        self.separation_max_samples = int(separation_max_samples)
        self.layers: dict[str, ProteusLinear] = {}
        self.tasks: list[str] = []                     # tasks with components, stream order
        self.signatures: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ structure
    def setup(self, model: nn.Module, stream: list[Task]) -> None:
        """Validate the targets and wrap every targeted ``nn.Linear`` in a :class:`ProteusLinear`.

        Raises:
            ConfigError: class-IL stream (base class) or unknown ``strategy.target_modules``.
        """
        super().setup(model, stream)
        enc = model.encoder
        self.target_modules = check_target_modules(model, self.target_modules, self.name)
        self.layers = {}
        for name, module in list(enc.named_modules()):
            if isinstance(module, ProteusLinear):
                self.layers[name] = module
                continue
            if (not isinstance(module, nn.Linear) or not matches_target(name, self.target_modules)
                    or ".base_layer" in f".{name}"):
                continue
            parent_name, _, attr = name.rpartition(".")
            parent = enc.get_submodule(parent_name) if parent_name else enc
            wrapped = ProteusLinear(module, self.rank, self.scale)
            setattr(parent, attr, wrapped)
            self.layers[name] = wrapped

    def _set_active(self, key: str | None) -> None:
        for layer in self.layers.values():
            layer.active = key

    def _active(self) -> str | None:
        return next(iter(self.layers.values())).active if self.layers else None

    def before_task(self, t: int, task: Task) -> None:
        key = _key(task.name)
        for layer in self.layers.values():
            layer.add(key, self.coef_init, self.orthogonal_init)
        if task.name not in self.tasks:
            self.tasks.append(task.name)
        self.model.requires_grad_(False)
        for layer in self.layers.values():
            layer.lora_adapters[key].requires_grad_(True)
        self.model.heads[task.name].requires_grad_(True)
        self.activate(task)

    def activate(self, task: Task) -> None:
        """Task ``task``'s composed update (none for a task not reached yet)."""
        self._set_active(_key(task.name) if task.name in self.tasks else None)

    # ------------------------------------------------------------------ training
    def regularisers(self, task_name: str) -> dict[str, torch.Tensor]:
        """Unweighted sums over the adapted layers: ``orth``, ``coef_l1``, ``update_l1``,
        ``update_l2`` of task ``task_name``'s component (module docstring (a))."""
        key = _key(task_name)
        terms: dict[str, list[torch.Tensor]] = {"orth": [], "coef_l1": [], "update_l1": [],
                                                "update_l2": []}
        for layer in self.layers.values():
            terms["orth"].append(layer.orthogonality(key))
            terms["coef_l1"].append(layer.lora_adapters[key].coef.abs().sum())
            terms["update_l2"].append(layer.update_sq_norm(key))
            if self.update_l1 > 0:
                terms["update_l1"].append(layer.delta_weight(key).abs().sum())
        return {k: torch.stack(v).sum() for k, v in terms.items() if v}

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        weights = {"orth": self.orth_lambda, "coef_l1": self.coef_l1,
                   "update_l1": self.update_l1, "update_l2": self.update_l2}
        if not any(weights.values()):
            return None
        terms = self.regularisers(self.stream[t].name)
        return sum(weights[k] * v for k, v in terms.items() if weights[k])

    def after_task(self, t: int, task: Task) -> None:
        """Freeze task ``t``'s components and fit its retrieval signature."""
        key = _key(task.name)
        for layer in self.layers.values():
            layer.lora_adapters[key].requires_grad_(False)
        ds = task.train
        if len(ds) > self.max_fit_samples:
            g = torch.Generator().manual_seed(self.random_state + t)
            ds = Subset(ds, torch.randperm(len(ds), generator=g)[:self.max_fit_samples].tolist())
        emb = self.embed_dataset(ds, task.name if self.retrieval == "adapted" else None)
        self.signatures[task.name], _ = fit_signature(
            emb.numpy(), self.n_components, self.covariance_type, self.reg_covar,
            self.weight_concentration_prior, self.gmm_max_iter, self.random_state)
        self.activate(task)

    # ------------------------------------------------------------------ retrieval
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` float64 CPU: the backbone's pooled output (current adapter): the mean
        token of a ViT, the mean of a Swin transformer's deepest stage."""
        tokens, _ = self.model.backbone(x)
        e = self.model.encoder.pool(tokens.float())
        if self.normalize:
            e = F.normalize(e, dim=-1)
        return e.double().cpu()

    def embed_dataset(self, ds, task_name: str | None) -> torch.Tensor:
        """Embed every image of ``ds`` with ``task_name``'s composed adapter (None: frozen)."""
        model, prev = self.model, self._active()
        was_training = model.training
        device = next(model.parameters()).device
        model.eval()
        self._set_active(None if task_name is None else _key(task_name))
        try:
            with torch.no_grad():
                out = [self._embed(b["image"].to(device))
                       for b in DataLoader(ds, batch_size=self.embed_batch_size)]
        finally:
            self._set_active(prev)
            model.train(was_training)
        return torch.cat(out)

    def retrieval_scores(self, x: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Log-likelihood of ``x`` under every trained task's signature: ``(names, (B, K))``."""
        names = [t.name for t in self.stream if t.name in self.signatures]
        prev = self._active()
        try:
            if self.retrieval == "frozen":
                self._set_active(None)
                e = self._embed(x)
                cols = [signature_log_likelihood(self.signatures[n], e) for n in names]
            else:
                cols = []
                for n in names:
                    self._set_active(_key(n))
                    cols.append(signature_log_likelihood(self.signatures[n], self._embed(x)))
        finally:
            self._set_active(prev)
        return names, torch.stack(cols, 1) if cols else torch.empty(x.shape[0], 0)

    def predict_task_id(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` stream index of the trained task whose signature scores ``x`` highest."""
        names, scores = self.retrieval_scores(x)
        if not names:
            return torch.zeros(x.shape[0], dtype=torch.long)
        index = torch.as_tensor([[t.name for t in self.stream].index(n) for n in names])
        return index[scores.argmax(1)]

    # ------------------------------------------------------------------ artefacts
    def separation(self, upto: int) -> dict:
        """Cluster-separation diagnostics of the signatures of tasks ``0..upto`` (module doc)."""
        names = [t.name for t in self.stream[:upto + 1] if t.name in self.signatures]
        tests = []
        for name in names:
            ds = next(t for t in self.stream if t.name == name).test
            n = min(len(ds), self.separation_max_samples)
            tests.append(Subset(ds, list(range(n))) if n < len(ds) else ds)
        spaces = [None] if self.retrieval == "frozen" else names
        emb = {s: [self.embed_dataset(ds, s) for ds in tests] for s in spaces}
        k = len(names)
        sep, ll = np.full((k, k), np.nan), np.full((k, k), np.nan)
        for a, name in enumerate(names):
            sig = self.signatures[name]
            space = None if self.retrieval == "frozen" else name
            for b in range(k):
                e = emb[space][b]
                m = e.mean(0)
                s_b = float(((e - m) ** 2).sum(1).mean().sqrt())
                dist = float((m - sig["center"]).norm())
                sep[a, b] = dist / max(0.5 * (float(sig["spread"]) + s_b), 1e-12)
                ll[a, b] = float(signature_log_likelihood(sig, e).mean())
        correct = []
        for b in range(k):  # retrieval on these samples: argmax over signatures
            cols = [signature_log_likelihood(self.signatures[n],
                                             emb[None if self.retrieval == "frozen" else n][b])
                    for n in names]
            correct.append(float((torch.stack(cols, 1).argmax(1) == b).double().mean()))
        off = sep + np.where(np.eye(k, dtype=bool), np.inf, 0.0)
        return {"tasks": names, "retrieval": self.retrieval,
                "separation": sep.tolist(), "mean_loglik": ll.tolist(),
                "min_separation": {n: (float(off[i].min()) if k > 1 else None)
                                   for i, n in enumerate(names)},
                "retrieval_accuracy": dict(zip(names, correct)),
                "n_components_used": {n: int((self.signatures[n]["weights"] > 1e-2).sum())
                                      for n in names},
                "definition": "separation[k][j] = ||c_k - m_kj|| / ((s_k + s_kj)/2): c_k, s_k "
                              "centre and RMS spread of signature k's training embeddings, m_kj, "
                              "s_kj of task j's test images in signature k's embedding space"}

    def save(self, run_dir: Path, t: int, task: Task) -> None:
        """Write ``adapters/<task>/adapter_model.safetensors`` (A, B, coefficients per layer) and
        ``retrieval/separation_after_<task>.{json,png}``."""
        from safetensors.torch import save_file

        key = _key(task.name)
        out = Path(run_dir) / "adapters" / task.name
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"{name}.{p}": getattr(layer.lora_adapters[key], p).detach().cpu().contiguous()
                   for name, layer in self.layers.items() for p in ("A", "B", "coef")}
        atomic_write(out / "adapter_model.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        rdir = Path(run_dir) / "retrieval"
        rdir.mkdir(parents=True, exist_ok=True)
        info = self.separation(t)
        write_text(rdir / f"separation_after_{task.name}.json", json.dumps(info, indent=2))
        self._plot_separation(info, rdir / f"separation_after_{task.name}.png", task.name)

    @staticmethod
    def _plot_separation(info: dict, path: Path, after: str) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names, sep = info["tasks"], np.asarray(info["separation"], dtype=float)
        k = len(names)
        fig, axes = plt.subplots(1, 2, figsize=(4.5 + 1.6 * k, 1.8 + 0.6 * k))
        im = axes[0].imshow(sep, cmap="viridis")
        mid = np.nanmin(sep) + 0.6 * (np.nanmax(sep) - np.nanmin(sep))
        for (i, j), v in np.ndenumerate(sep):
            axes[0].text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                         color="k" if v > mid else "w")
        axes[0].set_xticks(range(k), names, rotation=30, ha="right", fontsize=7)
        axes[0].set_yticks(range(k), names, fontsize=7)
        axes[0].set_xlabel("test data of task j")
        axes[0].set_ylabel("signature k")
        axes[0].set_title("distance / mean spread", fontsize=9)
        fig.colorbar(im, ax=axes[0])
        mins = [info["min_separation"][n] if info["min_separation"][n] is not None else 0.0
                for n in names]
        acc = [info["retrieval_accuracy"][n] for n in names]
        axes[1].bar(range(k), mins, color="tab:blue")
        axes[1].set_xticks(range(k), names, rotation=30, ha="right", fontsize=7)
        axes[1].set_title("min inter-signature separation", fontsize=9)
        for i, (m, a) in enumerate(zip(mins, acc)):
            axes[1].text(i, m, f"acc {a:.2f}", ha="center", va="bottom", fontsize=7)
        fig.suptitle(f"PROTEUS signatures ({info['retrieval']}) after {after}", fontsize=10)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
        plt.close(fig)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"tasks": list(self.tasks),
                "signatures": {n: {k: v.clone() for k, v in s.items()}
                               for n, s in self.signatures.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.tasks = list(state.get("tasks", self.tasks))
        self.signatures = {n: {k: torch.as_tensor(v, dtype=torch.float64) for k, v in s.items()}
                           for n, s in state.get("signatures", {}).items()}
