"""PROTEUS's layer: :class:`ProteusLinear`, a frozen ``nn.Linear`` plus composed per-task
low-rank components (:mod:`cl_bench.strategies.proteus` (a)).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


# --------------------------------------------------------------------------- the layer
def orthogonality_penalty(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """O-LoRA's penalty ``sum |old @ newᵀ|`` (entry-wise L1), ``old (R, in)``, ``new (r, in)``."""
    return (old @ new.T).abs().sum()


class _Component(nn.Module):
    """Task k's parameters in one layer: ``A (r, in)``, ``B (out, r)``, ``coef (k,)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, n_prev: int,
                 coef_init: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.coef = nn.Parameter(torch.full((n_prev,), float(coef_init)))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as peft's LoRA A


class ProteusLinear(nn.Module):
    """A frozen ``nn.Linear`` plus composed per-task low-rank updates (module docstring (a)).

    Args:
        base_layer: the wrapped linear layer (its weights are never changed here).
        rank: r of every component; scale: ``s = alpha / r``.

    Shapes:
        ``forward(x)``: ``(..., in)`` -> ``(..., out)``; with no active task it returns
        ``base_layer(x)`` exactly.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base_layer = base_layer
        self.rank, self.scale = rank, scale
        self.lora_adapters = nn.ModuleDict()
        self.active: str | None = None

    @property
    def keys(self) -> list[str]:
        return list(self.lora_adapters.keys())

    def add(self, key: str, coef_init: float = 0.0, orthogonal_init: bool = True) -> None:
        """Add the component of a new task (after the existing ones, in stream order)."""
        if key in self.lora_adapters:
            return
        w = self.base_layer.weight
        comp = _Component(w.shape[1], w.shape[0], self.rank, len(self.lora_adapters), coef_init)
        comp.to(device=w.device, dtype=w.dtype)
        if orthogonal_init and len(self.lora_adapters):
            prev = torch.cat([c.A.detach() for c in self.lora_adapters.values()])  # (R, in)
            if prev.shape[0] + self.rank <= prev.shape[1]:
                q, _ = torch.linalg.qr(prev.T)  # (in, R): basis of the old rows
                with torch.no_grad():
                    comp.A -= (comp.A @ q) @ q.T
        self.lora_adapters[key] = comp

    def factors(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A (R, in), B' (out, R))`` with ``ΔW_key = B' A``, ``R = r * (k + 1)``: the rows of
        ``A`` and columns of ``B'`` are task 0..k's, each ``B_i`` multiplied by ``c_{k,i}``
        (1 for i = k)."""
        keys = self.keys
        k = keys.index(key)
        comps = [self.lora_adapters[n] for n in keys[:k + 1]]
        own = comps[-1]
        weights = torch.cat([own.coef, own.coef.new_ones(1)])  # (k + 1,)
        a = torch.cat([c.A for c in comps])
        b = torch.cat([c.B for c in comps], dim=1) * weights.repeat_interleave(self.rank)
        return a, b

    def delta_weight(self, key: str) -> torch.Tensor:
        """The composed update ``s * ΔW_key``, ``(out, in)``."""
        a, b = self.factors(key)
        return self.scale * (b @ a)

    def update_sq_norm(self, key: str) -> torch.Tensor:
        """``||s * ΔW_key||_F²`` from the factors (no ``out x in`` matrix)."""
        a, b = self.factors(key)
        return self.scale ** 2 * ((b.T @ b) * (a @ a.T)).sum()

    def orthogonality(self, key: str) -> torch.Tensor:
        """``sum_{i<k} sum |A_i A_kᵀ|`` (entry-wise L1, as O-LoRA); 0 for the first task."""
        keys = self.keys
        k = keys.index(key)
        a_k = self.lora_adapters[key].A
        if k == 0:
            return a_k.new_zeros(())
        return orthogonality_penalty(torch.cat([self.lora_adapters[n].A for n in keys[:k]]), a_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.active is None:
            return y
        a, b = self.factors(self.active)
        return y + self.scale * F.linear(F.linear(x.to(a.dtype), a), b).to(y.dtype)
