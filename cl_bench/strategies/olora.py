"""O-LoRA: orthogonal subspace learning for continual learning with LoRA adapters.

Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning",
arXiv 2310.14152 (official code: cmnlp/O-LoRA). One LoRA adapter per task on a frozen
backbone; earlier adapters stay frozen *and active*, so every adapted Linear layer computes::

    h = W x + s * sum_{i < t} B_i A_i x + s * B_t A_t x,        s = alpha / r

(no task id is needed at test: the model is one function of all adapters so far). While task t
trains, only A_t, B_t and the task's head learn, with the loss::

    L = task loss + lambda1 * sum_layers sum_{jk} |[A_0; ...; A_{t-1}] A_t^T|_{jk}
                  + lambda2 * sum_{P in new LoRA params} ||P||_2

The first term (:func:`orthogonality_loss`) pushes the rows of A_t (the new update's input
subspace) to be orthogonal to the concatenated rows of the old A's, so the new update barely
changes the outputs on the old tasks' input subspace. The second term is, as in the official
trainer, the *sum of the (non-squared) Frobenius norms* of each new LoRA matrix (A_t and B_t of
every layer), not a squared norm; the paper's default lambda2 = 0 switches it off.

Shapes: ``A_i`` ``(r, d_in)``, ``B_i`` ``(d_out, r)``; the orthogonality matrix per layer is
``(t * r, r)``. On a convolution (a shared Swin UNETR decoder's 3x3x3 convolutions, adapted by
peft as ``A`` a ``C_in -> r`` convolution and ``B`` a 1x1x1 one) ``A`` is its weight flattened,
``(r, C_in * k^3)``: the rows are filters over input patches, and the penalty keeps the new
filters orthogonal to the old ones, the same statement for the unfolded input.

Adapters live in peft: one ``add_adapter`` per task, several active at once through
``LoraModel.set_adapter([names])``; peft makes active adapters trainable, so the old ones are
re-frozen right after every ``set_adapter`` (:meth:`OLoRA.activate`). Adapters are saved with
``save_pretrained`` under ``adapters/<task>/``.

Deviations:
    * The official code keeps the old adapters concatenated in one ``lora_A``/``lora_B`` pair
      and the new one in ``loranew_A``/``loranew_B``; separate peft adapters with the same
      scale s = alpha/r compute the same sum (B_cat A_cat = sum_i B_i A_i).
    * Paper targets: the query and value projections of a T5/LLaMA attention. Ours default to
      the backbone's own targets (``lora_targets``, as ``lora``): a ViT's fused ``qkv`` (q, k
      and v) and ``out_proj``; a Swin UNETR's ``attn.qkv``, ``attn.proj`` and its shared
      decoder's convolutions. ``target_modules`` changes it.
    * Our heads: task-IL streams give each task its own head (old heads frozen); class-IL
      streams share one growing head (trained by every task). The paper's model is a generative
      LM with no heads.
"""

from __future__ import annotations

import logging

import torch
from peft import PeftModel

from cl_bench.data.base import Task
from cl_bench.ranges import (NonEmptyStrList, NonNegativeFloat, OpenFraction, PositiveFloat,
                             PositiveInt)
from cl_bench.strategies.lora import LoRAFamily, lora_layers

log = logging.getLogger(__name__)


def orthogonality_loss(old_As: list[torch.Tensor], new_A: torch.Tensor) -> torch.Tensor:
    """O-LoRA's orthogonality penalty of one layer: ``sum |[A_old_1; ...] @ new_A^T|``.

    Args:
        old_As: the earlier adapters' A matrices of this layer, each ``(r_i, d)`` (a
            convolution's ``(r_i, C_in, *kernel)``, flattened here to ``(r_i, d)``).
        new_A: the current adapter's A, ``(r, d)`` (or a convolution's, flattened).

    Returns:
        0-d tensor: the entry-wise L1 norm of ``cat(old_As) @ new_A.T`` (``(sum r_i, r)``):
        0 exactly when every row of ``new_A`` is orthogonal to every old row, > 0 otherwise.
        0 (on ``new_A``'s device, still differentiable) when ``old_As`` is empty.

    Raises:
        ValueError: an old A whose width differs from ``new_A``'s.
    """
    new_A = new_A.flatten(1)
    old_As = [a.flatten(1) for a in old_As]
    if not old_As:
        return new_A.sum() * 0.0
    for a in old_As:
        if a.shape[-1] != new_A.shape[-1]:
            raise ValueError(f"orthogonality_loss: old A of shape {tuple(a.shape)} does not match "
                             f"the new A's width {new_A.shape[-1]}")
    old = torch.cat([a.to(new_A.dtype) for a in old_As], dim=0)
    return (old @ new_A.T).abs().sum()


class OLoRA(LoRAFamily):
    """O-LoRA: per-task peft LoRA adapters, all summed, new ones kept orthogonal to the old.

    Args:
        rank: LoRA rank r of every adapter (> 0; paper 8).
        alpha: LoRA scaling numerator, s = alpha / r (> 0; paper 32).
        dropout: dropout on the LoRA input, in [0, 1).
        lambda1: weight of the orthogonality penalty (>= 0; paper 0.5).
        lambda2: weight of the norm penalty on the new adapter (>= 0; paper 0).
        target_modules: names of the backbone's layers to adapt (MONAI ViT: ``qkv``,
            ``out_proj``, ``linear1``, ``linear2``); ``None``: the backbone's ``lora_targets``.
        lr, head_lr, weight_decay: optimiser settings (adapter at ``lr``, head at ``head_lr``).

    Attributes:
        adapters: adapter (= task) names in the order they were added.
        current: the adapter that trains now (None outside of a task).

    Raises:
        ConfigError: rank/alpha not positive, dropout out of range, a negative lambda, an empty
            target list, or (at ``setup``) a target module the backbone does not have.
    """

    name = "olora"
    needs_task_id = False  # one model: all adapters summed

    def __init__(self, rank: PositiveInt = 8, alpha: PositiveFloat = 32.0,
                 dropout: OpenFraction = 0.0, lambda1: NonNegativeFloat = 0.5,
                 lambda2: NonNegativeFloat = 0.0,
                 target_modules: NonEmptyStrList | None = None, lr: PositiveFloat = 1e-3,
                 head_lr: PositiveFloat = 3e-3, weight_decay: NonNegativeFloat = 0.0):
        super().__init__(rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules,
                         lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)
        self.current: str | None = None

    # ------------------------------------------------------------------ hooks
    def before_task(self, t: int, task: Task) -> None:
        """Add task ``t``'s adapter; it and the task's head are the only trainable parameters."""
        self.add_task_adapter(task)
        self.current = task.name
        self.model.requires_grad_(False)
        self.activate(task)  # sets requires_grad of the adapters
        self.model.heads[task.name].requires_grad_(True)

    def activate(self, task: Task) -> None:
        """Every adapter added so far is active (the task is irrelevant: no task id needed);
        only :attr:`current` is trainable. Before any adapter exists: the plain backbone."""
        backbone = self.model.backbone
        if not isinstance(backbone, PeftModel):
            return
        if not self.adapters:
            backbone.base_model.disable_adapter_layers()
            return
        backbone.base_model.enable_adapter_layers()
        backbone.base_model.set_adapter(list(self.adapters), inference_mode=True)  # all frozen
        if self.current is not None:
            for layer in lora_layers(self.model.encoder).values():
                for factors in (layer.lora_A, layer.lora_B):
                    if self.current in factors:
                        factors[self.current].requires_grad_(True)

    def orthogonality(self, name: str | None = None) -> torch.Tensor:
        """sum over adapted layers of :func:`orthogonality_loss` of adapter ``name`` (default:
        :attr:`current`) against the adapters added before it; 0-d tensor, 0 without any."""
        name = self.current if name is None else name
        older = self.adapters[:self.adapters.index(name)] if name in self.adapters else []
        total = None
        for layer in lora_layers(self.model.encoder).values():
            if name is None or name not in layer.lora_A:
                continue
            old = [layer.lora_A[n].weight.detach() for n in older if n in layer.lora_A]
            term = orthogonality_loss(old, layer.lora_A[name].weight)
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def new_adapter_norm(self) -> torch.Tensor:
        """sum over the current adapter's A and B matrices of their Frobenius norms."""
        total = None
        for layer in lora_layers(self.model.encoder).values():
            for factors in (layer.lora_A, layer.lora_B):
                if self.current is not None and self.current in factors:
                    term = torch.linalg.vector_norm(factors[self.current].weight)
                    total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        terms = []
        if self.lambda1 > 0 and len(self.adapters) > 1:
            terms.append(self.lambda1 * self.orthogonality())
        if self.lambda2 > 0:
            terms.append(self.lambda2 * self.new_adapter_norm())
        return sum(terms) if terms else None

    def after_task(self, t: int, task: Task) -> None:
        """Freeze task ``t``'s adapter (it stays active for every later task)."""
        self.current = None
        self.model.requires_grad_(False)
        self.activate(task)
