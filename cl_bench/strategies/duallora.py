"""DualLoRA: an orthogonal adapter shared by all tasks + a residual adapter per task, with a
dynamic memory that weights the residual branches and retrieves the task.

Chen, Li, Zhuang, Chen & Lyu 2024, "Dual Low-Rank Adaptation for Continual Learning with
Pre-Trained Models", arXiv 2411.00623 (later "Replay-Free Continual Low-Rank Adaptation with
Dynamic Memory"). No public code: a reconstruction from the paper and summaries (docs/architecture.md §7).

Per adapted ``nn.Linear`` ``y = W x`` (default targets: the backbone's Linear ``lora_targets``,
the attention projections of our ``lora`` strategy: a ViT's ``qkv`` and ``out_proj``, a Swin's
``attn.qkv`` and ``attn.proj``; a shared Swin UNETR decoder's convolutions stay frozen, as the
method's subspaces are of token features) the layer becomes :class:`DualLoRALinear`::

    y = W x + s · B_o A_o x + sum_t  w_t(x) · B_t U_tᵀ x

* **orthogonal adapter** (shared, trains on every task): ``B_o`` ``(out, r)`` a fixed random
  frame with orthonormal columns, ``A_o`` ``(r, in)`` trainable, ``s = alpha / r``. During task t
  its change is kept in the orthogonal complement of the earlier tasks' input bases ``M_{<t}``
  ``(in, k)``: the trainable parameter is ``ΔA`` and the layer uses
  ``A_o = A_base + ΔA (I - M Mᵀ)``, so ``grad_ΔA = grad_A (I - M Mᵀ)`` (the GPM projection of
  the gradient) and, whatever the optimiser does with it (AdamW rescales gradients entry-wise,
  which would break a plain gradient projection), the weight change ``ΔW = s B_o ΔA (I - M Mᵀ)``
  satisfies ``ΔW x = 0`` for ``x`` in ``span(M_{<t})``. After the task ``ΔA (I - M Mᵀ)`` is folded
  into ``A_base`` and ``M`` grows by the GPM energy rule (:func:`~cl_bench.strategies.subspace.
  gpm_update`, threshold ``threshold``) on the task's layer inputs under the trained model.
* **residual adapter** of task t: ``U_t`` ``(in, k_t)`` the top singular directions of task t's
  layer inputs (energy ``threshold``, at most ``residual_rank``; computed before training with
  the current model), frozen; ``B_t`` ``(out, k_t)`` zero-initialised, trains during task t only.
  Its update lives in ``span(U_t)`` (it only sees ``U_tᵀ x``).
* **dynamic memory**: ``w_t(x) = ||U_tᵀ x̄||² / ||x̄||²`` per sample, ``x̄`` the sample's mean
  token at that layer's input. The task-id guess (:meth:`DualLoRA.predict_task_id`) is the
  argmax over the trained tasks of ``w_t`` at the *first adapted layer* in forward order (block
  0's ``qkv`` by default; on a Swin, whose attention sees windows, ``x̄`` is the mean over all
  of a sample's windows) with that layer's energy bases (``threshold``, no rank cap). That layer's
  input depends on no adapter, so the bases of task 1 are still valid after task 5; one cheap
  partial forward pass (stopped at that layer).

Residual weighting (``residual_weights``):

* ``"task"`` (default): the activated task's residual alone, weight 1, in training and at test.
  In oracle evaluation (``eval.task_id=oracle``, ``activate(task j)``) task j runs with residual j
  and head j: its residual and head never change after task j, the orthogonal adapter changes
  only outside ``span(M_{<t})``, so an old task's score moves only by the input energy outside
  its bases (1 - threshold) and the drift it causes in later layers: oracle BWT ≈ 0, not exactly
  0. With predicted ids the runner activates the retrieved task: the hard (one-hot) version of
  the dynamic memory.
* ``"dynamic"``: every trained task's residual is on, weighted per sample and per layer by
  ``w_t(x)`` (the paper's soft memory); ``activate`` then only picks the head. Training uses the
  same weighting, so task t's residual learns under ``w_t`` of its own data.

Shapes: layer input ``(B, N, in)``; ``x̄`` ``(B, in)``; bases ``(in, k)``; retrieval scores
``(B, T_trained)``; ``predict_task_id`` ``(B,)`` long stream indices.

Why a custom module and not peft: peft's LoRA layers cannot weight branches per sample, project
a factor through a fixed matrix inside the forward, or keep a frozen data-derived factor per
adapter; :class:`DualLoRALinear` is those ~40 lines. Parameter names contain ``lora_`` so the
runner's parameter counts treat them as adapters (the residual of task ``<name>`` is
``...lora_res.<name>.B``), and the frozen Linear is ``base_layer`` as in peft.

Raises:
    ConfigError: a non-positive rank / alpha / residual rank / statistics setting, a threshold
    outside (0, 1], an unknown ``residual_weights`` (construction); a target module the backbone
    does not have or a rank larger than a target's output width (``setup``).

Deviations: the mean token stands in for the [CLS] token (our ViTs have none); on a Swin the
statistics and the dynamic memory's per-sample weights are per attention window (the layer's
input rows), while retrieval averages over each sample's windows; ``B_o`` is a fixed
random orthonormal frame and only ``A_o`` trains (with both factors trainable,
``ΔW = ΔB·A + B·ΔA + ...`` would not vanish on old inputs); ``k_t`` is capped at
``residual_rank`` and ``U_t`` zero-padded to it (fixed parameter shapes, so a resumed run's
strict ``load_state_dict`` works); task retrieval uses only the first adapted layer; the paper's
confidence-based output calibration is not implemented (it does not change the argmax).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.files import atomic_write
from cl_bench.ranges import (NonEmptyStrList, NonNegativeFloat, PositiveFloat, PositiveFraction,
                             PositiveInt)
from cl_bench.strategies.lora import LoRAFamily, matches_target
from cl_bench.strategies.subspace import (energy_basis, gpm_update, projector,
                                          relative_overlap, task_layer_inputs)

#: how the residual branches are weighted (module docstring)
ResidualWeights = Literal["task", "dynamic"]
RESIDUAL_WEIGHTS = typing.get_args(ResidualWeights)


def memory_weights(x_mean: torch.Tensor, bases: list[torch.Tensor]) -> torch.Tensor:
    """Dynamic-memory weights ``w_t = ||U_tᵀ x||² / ||x||²``.

    Args:
        x_mean: ``(B, D)`` one vector per sample (the mean token).
        bases: ``T`` bases ``(D, k_t)`` (orthonormal columns, zero columns allowed).

    Returns:
        ``(B, T)`` weights in ``[0, 1]``.
    """
    x = x_mean.float()
    denom = (x ** 2).sum(-1).clamp_min(1e-12)
    return torch.stack([((x @ u.to(x)) ** 2).sum(-1) / denom for u in bases], dim=-1)


def _mean_token(x: torch.Tensor) -> torch.Tensor:
    """``(B, ..., D)`` -> ``(B, D)``: mean over every axis between batch and features."""
    return x.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1)


class _Residual(nn.Module):
    """One task's residual branch ``B Uᵀ x``: ``U`` ``(in, k)`` frozen buffer, ``B`` ``(out, k)``
    trainable (zero-initialised)."""

    def __init__(self, basis: torch.Tensor, out_features: int):
        super().__init__()
        self.register_buffer("U", basis.clone())
        self.B = nn.Parameter(torch.zeros(out_features, basis.shape[1], dtype=basis.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.U.T), self.B)


class DualLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` with DualLoRA's orthogonal and residual adapters (module doc).

    Args:
        base: the Linear to adapt (kept as ``base_layer``, frozen by the strategy).
        rank: rank r of the orthogonal adapter (<= ``base.out_features``).
        alpha: orthogonal adapter scale numerator (``s = alpha / rank``).
        residual_rank: width of every residual branch (``U_t`` zero-padded to it).
        generator: RNG for the fixed frame ``B_o``.

    Attributes (set by the strategy): ``active`` (task name of the residual to use, or None),
    ``dynamic`` (weight all residuals by the memory), ``proj_perp`` ``(in, in)`` = ``I - M Mᵀ``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, residual_rank: int,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.base_layer = base
        w = base.weight
        frame, _ = torch.linalg.qr(torch.randn(base.out_features, rank, generator=generator))
        self.register_buffer("lora_orth_B", frame.to(w))
        self.register_buffer("lora_orth_A_base", torch.zeros(rank, base.in_features).to(w))
        #: the current task's change of A_o, before projection
        self.lora_orth_A = nn.Parameter(torch.zeros(rank, base.in_features).to(w))
        self.register_buffer("proj_perp", torch.eye(base.in_features).to(w), persistent=False)
        self.lora_res = nn.ModuleDict()
        self.scale, self.residual_rank = alpha / rank, residual_rank
        self.active: str | None = None
        self.dynamic = False

    def orth_A(self) -> torch.Tensor:
        """Effective ``A_o = A_base + ΔA (I - M Mᵀ)``, ``(r, in)``."""
        return self.lora_orth_A_base + self.lora_orth_A @ self.proj_perp

    def task_delta(self) -> torch.Tensor:
        """``ΔW`` of the orthogonal adapter during the current task, ``(out, in)``."""
        return self.scale * self.lora_orth_B @ (self.lora_orth_A @ self.proj_perp)

    def add_residual(self, name: str, basis: torch.Tensor) -> None:
        """Add task ``name``'s residual branch with basis ``(in, k)``, ``k <= residual_rank``."""
        u = torch.zeros(self.base_layer.in_features, self.residual_rank)
        u[:, :basis.shape[1]] = basis[:, :self.residual_rank].to(u)
        self.lora_res[name] = _Residual(u.to(self.base_layer.weight), self.base_layer.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x) + self.scale * F.linear(F.linear(x, self.orth_A()), self.lora_orth_B)
        if self.dynamic and len(self.lora_res):
            res = list(self.lora_res.values())
            w = memory_weights(_mean_token(x.detach()), [r.U for r in res]).to(y)  # (B, T)
            shape = (x.shape[0],) + (1,) * (y.dim() - 1)
            for i, r in enumerate(res):
                y = y + w[:, i].reshape(shape) * r(x)
        elif self.active is not None and self.active in self.lora_res:
            y = y + self.lora_res[self.active](x)
        return y


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the retrieval layer's input is read."""


class DualLoRA(LoRAFamily):
    """DualLoRA on the backbone's ``target_modules`` (see module docstring).

    Args:
        rank: rank r of the orthogonal adapter.
        alpha: orthogonal adapter scale ``alpha / rank``.
        residual_rank: at most this many basis directions per task and layer (residual width).
        threshold: energy share of the GPM bases (residual ``U_t``, memory ``M``, retrieval), in
            (0, 1] (paper's range ~0.95-0.99).
        target_modules: names of the backbone's ``nn.Linear`` layers to adapt; ``None``: the
            backbone's ``lora_targets`` that are Linear layers.
        residual_weights: ``"task"`` or ``"dynamic"`` (module docstring).
        stat_batch_size, stat_max_samples: the statistics passes over a task's training data.
        lr, head_lr, weight_decay: optimiser settings (adapters at ``lr``).

    Raises:
        ConfigError: see module docstring.
    """

    name = "duallora"
    needs_task_id = True
    task_agnostic = True
    #: the adapter list's key in state.pt (runs saved before LoRAFamily used it)
    adapters_key = "tasks"
    linear_only = True

    def __init__(self, rank: PositiveInt = 8, alpha: PositiveFloat = 8.0,
                 residual_rank: PositiveInt = 16, threshold: PositiveFraction = 0.97,
                 target_modules: NonEmptyStrList | None = None,
                 residual_weights: ResidualWeights = "task",
                 stat_batch_size: PositiveInt = 16, stat_max_samples: PositiveInt | None = None,
                 lr: PositiveFloat = 1e-3, head_lr: PositiveFloat = 3e-3,
                 weight_decay: NonNegativeFloat = 0.0):
        super().__init__(rank=rank, alpha=alpha, dropout=0.0, target_modules=target_modules,
                         lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        self.residual_rank, self.threshold = int(residual_rank), float(threshold)
        self.residual_weights = residual_weights
        self.stat_batch_size, self.stat_max_samples = int(stat_batch_size), stat_max_samples
        #: per layer: basis M of the earlier tasks' inputs (in, k), float64
        self.memory: dict[str, torch.Tensor] = {}
        #: per trained task: retrieval basis (in, k) at the first adapted layer
        self.retrieval: list[torch.Tensor] = []
        #: name of the first adapted layer in forward order (set by the first statistics pass)
        self.retrieval_layer: str | None = None
        #: per task t: ||ΔW_orth P_prev|| / ||ΔW_orth||, max over layers (0 for t = 0)
        self.orth_residuals: list[float] = []

    # ------------------------------------------------------------------ wiring
    @property
    def tasks(self) -> list[str]:
        """Task names with a residual branch, in stream order (:attr:`adapters`)."""
        return self.adapters

    def setup(self, model: nn.Module, stream: list[Task]) -> None:
        """Check the targets (LoRAFamily) and the rank against their widths; replace every
        targeted ``nn.Linear`` by a :class:`DualLoRALinear`.

        Raises:
            ConfigError: a target module the backbone does not have, or a rank above a
                target's output width (``strategy.rank``).
        """
        super().setup(model, stream)
        encoder = model.encoder
        linear = {n: m for n, m in encoder.named_modules() if isinstance(m, nn.Linear)}
        targets = {n: m for n, m in linear.items() if matches_target(n, self.target_modules)}
        too_narrow = sorted({n.rsplit(".", 1)[-1] for n, m in targets.items()
                             if m.out_features < self.rank})
        if too_narrow:
            raise ConfigError(f"strategy.rank: {self.rank} exceeds the output width of "
                              f"{too_narrow}; use a rank <= their out_features")
        gen = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        for name, lin in targets.items():
            parent_name, _, child = name.rpartition(".")
            parent = encoder.get_submodule(parent_name) if parent_name else encoder
            setattr(parent, child, DualLoRALinear(lin, self.rank, self.alpha, self.residual_rank,
                                                  gen))
        self.layers: dict[str, DualLoRALinear] = {
            n: m for n, m in encoder.named_modules() if isinstance(m, DualLoRALinear)}

    def _layer_inputs(self, task: Task) -> dict[str, torch.Tensor]:
        """Mean-token inputs ``(in, n)`` of every adapted layer on ``task.train`` (eval mode)."""
        reps = task_layer_inputs(self.model, self.layers, task.train, self.stat_batch_size,
                                 self.stat_max_samples, "mean_token")
        self.retrieval_layer = next(iter(reps))  # first layer reached in the forward pass
        return reps

    def _set_residuals(self, active: str | None) -> None:
        for layer in self.layers.values():
            layer.active = active
            layer.dynamic = self.residual_weights == "dynamic"

    def _set_projectors(self) -> None:
        for name, layer in self.layers.items():
            basis = self.memory.get(name)
            eye = torch.eye(layer.base_layer.in_features, dtype=torch.float64)
            perp = eye if basis is None else eye - projector(basis)
            layer.proj_perp = perp.to(layer.base_layer.weight)

    # ------------------------------------------------------------------- hooks
    def before_task(self, t: int, task: Task) -> None:
        self._set_residuals(None)  # task t's inputs without any residual (its own is not there)
        reps = self._layer_inputs(task)
        for name, layer in self.layers.items():
            if task.name not in layer.lora_res:
                layer.add_residual(task.name, energy_basis(reps[name], self.threshold,
                                                           self.residual_rank))
        if task.name not in self.adapters:
            self.adapters.append(task.name)
        self.retrieval = self.retrieval[:t] + [
            energy_basis(reps[self.retrieval_layer], self.threshold).float()]
        self.model.requires_grad_(False)
        for layer in self.layers.values():
            layer.lora_orth_A.requires_grad_(True)
            layer.lora_res[task.name].B.requires_grad_(True)  # exact key: this task's only
        self.model.heads[task.name].requires_grad_(True)
        self.activate(task)

    def activate(self, task: Task) -> None:
        self._set_residuals(task.name if task.name in self.tasks else None)

    def after_task(self, t: int, task: Task) -> None:
        self.activate(task)
        reps = self._layer_inputs(task)
        worst = 0.0
        with torch.no_grad():
            for name, layer in self.layers.items():
                worst = max(worst, relative_overlap(layer.task_delta(), self.memory.get(name)))
                layer.lora_orth_A_base += layer.lora_orth_A @ layer.proj_perp  # fold ΔA in
                layer.lora_orth_A.zero_()
                self.memory[name] = gpm_update(reps[name], self.memory.get(name), self.threshold)
        self.orth_residuals = self.orth_residuals[:t] + [worst]
        self._set_projectors()

    # -------------------------------------------------------------- retrieval
    @torch.no_grad()
    def memory_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T_trained)`` dynamic-memory weights at the retrieval layer for images ``x``."""
        layer = self.layers[self.retrieval_layer]
        seen = {}

        def grab(module, args):
            seen["x"] = args[0]
            raise _Stop

        handle = layer.register_forward_pre_hook(grab)
        was_training = self.model.training
        self.model.eval()
        try:
            self.model.features(x)
        except _Stop:
            pass
        finally:
            handle.remove()
            self.model.train(was_training)
        # a ViT's rows are samples; a Swin's are windows, batch-major: one mean per sample
        return memory_weights(_mean_token(seen["x"].reshape(x.shape[0], -1, seen["x"].shape[-1])),
                              self.retrieval)

    def predict_task_id(self, x: torch.Tensor) -> torch.Tensor:
        """Stream index of the trained task with the largest memory weight, ``(B,)`` long
        (task 0 for every sample before any task is trained)."""
        if not self.retrieval:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        best = self.memory_scores(x).argmax(dim=-1).cpu()
        index = torch.tensor([[t.name for t in self.stream].index(n) for n in self.tasks])
        return index[best].to(x.device)

    # --------------------------------------------------------------- checks
    def orthogonality_residual(self, t: int) -> float:
        """``max`` over layers of ``||ΔW_orth^(t) P_prev||_F / ||ΔW_orth^(t)||_F`` (0 for t = 0).

        ``ΔW_orth^(t)``: the change of the orthogonal adapter's weight during task t (measured
        before it is folded in); ``P_prev``: projector onto the earlier tasks' bases.
        """
        return float(self.orth_residuals[t])

    def save(self, run_dir: Path, t: int, task: Task) -> None:
        out = Path(run_dir) / "adapters" / task.name
        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, layer in self.layers.items():
            res = layer.lora_res[task.name]
            tensors[f"{name}.residual.U"] = res.U.detach().cpu().contiguous()
            tensors[f"{name}.residual.B"] = res.B.detach().cpu().contiguous()
            tensors[f"{name}.orth.delta_weight"] = (
                layer.scale * layer.lora_orth_B @ layer.orth_A()).detach().cpu().contiguous()
        tensors["retrieval_basis"] = self.retrieval[t].contiguous()
        atomic_write(out / "duallora.safetensors", lambda tmp: save_file(tensors, str(tmp)))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "memory": {n: m.clone() for n, m in self.memory.items()},
                "retrieval": [r.clone() for r in self.retrieval],
                "retrieval_layer": self.retrieval_layer,
                "orth_residuals": list(self.orth_residuals)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memory = {n: m.to(torch.float64) for n, m in state.get("memory", {}).items()}
        self.retrieval = list(state.get("retrieval", []))
        self.retrieval_layer = state.get("retrieval_layer", self.retrieval_layer)
        self.orth_residuals = list(state.get("orth_residuals", []))
        self._set_projectors()
