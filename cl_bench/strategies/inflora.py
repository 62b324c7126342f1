"""InfLoRA: interference-free low-rank adaptation of the attention keys and values.

Liang & Li 2024, "InfLoRA: Interference-Free Low-Rank Adaptation for Continual Learning",
CVPR 2024, arXiv 2404.00228; reconstructed from the paper and its official code
(``methods/inflora.py``, ``models/vit_inflora.py``).

Every attention block's keys and values get one low-rank branch per task, ``ΔW_t = B_t A_t``
(no ``alpha / r`` scaling), and *all* branches of the tasks seen so far are summed::

    k = W_k x + sum_{j<=t} B^k_j A_j x        v = W_v x + sum_{j<=t} B^v_j A_j x

Before task t (``before_task``), per block, on task t's training data with the current model:

    C   = mean over tokens of x xᵀ                (x: the attention input, (D,) per token)
    C'  = C - M Mᵀ C                               (M: basis of the earlier tasks' inputs, (D, k))
    A_t = (top-r left singular vectors of C')ᵀ / sqrt(3)     (r, D), frozen
    B_t = 0                                        (D, r) for k and for v: the only part that trains

so ``A_t M = 0``: the new branch cannot change the block's output on inputs in span(M), which
is where the old tasks' inputs live (up to the energy threshold). After task t (``after_task``),
``M`` grows by the DualGPM / GPM rule (:func:`cl_bench.strategies.subspace.gpm_update`) with the
covariance of task t's inputs under the trained model as representation matrix (as in the code,
so the energy counted is the squared eigenvalues of C and the bases stay small) and energy
threshold ``eps_t = eps_start + (eps_end - eps_start) * t / T`` (t 0-based, T tasks; the paper's
CIFAR-100 setting 0.95 -> 1.0, ImageNet-R 0.98 -> 1.0). Everything else in the backbone is frozen;
the current task's head trains (task-IL: its own head; class-IL: the shared growing head, so no
task id is needed at test: ``needs_task_id = False``; as with the code's per-task
``classifier_pool``, only the rows of the current task's classes train, with the cross-entropy
over those classes only (:meth:`InfLoRA.training_loss`), and the head's LayerNorm on task 0
only). Since the branches are always on and sum, merging them into the weights
(``merge_and_unload``) gives the same function exactly.

Implementation: MONAI's attention has one fused ``qkv`` Linear (rows ``[0:D]`` q, ``[D:2D]`` k,
``[2D:3D]`` v), in a ViT's blocks and in a Swin transformer's window attention alike (there ``x``
is a window's tokens and ``D`` grows per stage); every such attention gets a branch. The targets
are therefore the method's own (every fused ``qkv``), not the backbone's ``lora_targets``: a shared
Swin UNETR decoder stays frozen. Each task is one peft LoRA adapter on ``qkv`` (``lora_alpha = r``,
so the scale is 1): ``lora_A`` (r, D) is set to ``A_t`` and frozen, ``lora_B`` (3D, r) is
zero-initialised and the gradient of its q rows is zeroed after every training step's backward
pass (:meth:`InfLoRA.after_backward`), so ``B[0:D]`` stays exactly 0 and the branch is InfLoRA's
``(B^k, B^v)`` pair with a shared ``A_t`` (as in the code, where ``lora_A_k`` and ``lora_A_v``
get the same matrix). All adapters are active at once (peft
``set_adapter([...])``). The trainable B's are picked by the exact adapter key in each layer's
``lora_B`` dict, never by a substring of a parameter name (the official code's ``"lora_B_k.1" in
name`` also unfreezes task 10's branch).

Shapes: attention input ``x`` ``(B, N, D)``; ``C`` ``(D, D)``; ``M`` ``(D, k)``; ``A_t`` ``(r, D)``;
peft ``lora_B`` ``(3D, r)``.

Raises:
    ConfigError: a non-positive rank, thresholds outside (0, 1], non-positive statistics batch
    size / sample cap (at construction), a backbone without an attention with a fused ``qkv``
    Linear (at ``setup``).

Deviations: the energy rule on the first task reaches the threshold (the code stops one direction
short) and the basis is always stored as such, not as its complement (see
:mod:`cl_bench.strategies.subspace`). If the complement of ``M`` has fewer than r dimensions the
missing rows of ``A_t`` are zero (the code would take arbitrary singular vectors there). The
statistics passes may be capped (``stat_max_samples``). Class-IL: the runner's loss is the
cross-entropy over every class seen so far, so the code's loss over the current task's classes is
obtained by adding ``CE_own - CE_all`` (same value and gradient as ``CE_own``); with
``weight_decay > 0`` AdamW's decoupled decay still shrinks the frozen head rows. The code's
k-means task keys (cluster centres of each task's features) are not reproduced.
"""

from __future__ import annotations

import math

import torch
from peft import PeftModel
from torch import nn
from torch.nn import functional as F

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.ranges import (NonNegativeFloat, PositiveFloat, PositiveFraction,
                             PositiveInt)
from cl_bench.models.heads import TaskView
from cl_bench.strategies.lora import LoRAFamily
from cl_bench.strategies.subspace import (gpm_update, principal_directions, relative_overlap,
                                          task_layer_inputs)


class InfLoRA(LoRAFamily):
    """InfLoRA on the keys and values of every attention block (see module docstring).

    Args:
        rank: rank r of each task's branch (paper: 10).
        eps_start, eps_end: energy threshold of the basis update after the first and (nearly)
            the last task, ``eps_t = eps_start + (eps_end - eps_start) * t / T``, each in (0, 1].
        stat_batch_size: batch size of the statistics passes over a task's training data.
        stat_max_samples: at most this many training samples per statistics pass (None: all).
        lr, head_lr, weight_decay: optimiser settings (B's at ``lr``, head at ``head_lr``).

    Raises:
        ConfigError: see module docstring.
    """

    name = "inflora"
    needs_task_id = False

    def __init__(self, rank: PositiveInt = 10, eps_start: PositiveFraction = 0.95,
                 eps_end: PositiveFraction = 1.0, stat_batch_size: PositiveInt = 16,
                 stat_max_samples: PositiveInt | None = None, lr: PositiveFloat = 5e-4,
                 head_lr: PositiveFloat = 3e-3, weight_decay: NonNegativeFloat = 0.0):
        # one branch per task on the fused qkv, no dropout, scale 1 (lora_alpha = r, as an int)
        super().__init__(rank=rank, alpha=rank, dropout=0.0, target_modules=["qkv"], lr=lr,
                         head_lr=head_lr, weight_decay=weight_decay)
        self.alpha = self.rank
        self.eps_start, self.eps_end = float(eps_start), float(eps_end)
        self.stat_batch_size, self.stat_max_samples = int(stat_batch_size), stat_max_samples
        #: per block ("blocks.<i>"): basis M of the earlier tasks' attention inputs, (D, k) float64
        self.bases: dict[str, torch.Tensor] = {}
        #: per task t: {block: k}, the size of M when A_t was designed (M_{<t} = M[:, :k])
        self.basis_sizes: list[dict[str, int]] = []
        #: the current task's trainable ``lora_B`` weights, (3D, r) each: q rows' gradient zeroed
        self._branches: list[nn.Parameter] = []
        #: class-IL: the shared head's ``fc.weight`` (K, D) and ``fc.bias`` (K,): the gradient of
        #: every row outside ``_own_rows`` (the current task's classes) is zeroed
        self._head_params: list[nn.Parameter] = []
        self._own_rows = slice(0, 0)

    # ------------------------------------------------------------------ wiring
    def setup(self, model: nn.Module, stream: list[Task]) -> None:
        """Find the backbone's attentions with a fused ``qkv`` Linear (before LoRAFamily's
        check of the ``qkv`` target, so a backbone without one is named as such) and attach.

        Raises:
            ConfigError: a backbone without an attention with a fused ``qkv`` Linear
                (``out_features = 3 * in_features``).
        """
        attentions = fused_attentions(model.encoder)
        if not attentions:
            raise ConfigError("strategy=inflora: the backbone has no attention with a fused "
                              "'qkv' Linear (MONAI ViT/UNETR blocks, Swin window attention); "
                              "InfLoRA adapts attention keys and values")
        super().setup(model, stream)
        self._attentions = attentions

    def _blocks(self) -> dict[str, nn.Module]:
        """``{name: attention module}``, in forward order: a ViT's ``blocks.<i>`` (the names
        of runs saved before the Swin was supported), else the attention's module path."""
        return self._attentions

    def _threshold(self, t: int) -> float:
        return self.eps_start + (self.eps_end - self.eps_start) * t / len(self.stream)

    def _attention_covariances(self, task: Task) -> dict[str, torch.Tensor]:
        """``C`` per block on ``task.train`` with the model as it is now (eval mode)."""
        return task_layer_inputs(self.model, self._blocks(),
                                 task.train, self.stat_batch_size, self.stat_max_samples,
                                 "covariance")

    def _set_active(self) -> None:
        """All branches on (peft's set_adapter flips requires_grad: keep ours)."""
        backbone = self.model.backbone
        flags = {p: p.requires_grad for p in self.model.parameters()}
        backbone.base_model.set_adapter(list(self.adapters))
        for p, flag in flags.items():
            p.requires_grad_(flag)

    def qkv_layers(self) -> dict[str, nn.Module]:
        """The peft LoRA layer wrapping each block's ``qkv`` (after the first ``before_task``)."""
        return {n: attn.qkv for n, attn in self._blocks().items()}

    # ------------------------------------------------------------------- hooks
    def before_task(self, t: int, task: Task) -> None:
        covariances = self._attention_covariances(task)
        new = task.name not in self.adapters
        self.add_task_adapter(task)
        sizes = {}
        for name, layer in self.qkv_layers().items():
            basis = self.bases.get(name)
            sizes[name] = 0 if basis is None else basis.shape[1]
            if new:
                a = principal_directions(covariances[name], basis, self.rank).T / math.sqrt(3)
                with torch.no_grad():
                    layer.lora_A[task.name].weight.copy_(a.to(layer.lora_A[task.name].weight))
                    layer.lora_B[task.name].weight.zero_()
        if new:
            self.basis_sizes = self.basis_sizes[:t] + [sizes]
        self._set_active()
        self.model.requires_grad_(False)
        self._branches = [layer.lora_B[task.name].weight  # exact key: this task's branch only
                          for layer in self.qkv_layers().values()]
        for b in self._branches:
            b.requires_grad_(True)
        head = self.model.heads[task.name]
        head.requires_grad_(True)
        self._head_params = []
        if isinstance(head, TaskView):
            self._train_own_classes_only(head, t)

    def _train_own_classes_only(self, view: TaskView, t: int) -> None:
        """Class-IL: the shared head acts as the code's per-task ``classifier_pool``: only the
        rows of task t's classes train (:meth:`after_backward` zeroes the others' gradient); its
        LayerNorm trains on the first task only."""
        shared = view.shared
        start = sum(shared.sizes[:view.task_index])
        self._own_rows = slice(start, start + shared.sizes[view.task_index])
        self._head_params = [shared.fc.weight, shared.fc.bias]
        if t > 0:
            shared.norm.requires_grad_(False)

    def after_backward(self, loss: torch.Tensor, t: int) -> None:
        """After each training step's backward pass (Liang & Li 2024, arXiv 2404.00228): zero the
        gradient of what must not move, in place, before AdamW's step.

        * every ``lora_B`` of task t, ``p.grad`` (3D, r): rows ``[0:D]`` (the q part of the
          fused qkv), so ``B[0:D]`` stays exactly 0 and the branch is the paper's ``(B^k, B^v)``;
        * class-IL: the shared head's ``fc.weight.grad`` (K, D) and ``fc.bias.grad`` (K,):
          every row outside the current task's classes.

        The same bits as a gradient hook returning the edited gradient (the kept entries are
        untouched, the others +0.0), but only for the runner's training steps. ``loss`` (0-d)
        is not read; a gradient that is ``None`` is left alone. Raises nothing."""
        for b in self._branches:
            if b.grad is not None:
                b.grad[:b.shape[0] // 3] = 0
        rows = self._own_rows
        for p in self._head_params:
            if p.grad is not None:
                p.grad[:rows.start] = 0
                p.grad[rows.stop:] = 0

    def training_loss(self, batch: dict, out: torch.Tensor, t: int) -> torch.Tensor | None:
        """Class-IL only: ``CE(own classes) - CE(all seen classes)``, which turns the runner's
        cross-entropy over every seen class into the code's cross-entropy over the current task's
        classes (its per-task classifier); ``None`` (no extra term) in task-IL."""
        if not isinstance(self.model.heads[self.stream[t].name], TaskView):
            return None
        rows, label = self._own_rows, batch["label"].long()
        own = F.cross_entropy(out[:, rows].float(), label - rows.start)
        return own - F.cross_entropy(out.float(), label)

    def activate(self, task: Task) -> None:
        backbone = self.model.backbone
        if isinstance(backbone, PeftModel) and list(backbone.active_adapters) != self.adapters:
            self._set_active()

    def after_task(self, t: int, task: Task) -> None:
        covariances = self._attention_covariances(task)
        eps = self._threshold(t)
        for name in self.qkv_layers():
            self.bases[name] = gpm_update(covariances[name], self.bases.get(name), eps)

    # --------------------------------------------------------------- checks
    def orthogonality_residual(self, t: int) -> float:
        """``max`` over blocks of ``||A_t M_{<t}||_F / ||A_t||_F`` (0 for t = 0; ~1e-7 expected).

        ``M_{<t}``: the basis as it was when ``A_t`` was designed (the first ``k`` columns of
        the current one: GPM only appends).
        """
        name = self.adapters[t]
        worst = 0.0
        for layer_name, layer in self.qkv_layers().items():
            k = self.basis_sizes[t][layer_name]
            basis = self.bases.get(layer_name)
            if k == 0 or basis is None:
                continue
            worst = max(worst, relative_overlap(layer.lora_A[name].weight, basis[:, :k]))
        return worst

    def state_dict(self) -> dict:
        return {**super().state_dict(), "bases": {n: b.clone() for n, b in self.bases.items()},
                "basis_sizes": [dict(s) for s in self.basis_sizes]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.bases = {n: b.to(torch.float64) for n, b in state.get("bases", {}).items()}
        self.basis_sizes = [dict(s) for s in state.get("basis_sizes", [])]


def fused_attentions(encoder: nn.Module) -> dict[str, nn.Module]:
    """The encoder's attention modules with a fused ``qkv`` ``nn.Linear`` (``out_features =
    3 * in_features``), in module order: ``{"blocks.<i>": attn}`` for a MONAI ViT (``vit.blocks``),
    ``{module path: attn}`` otherwise (a Swin's ``swinViT.layers1.0.blocks.0.attn`` ...)."""
    blocks = getattr(getattr(encoder, "vit", None), "blocks", None)
    if blocks is not None:
        named = {f"blocks.{i}": getattr(b, "attn", None) for i, b in enumerate(blocks)}
    else:
        named = {n: m for n, m in encoder.named_modules() if hasattr(m, "qkv")}
    return {n: m for n, m in named.items()
            if isinstance(getattr(m, "qkv", None), nn.Linear)
            and m.qkv.out_features == 3 * m.qkv.in_features}
