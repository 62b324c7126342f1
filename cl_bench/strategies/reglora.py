"""RegLoRA, the essential-forgetting half of SEFE.

Chen et al. 2025, "SEFE: Superficial and Essential Forgetting Eliminator for Multimodal
Continual Instruction Tuning", arXiv 2505.02486 (official code public). A fresh LoRA (Hu et al.
2021, arXiv 2106.09685) learns each task and is merged into the weights afterwards; the
positions where earlier LoRAs changed a weight matrix most are protected by a regulariser on
later LoRAs.

After task t, for every adapted weight matrix ``W`` (``(d_out, d_in)``)::

    W <- W + s * B_t A_t                                  (merge, s = alpha / r)
    M_t = top-k positions of |B_t A_t|, k = ceil(p/100 * d_out * d_in)   (unscaled product)
    M   = M_0 | M_1 | ... | M_t                           (masks accumulate: union)

While training task u > t with the fresh LoRA (A, B)::

    L_reg = mean over matrices W of ( mean over (i, j) in M_W of |(B A)_ij| )
    L     = task loss + lambda * L_reg                    (paper: p = 2, lambda = 2500)

so the current LoRA leaves the weights that mattered for earlier tasks (the "key
elements") alone. :meth:`RegLoRA.regularizer` computes ``L_reg``; :attr:`RegLoRA.masks` holds
``M`` per matrix.

ASD (answer-style diversification, SEFE's cure for *superficial* forgetting) rewrites the
answers of instruction-tuning data into several styles; that is out of scope for image
tasks. ``data_transform`` is the seam where such a per-task data transform plugs in: a dotted
path to ``fn(task, dataset) -> dataset`` applied to ``task.train`` in :meth:`before_task`.

Module structure (for resume): the backbone stays wrapped by peft; task t's adapter is named
after the task. Merging adds peft's own ``get_delta_weight`` (``s * B A``) into the base
layer's weight and then zeroes ``B`` (the adapter stays, contributing nothing), so the state
after ``after_task(t)`` has the same modules as after ``before_task(t)`` -- what a strict
``load_state_dict`` after replayed ``before_task`` calls needs. ``before_task(t+1)`` adds the
new adapter and deletes the previous one. (peft's own ``merge`` marks a layer as merged and then
refuses ``delete_adapter`` and skips every adapter in ``forward``, hence the explicit add.)

Deviations:
    * Paper: LoRA r = 128, alpha = 256 on every Linear layer of LLaVA-1.5's LLM. Ours: r = 8,
      alpha = 16 (the same alpha/r = 2) on the backbone's own targets (``lora_targets``, as
      ``lora``: the attention projections, and a shared Swin UNETR decoder's convolutions,
      whose ``(C_out, C_in, k, k, k)`` weight is masked as the matrix ``(C_out, C_in k^3)``).
      The paper's every-Linear choice is an override (:class:`RegLoRA`'s ``target_modules``).
    * Heads: task-IL streams train a head per task (old heads frozen), class-IL streams one
      shared growing head; the paper's model is generative (no heads). Heads are not masked.
    * Ties in |B A| at the k-th value are broken by ``torch.topk`` (exactly k positions).

Raises:
    ConfigError: see :class:`RegLoRA`.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.files import atomic_dir
from cl_bench.ranges import (NonEmptyStrList, NonNegativeFloat, OpenFraction, Percent,
                             PositiveFloat, PositiveInt)
from cl_bench.strategies.lora import LoRAFamily, lora_delta

log = logging.getLogger(__name__)


def top_k_count(top_p: float, numel: int) -> int:
    """k = ceil(top_p / 100 * numel), computed exactly (``top_p`` as written in decimal)."""
    return math.ceil(Fraction(str(float(top_p))) * numel / 100)


def top_fraction_mask(delta: torch.Tensor, top_p: float) -> torch.Tensor:
    """Bool mask of the ``top_k_count(top_p, delta.numel())`` largest ``|delta|`` entries.

    Args:
        delta: a weight update, any shape (``(d_out, d_in)`` here).
        top_p: percentage in (0, 100].

    Returns:
        bool tensor shaped like ``delta`` with exactly k True entries (ties broken by topk).
    """
    k = top_k_count(top_p, delta.numel())
    flat = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    flat[torch.topk(delta.detach().abs().flatten(), k, sorted=False).indices] = True
    return flat.view_as(delta)


def masked_mean_abs(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over the True positions of ``mask`` of ``|delta|`` (0 if the mask is empty)."""
    n = mask.sum()
    return (delta.abs() * mask).sum() / n.clamp(min=1)


def resolve_transform(path: str | None) -> Callable | None:
    """Import ``package.module.function`` for ``strategy.data_transform`` (None: no transform).

    Raises:
        ConfigError: nothing callable importable at ``path``.
    """
    if path is None:
        return None
    module, _, attr = str(path).rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr) if module else None
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"strategy.data_transform: cannot import {path!r} ({e})") from None
    if not callable(fn):
        raise ConfigError(f"strategy.data_transform: expected a dotted path to a callable "
                          f"fn(task, dataset) -> dataset, got {path!r}")
    return fn


class RegLoRA(LoRAFamily):
    """SEFE's RegLoRA: a merged LoRA per task, key positions of earlier updates regularised.

    Args:
        rank: LoRA rank r (> 0; paper 128).
        alpha: LoRA scale numerator, s = alpha / r (> 0; paper 256).
        dropout: dropout on the LoRA input, in [0, 1).
        top_p: percentage of each matrix's entries kept in a task's mask, in (0, 100] (paper 2).
        reg_lambda: weight lambda of L_reg (>= 0; paper 2500).
        target_modules: the backbone's layer names to adapt; ``None``: its ``lora_targets``
            (the paper's choice, every Linear layer, is ``[qkv, out_proj, linear1, linear2]``
            on a ViT, ``[attn.qkv, attn.proj, mlp.linear1, mlp.linear2]`` on a Swin).
        data_transform: dotted path of ``fn(task, dataset) -> dataset`` applied to each task's
            training set in :meth:`before_task` (SEFE's ASD seam); None = identity.
        lr, head_lr, weight_decay: optimiser settings (LoRA at ``lr``, head at ``head_lr``).

    Attributes:
        masks: ``{matrix name: (d_out, d_in) bool}``, the union of the masks of finished tasks
            (names relative to the encoder, e.g. ``vit.blocks.0.attn.qkv``).
        task_mask_counts: ``{task: {matrix name: entries in that task's own mask}}``.
        adapters: names of the tasks whose adapter was added, in order.

    Raises:
        ConfigError: ``strategy.rank`` not positive, ``strategy.alpha`` not positive,
            ``strategy.dropout`` outside [0, 1), ``strategy.top_p`` outside (0, 100],
            ``strategy.reg_lambda`` negative, an empty ``strategy.target_modules``, a
            ``strategy.data_transform`` that does not import, or (at ``setup``) a target module
            the backbone does not have.
    """

    name = "reglora"
    needs_task_id = False  # one merged model serves every task

    def __init__(self, rank: PositiveInt = 8, alpha: PositiveFloat = 16.0,
                 dropout: OpenFraction = 0.0, top_p: Percent = 2.0,
                 reg_lambda: NonNegativeFloat = 2500.0,
                 target_modules: NonEmptyStrList | None = None,
                 data_transform: Optional[str] = None, lr: PositiveFloat = 1e-3,
                 head_lr: PositiveFloat = 3e-3, weight_decay: NonNegativeFloat = 0.0):
        super().__init__(rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules,
                         lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        self.top_p, self.reg_lambda = float(top_p), float(reg_lambda)
        self.data_transform = data_transform
        self._transform = resolve_transform(data_transform)
        self._untransformed: dict[str, object] = {}  # task -> its original training set
        self.masks: dict[str, torch.Tensor] = {}
        self.task_mask_counts: dict[str, dict[str, int]] = {}
        self._to_save: dict[str, dict[str, torch.Tensor]] = {}  # task -> pre-merge adapter

    @property
    def current(self) -> str | None:
        """The adapter that is (or was last) trained; None before the first task."""
        return self.adapters[-1] if self.adapters else None

    # ------------------------------------------------------------------ hooks
    def before_task(self, t: int, task: Task) -> None:
        """A fresh LoRA for task ``t`` (the previous, merged and zeroed one is deleted); apply
        ``data_transform`` to the task's training set."""
        if self._transform is not None:
            original = self._untransformed.setdefault(task.name, task.train)
            task.train = self._transform(task, original)
        backbone = self.add_task_adapter(task)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns about custom (non-transformers) models
            backbone.base_model.set_adapter(task.name)
            for old in [n for n in backbone.peft_config if n != task.name]:
                backbone.delete_adapter(old)  # merged into the weights and zeroed already
            backbone.base_model.set_adapter(task.name)
        self.model.requires_grad_(False)
        for layer in self.lora_layers().values():
            if task.name in layer.lora_A:  # a layer outside the task's forward has none
                layer.lora_A[task.name].requires_grad_(True)
                layer.lora_B[task.name].requires_grad_(True)
        self.model.heads[task.name].requires_grad_(True)

    def regularizer(self) -> torch.Tensor:
        """``L_reg``: mean over masked matrices of the mean of ``|B A|`` on the mask (unscaled
        product of the current LoRA); a 0-d tensor, 0 when no mask exists yet."""
        terms = []
        name = self.current
        for key, layer in self.lora_layers().items():
            mask = self.masks.get(key)
            if mask is None or name is None or name not in layer.lora_A:
                continue
            delta = lora_delta(layer, name)  # (d_out, d_in)
            if mask.device != delta.device:
                mask = self.masks[key] = mask.to(delta.device)
            terms.append(masked_mean_abs(delta, mask))
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).mean()

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        if not self.masks or self.reg_lambda == 0:
            return None
        return self.reg_lambda * self.regularizer()

    @torch.no_grad()
    def after_task(self, t: int, task: Task) -> None:
        """Add task ``t``'s masks to :attr:`masks`, merge its LoRA into the weights, zero B."""
        name = task.name
        backbone = self.model.backbone
        self._to_save[name] = {k: v.detach().cpu().clone() for k, v in
                               get_peft_model_state_dict(backbone, adapter_name=name).items()}
        counts = {}
        for key, layer in self.lora_layers().items():
            if name not in layer.lora_A:
                continue
            delta = lora_delta(layer, name)  # unscaled B A, (d_out, d_in)
            new = top_fraction_mask(delta, self.top_p)
            counts[key] = int(new.sum())
            old = self.masks.get(key)
            self.masks[key] = new if old is None else old.to(new.device) | new
            base = layer.get_base_layer()
            base.weight.add_(layer.get_delta_weight(name).to(base.weight.dtype))  # s * B A
            layer.lora_B[name].weight.zero_()
        self.task_mask_counts[name] = counts
        log.info("reglora: merged %s; mask sizes (new / union): %s", name,
                 {k: (counts[k], int(self.masks[k].sum())) for k in counts})
        self.model.requires_grad_(False)

    def save(self, run_dir: Path, t: int, task: Task) -> None:
        """``adapters/<task>/``: the task's LoRA before its merge, in peft's layout (it applies
        to the weights as they were before task t), plus ``masks.json`` with the mask sizes."""
        state = self._to_save.pop(task.name, None)
        masks = {"top_p": self.top_p, "task_mask_counts": self.task_mask_counts.get(task.name, {}),
                 "union_counts": {k: int(m.sum()) for k, m in self.masks.items()}}

        def write(out: Path) -> None:  # a temporary directory, renamed to adapters/<task>/
            if state is not None:
                save_file({k: v.contiguous() for k, v in state.items()},
                          str(out / "adapter_model.safetensors"))
                self.model.backbone.peft_config[task.name].save_pretrained(str(out))
            (out / "masks.json").write_text(json.dumps(masks, indent=1))

        atomic_dir(Path(run_dir) / "adapters" / task.name, write)

    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "masks": {k: m.detach().cpu().clone() for k, m in self.masks.items()},
                "task_mask_counts": {t: dict(c) for t, c in self.task_mask_counts.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.masks = {k: m.bool() for k, m in state.get("masks", {}).items()}
        self.task_mask_counts = {t: dict(c) for t, c in state.get("task_mask_counts", {}).items()}
