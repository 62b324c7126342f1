"""DualLoRA (arXiv 2411.00623): orthogonal + residual adapters and the dynamic memory.

* layer: AdamW steps on the orthogonal adapter leave the layer's output on old inputs' span
  unchanged (ΔW M = 0), the residual branch only reads U_tᵀ x, memory weights are energy shares;
* runs: digits with a per-task domain shift end to end: task retrieval from the memory is
  accurate (task_agnostic/retrieval.csv), ΔW_orth^(t) P_prev ≈ 0, old residuals and heads never
  change, the frozen Linear weights never change; resume of a finished run; the ``dynamic``
  weighting runs; class-IL and bad settings are refused naming the key.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from torch import nn

from cl_bench.config import build
from cl_bench.errors import ConfigError
from cl_bench.runner import run
from cl_bench.strategies.duallora import DualLoRALinear, memory_weights

CONF = str(Path(__file__).resolve().parents[2] / "conf")
# num_threads=1: on a shared 2-core machine two intra-op threads are far slower for tiny ops
DIGITS = ["tasks=digits", "strategy=duallora", "train.max_steps=40", "train.batch_size=32",
          "train.progress_bar=false", "logger=none", "hardware.num_threads=1",
          "tasks.task_shift=3", "strategy.lr=3e-3"]


def compose_digits(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=DIGITS + list(overrides))


# ------------------------------------------------------------------------------- layer
def test_orthogonal_adapter_does_not_move_old_inputs_under_adamw():
    torch.manual_seed(0)
    layer = DualLoRALinear(nn.Linear(12, 7), rank=4, alpha=4.0, residual_rank=3)
    layer.base_layer.requires_grad_(False)
    old, _ = torch.linalg.qr(torch.randn(12, 5))  # basis M of "earlier tasks" inputs
    layer.proj_perp = torch.eye(12) - old @ old.T
    with torch.no_grad():
        layer.lora_orth_A_base.normal_()  # what earlier tasks folded in
    x_old = torch.randn(9, 6, 5) @ old.T  # tokens inside span(M)
    x_new = torch.randn(9, 6, 12)
    before_old, before_new = layer(x_old).detach(), layer(x_new).detach()
    opt = torch.optim.AdamW([layer.lora_orth_A], lr=0.05, weight_decay=0.01)
    for _ in range(20):
        opt.zero_grad()
        ((layer(x_new) - 1.0) ** 2).mean().backward()
        opt.step()
    assert torch.allclose(layer(x_old), before_old, atol=1e-5)
    assert not torch.allclose(layer(x_new), before_new, atol=1e-2)  # it did learn
    delta = layer.task_delta().detach()
    assert (delta @ old).norm() / delta.norm() < 1e-5


def test_residual_branch_sees_only_its_basis_and_memory_weights_are_energy_shares():
    torch.manual_seed(0)
    layer = DualLoRALinear(nn.Linear(6, 4), rank=2, alpha=2.0, residual_rank=3)
    e = torch.eye(6)
    layer.add_residual("a", e[:, :2])  # 2 of 3 columns used, the third zero
    assert torch.equal(layer.lora_res["a"].U[:, 2], torch.zeros(6))
    with torch.no_grad():
        layer.lora_res["a"].B.normal_()
    layer.active = "a"
    x_out = torch.randn(3, 5, 6) * torch.tensor([0, 0, 1, 1, 1, 1.0])  # outside span(U_a)
    assert torch.allclose(layer(x_out), layer.base_layer(x_out), atol=1e-6)
    x = torch.tensor([[3.0, 0, 4, 0, 0, 0], [0, 1, 0, 0, 0, 0]])
    w = memory_weights(x, [e[:, :2], e[:, 2:3], e[:, 3:]])
    assert torch.allclose(w, torch.tensor([[9 / 25, 16 / 25, 0], [1.0, 0, 0]]))


# ------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("duallora_digits")
    return run(compose_digits(), run_dir)


def test_digits_end_to_end_retrieves_the_task(digits_run):
    out = digits_run
    R = pd.read_csv(out.run_dir / "matrix.csv", index_col=0)
    assert R.shape == (4, 3) and np.isfinite(R.to_numpy()).all()
    assert R.iloc[1, 0] > 0.8  # the first task is learned
    # oracle ids: residual j + head j; only the orthogonal adapter moves, outside old bases
    assert abs(R.iloc[3, 0] - R.iloc[1, 0]) <= 0.05
    retrieval = pd.read_csv(out.run_dir / "task_agnostic" / "retrieval.csv", index_col=0)
    assert (retrieval.iloc[-1] >= 0.9).all(), retrieval  # shifted tasks: memory finds the task
    assert list(retrieval.columns) == list(R.columns)
    assert (out.run_dir / "task_agnostic" / "matrix_predicted.csv").is_file()
    strategy = out.strategy
    assert strategy.orthogonality_residual(0) == 0.0
    for t in (1, 2):
        assert strategy.orthogonality_residual(t) < 1e-5
    assert strategy.retrieval_layer == "vit.blocks.0.attn.qkv"  # first in forward order


def test_old_residuals_and_frozen_weights_never_change(digits_run):
    out = digits_run
    saved = load_file(str(out.run_dir / "adapters" / "digits_0_1" / "duallora.safetensors"))
    for name, layer in out.strategy.layers.items():
        assert torch.equal(layer.lora_res["digits_0_1"].B.detach(), saved[f"{name}.residual.B"])
        assert torch.equal(layer.lora_res["digits_0_1"].U, saved[f"{name}.residual.U"])
        assert torch.count_nonzero(saved[f"{name}.residual.B"]) > 0
    # the wrapped Linear weights are the backbone's initial ones
    cfg = compose_digits()
    L.seed_everything(cfg.seed, verbose=False)
    fresh = build(cfg.backbone, "backbone")
    fresh_state = fresh.encoder.state_dict()
    for name, layer in out.strategy.layers.items():
        assert torch.equal(layer.base_layer.weight.detach(), fresh_state[f"{name}.weight"])


def test_resume_of_a_finished_run(digits_run):
    before = (digits_run.run_dir / "matrix.csv").read_bytes()
    out = run(compose_digits(), digits_run.run_dir)  # before_task x3 + strict load_state_dict
    assert (digits_run.run_dir / "matrix.csv").read_bytes() == before
    assert out.strategy.tasks == digits_run.strategy.tasks
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(out.strategy.predict_task_id(x), digits_run.strategy.predict_task_id(x))


def test_dynamic_weighting_runs(tmp_path):
    out = run(compose_digits("strategy.residual_weights=dynamic", "tasks.n_tasks=2",
                             "train.max_steps=20"), tmp_path)
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    assert R.shape == (3, 2) and R.iloc[1, 0] > 0.6
    assert all(layer.dynamic for layer in out.strategy.layers.values())
    assert out.strategy.orthogonality_residual(1) < 1e-5


@pytest.mark.parametrize("override, key", [
    ("strategy.threshold=1.5", "strategy.threshold"),
    ("strategy.rank=0", "strategy.rank"),
    ("strategy.residual_weights=soft", "strategy.residual_weights"),
    ("strategy.target_modules=[nope]", "strategy.target_modules"),
    ("strategy.rank=40", "strategy.rank"),  # wider than out_proj (32)
    ("tasks.scenario=class_il", "tasks.scenario=task_il"),
])
def test_bad_settings_are_refused_naming_the_key(override, key, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        run(compose_digits(override, "train.max_steps=1"), tmp_path)
