"""InfLoRA (arXiv 2404.00228) and the shared subspace helpers (GPM energy rule, arXiv 2103.09762).

* helpers: GPM/DualGPM basis update on matrices with known spectra (table-driven), InfLoRA's
  design of A_t outside a subspace, the overlap measure, hook-based input statistics;
* method: A_t M_{<t} = 0, q rows of every branch exactly 0, old branches and A's never change,
  summed branches merge exactly, only the current task's B trains (exact names: "t1" vs "t10");
  class-IL: only the current task's classifier rows train, on its own classes' cross-entropy;
* runs: digits end to end (task-IL and class-IL), resume of a finished run, config errors.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from cl_bench.config import build
from cl_bench.data.base import ArrayDataset, Task
from cl_bench.errors import ConfigError
from cl_bench.models.continual import make_model
from cl_bench.runner import run
from cl_bench.strategies.inflora import InfLoRA
from cl_bench.strategies.subspace import (collect_layer_inputs, energy_basis, gpm_update,
                                          principal_directions, relative_overlap)

CONF = str(Path(__file__).resolve().parents[2] / "conf")
# num_threads=1: on a shared 2-core machine two intra-op threads are far slower for tiny ops
DIGITS = ["tasks=digits", "strategy=inflora", "train.max_steps=40", "train.batch_size=32",
          "train.progress_bar=false", "logger=none", "hardware.num_threads=1"]
#: the paper's 5e-4 is tuned for a pretrained ViT-B over many epochs; 40 steps need more
FAST = "strategy.lr=3e-3"


def compose_digits(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=DIGITS + list(overrides))


def _with_spectrum(s: list[float], dim: int = 6, n: int = 9, seed: int = 0):
    """R = U diag(s) Vᵀ with random orthonormal U (dim x len(s)) and V; returns (R, U)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T, u


def _same_span(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a @ a.T, b @ b.T, atol=1e-9)


# ----------------------------------------------------------------------- subspace helpers
# energy shares of s = [3, 2, 1, 0.5]: 9, 4, 1, 0.25 over 14.25 -> cumulative .632 .912 .982 1
@pytest.mark.parametrize("threshold, k", [(0.5, 1), (0.63, 1), (0.64, 2), (0.9, 2),
                                          (0.95, 3), (0.99, 4), (1.0, 4)])
def test_energy_rule_takes_the_fewest_directions_reaching_the_threshold(threshold, k):
    rep, u = _with_spectrum([3.0, 2.0, 1.0, 0.5])
    basis = gpm_update(rep, None, threshold)
    assert basis.shape == (6, k)
    assert _same_span(basis, u[:, :k])
    assert torch.allclose(basis.T @ basis, torch.eye(k, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("threshold, added", [(0.5, 0), (0.8, 1), (0.95, 2), (1.0, 3)])
def test_gpm_update_counts_the_old_basis_energy_and_appends(threshold, added):
    # R's energy: 4 along e0 (already in M), then 3, 2, 1 along directions outside M -> shares
    # explained by M alone: 16/30 = .53; + 9/30 = .83; + 4/30 = .97; + 1/30 = 1
    e = torch.eye(6, dtype=torch.float64)
    rep = torch.stack([4 * e[0], 3 * e[1], 2 * e[2], 1 * e[3]], dim=1)
    old = e[:, :1]
    basis = gpm_update(rep, old, threshold)
    assert basis.shape == (6, 1 + added)
    assert torch.equal(basis[:, :1], old)  # old columns untouched
    assert torch.allclose(basis.T @ basis, torch.eye(1 + added, dtype=torch.float64), atol=1e-12)
    assert _same_span(basis, e[:, :1 + added])


def test_gpm_update_never_adds_numerically_null_directions():
    rep, u = _with_spectrum([1.0, 1e-14])  # rank 1 in practice
    assert gpm_update(rep, None, 1.0).shape == (6, 1)
    assert gpm_update(torch.zeros(6, 4), None, 0.9).shape == (6, 0)
    with pytest.raises(ValueError, match="threshold"):
        gpm_update(rep, None, 1.5)


def test_principal_directions_lie_outside_the_old_subspace():
    rep, _ = _with_spectrum([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], n=6, seed=1)
    cov = rep @ rep.T
    old = energy_basis(rep, 0.6)  # 2 directions
    a = principal_directions(cov, old, 3)
    assert torch.allclose(a.T @ a, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert relative_overlap(a.T, old) < 1e-12
    # the same as the top left singular vectors of (I - M Mᵀ) C when that is well conditioned
    u, _, _ = torch.linalg.svd(cov - old @ old.T @ cov)
    assert _same_span(a, u[:, :3])
    # complement of dimension 1 < rank 3: one direction, the rest zero, none inside M
    big = energy_basis(rep, 0.9999999)[:, :5]
    a = principal_directions(cov, big, 3)
    assert torch.count_nonzero(a.norm(dim=0) > 0.5) == 1 and relative_overlap(a.T, big) < 1e-12


def test_relative_overlap_extremes():
    e = torch.eye(4, dtype=torch.float64)
    assert relative_overlap(e[:2], e[:, :2]) == pytest.approx(1.0)
    assert relative_overlap(e[:2], e[:, 2:]) == 0.0
    assert relative_overlap(e[:2], None) == 0.0
    assert relative_overlap(torch.zeros(2, 4), e[:, :1]) == 0.0


def test_collect_layer_inputs_covariance_mean_tokens_and_call_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.second = nn.Linear(3, 2)  # registered first, called second
            self.first = nn.Linear(3, 3)

        def forward(self, x):
            return self.second(self.first(x))

    torch.manual_seed(0)
    net = Net()
    batches = [torch.randn(4, 5, 3), torch.randn(2, 5, 3)]
    cov = collect_layer_inputs(net, {"second": net.second, "first": net.first}, batches)
    assert list(cov) == ["first", "second"]
    tokens = torch.cat(batches).reshape(-1, 3).double()
    assert torch.allclose(cov["first"], tokens.T @ tokens / len(tokens))
    means = collect_layer_inputs(net, {"first": net.first}, batches, reduce="mean_token")
    assert torch.allclose(means["first"], torch.cat(batches).mean(1).T.double())
    assert not net.first._forward_pre_hooks  # hooks removed


# ------------------------------------------------------------------------------ method
def _tiny_stream(names: list[str], scenario: str = "task_il") -> list[Task]:
    g = torch.Generator().manual_seed(0)
    tasks = []
    for k, name in enumerate(names):
        x = torch.randn(24, 1, 8, 8, generator=g).numpy() + k
        y = np.arange(24) % 2 + (2 * k if scenario == "class_il" else 0)
        tasks.append(Task(name, "classification", ArrayDataset(x, y), ArrayDataset(x[:4], y[:4]),
                          num_classes=2 if scenario == "task_il" else 2 * len(names),
                          classes=[2 * k, 2 * k + 1], scenario=scenario))
    return tasks


def test_only_the_current_branch_trains_even_when_names_share_a_prefix():
    stream = _tiny_stream(["t10", "t1"])  # "lora_B.t1" is a substring of "lora_B.t10"
    model = make_model(1, 8, 2, 32, 64, 2, 4, spatial_dims=2)
    model.add_heads(stream)
    strategy = InfLoRA(rank=4)
    strategy.setup(model, stream)
    strategy.before_task(0, stream[0])
    strategy.after_task(0, stream[0])
    strategy.before_task(1, stream[1])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {f"heads.t1.{n}" for n, _ in model.heads["t1"].named_parameters()}
    expected = {f"backbone.base_model.model.vit.blocks.{i}.attn.qkv.lora_B.t1.weight"
                for i in range(2)} | head
    assert trainable == expected
    # A_1 is orthogonal to the basis of task 0's inputs, scaled 1/sqrt(3) as in the code
    assert strategy.orthogonality_residual(1) < 1e-6
    a = strategy.qkv_layers()["blocks.0"].lora_A["t1"].weight
    assert torch.allclose(a @ a.T, torch.eye(4) / 3, atol=1e-5)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("inflora_digits")
    return run(compose_digits(FAST), run_dir)


def test_digits_end_to_end(digits_run):
    out = digits_run
    R = pd.read_csv(out.run_dir / "matrix.csv", index_col=0)
    assert R.shape == (4, 3) and np.isfinite(R.to_numpy()).all()
    assert all(R.iloc[t + 1, t] > 0.7 for t in range(3)), R  # each task is learned
    strategy = out.strategy
    assert len(strategy.adapters) == 3
    for t in range(3):
        assert strategy.orthogonality_residual(t) < 1e-6
    eps = [strategy._threshold(t) for t in range(3)]
    assert eps == pytest.approx([0.95, 0.95 + 0.05 / 3, 0.95 + 0.1 / 3])
    for name, layer in strategy.qkv_layers().items():
        dim = layer.in_features  # q rows: the first in_features of the fused qkv's 3x
        for task in strategy.adapters:
            b = layer.lora_B[task].weight
            assert torch.count_nonzero(b[:dim]) == 0  # the q rows never move
            assert torch.count_nonzero(b[dim:]) > 0  # k and v did
    # old branches (A and B) never change: compare with what was saved right after task 0
    saved = load_file(str(out.run_dir / "adapters" / "digits_0_1" / "adapter_model.safetensors"))
    assert saved
    for key, value in saved.items():
        block = key.split("blocks.")[1].split(".")[0]
        layer = strategy.qkv_layers()[f"blocks.{block}"]
        part = layer.lora_A if ".lora_A." in key else layer.lora_B
        assert torch.equal(part["digits_0_1"].weight.detach(), value)


def test_summed_branches_merge_exactly(digits_run):
    backbone = digits_run.model.backbone
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        tokens, _ = backbone(x)
        merged = copy.deepcopy(backbone).merge_and_unload()
        merged_tokens, _ = merged(x)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(tokens, merged_tokens, atol=1e-5)


def test_resume_of_a_finished_run(digits_run):
    before = (digits_run.run_dir / "matrix.csv").read_bytes()
    out = run(compose_digits(FAST), digits_run.run_dir)  # before_task x3 + strict load_state_dict
    assert (digits_run.run_dir / "matrix.csv").read_bytes() == before
    assert out.strategy.adapters == digits_run.strategy.adapters
    assert all(out.strategy.orthogonality_residual(t) < 1e-6 for t in range(3))


def test_class_incremental_head_trains_only_the_current_tasks_classes():
    stream = _tiny_stream(["a", "b"], scenario="class_il")
    model = make_model(1, 8, 2, 32, 64, 2, 4, spatial_dims=2)
    model.add_heads(stream)
    strategy = InfLoRA(rank=4)
    strategy.setup(model, stream)  # no task id needed: accepted on a class-IL stream
    strategy.before_task(0, stream[0])
    strategy.after_task(0, stream[0])
    model.begin_task(stream[1])
    strategy.before_task(1, stream[1])
    batch = {"image": stream[1].train.images[:8], "label": stream[1].train.labels[:8]}
    out = model(batch["image"], "b")
    assert out.shape == (8, 4) and bool((batch["label"] >= 2).all())
    loss = F.cross_entropy(out, batch["label"]) + strategy.training_loss(batch, out, 1)
    # the code's loss: cross-entropy over the current task's own classes only
    assert loss.item() == pytest.approx(F.cross_entropy(out[:, 2:], batch["label"] - 2).item(),
                                        abs=1e-5)
    loss.backward()
    strategy.after_backward(loss, 1)  # as the training step does (zeroes the frozen rows)
    shared = model.heads["b"].shared
    assert torch.count_nonzero(shared.fc.weight.grad[:2]) == 0  # task a's classifier is frozen
    assert torch.count_nonzero(shared.fc.weight.grad[2:]) > 0
    assert torch.count_nonzero(shared.fc.bias.grad[:2]) == 0
    assert not shared.norm.weight.requires_grad  # trained on the first task only


def test_class_incremental_stream_runs(tmp_path):
    out = run(compose_digits(FAST, "tasks.scenario=class_il", "tasks.n_tasks=2"), tmp_path)
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert R.shape == (3, 2) and np.isfinite(R.to_numpy()).all() and R.iloc[1, 0] > 0.8
    assert out.strategy.orthogonality_residual(1) < 1e-6


@pytest.mark.parametrize("override, key", [("strategy.rank=-1", "strategy.rank"),
                                           ("strategy.eps_start=1.5", "strategy.eps_start"),
                                           ("strategy.eps_end=0", "strategy.eps_end"),
                                           ("strategy.stat_max_samples=0",
                                            "strategy.stat_max_samples")])
def test_bad_hyper_parameters_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(compose_digits(override).strategy, "strategy")


def test_default_config_matches_the_paper():
    s = build(compose_digits().strategy, "strategy")
    assert (s.rank, s.eps_start, s.eps_end, s.lr) == (10, 0.95, 1.0, 5e-4)
    assert not s.needs_task_id and not s.task_agnostic
