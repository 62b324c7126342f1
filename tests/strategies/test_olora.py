"""O-LoRA (arXiv 2310.14152): the orthogonality penalty, summed frozen adapters, digits runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

import cl_bench.config  # noqa: F401  (registers the schema)
from cl_bench.config import build
from cl_bench.errors import ConfigError
from cl_bench.evaluation import evaluate_task
from cl_bench.runner import run
from cl_bench.strategies.olora import OLoRA, lora_layers, orthogonality_loss

CONF = str(Path(__file__).resolve().parents[2] / "conf")
#: 1 thread: on a shared 2-core machine 2 threads oversubscribe and run ~100x slower
DIGITS = ["tasks=digits", "strategy=olora", "train.max_steps=100", "train.batch_size=32",
          "train.progress_bar=false", "logger=none", "hardware.num_threads=1"]


def digits_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=DIGITS + list(overrides))


def built(*overrides: str):
    """(model, stream, strategy) as the runner builds them, without training."""
    cfg = digits_cfg(*overrides)
    torch.manual_seed(0)
    model, stream = build(cfg.backbone, "backbone"), build(cfg.tasks, "tasks")
    model.add_heads(stream)
    strategy = build(cfg.strategy, "strategy")
    strategy.setup(model, stream)
    return model, stream, strategy


@pytest.fixture(scope="module")
def task_il_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("olora_task_il")
    out = run(digits_cfg(), run_dir)
    return out, run_dir


# ------------------------------------------------------------------ the penalty itself
def test_orthogonality_loss_is_the_l1_norm_of_old_times_new_transposed():
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    rows = q.T  # 16 orthonormal rows
    old = [rows[0:4], rows[4:6]]
    assert orthogonality_loss(old, rows[8:12]).item() == pytest.approx(0.0, abs=1e-12)
    # a new row inside the old span: |<r0, r0>| + |<r4, r0>| ... = 1 for each overlap
    assert orthogonality_loss(old, rows[[0, 5, 9]]).item() == pytest.approx(2.0, abs=1e-12)
    old_a, new_a = torch.randn(6, 10), torch.randn(3, 10)
    expected = sum(abs(float(old_a[i] @ new_a[j])) for i in range(6) for j in range(3))
    loss = orthogonality_loss([old_a[:2], old_a[2:]], new_a)
    assert loss.item() == pytest.approx(expected, rel=1e-5) and loss.item() > 0
    new_a.requires_grad_(True)
    empty = orthogonality_loss([], new_a)
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="width"):
        orthogonality_loss([torch.randn(2, 9)], torch.randn(2, 10))


# ------------------------------------------------------------------ adapters: summed, frozen
def test_all_adapters_are_summed_and_only_the_new_one_trains():
    model, stream, s = built("tasks.n_tasks=2")
    s.before_task(0, stream[0])
    for layer in lora_layers(model.encoder).values():  # a non-zero first update
        torch.nn.init.normal_(layer.lora_B[stream[0].name].weight, std=0.1)
    s.after_task(0, stream[0])
    s.before_task(1, stream[1])
    s.activate(stream[1])  # what LitTask does at train start: set_adapter must not unfreeze
    t0, t1 = stream[0].name, stream[1].name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(f".{t1}." in n for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert sum("lora_" in n for n in trainable) == 2 * len(lora_layers(model.encoder))
    assert all(n.startswith(f"heads.{t1}.") for n in trainable if "lora_" not in n)

    layer = model.encoder.vit.blocks[0].attn.qkv
    assert sorted(layer.active_adapters) == sorted([t0, t1])
    torch.nn.init.normal_(layer.lora_B[t1].weight, std=0.1)
    x = torch.randn(5, layer.in_features)
    s_ = s.alpha / s.rank
    manual = layer.get_base_layer()(x) + sum(
        s_ * x @ layer.lora_A[a].weight.T @ layer.lora_B[a].weight.T for a in (t0, t1))
    torch.testing.assert_close(layer(x), manual)
    # an unseen task before any adapter: the plain backbone
    fresh_model, fresh_stream, fresh = built("tasks.n_tasks=2")
    fresh.activate(fresh_stream[0])
    assert not hasattr(fresh_model.backbone, "peft_config")


def test_training_loss_is_lambda1_times_orthogonality_plus_lambda2_times_norms():
    model, stream, s = built("tasks.n_tasks=2", "strategy.lambda2=0.1")
    s.before_task(0, stream[0])
    assert s.training_loss({}, None, 0).item() == pytest.approx(
        0.1 * s.new_adapter_norm().item())  # no old adapter: no orthogonality term
    s.after_task(0, stream[0])
    s.before_task(1, stream[1])
    ortho, norms = s.orthogonality(), s.new_adapter_norm()
    manual = sum(orthogonality_loss([layer.lora_A[stream[0].name].weight],
                                    layer.lora_A[stream[1].name].weight)
                 for layer in lora_layers(model.encoder).values())
    assert ortho.item() == pytest.approx(manual.item(), rel=1e-5) and ortho.item() > 0
    manual_norm = sum(torch.linalg.norm(f[stream[1].name].weight)
                      for layer in lora_layers(model.encoder).values()
                      for f in (layer.lora_A, layer.lora_B))
    assert norms.item() == pytest.approx(manual_norm.item(), rel=1e-5)
    loss = s.training_loss({}, None, 1)
    assert loss.item() == pytest.approx(0.5 * ortho.item() + 0.1 * norms.item(), rel=1e-5)
    loss.backward()  # gradients reach the new A only (old adapters frozen)
    layer = model.encoder.vit.blocks[0].attn.qkv
    assert layer.lora_A[stream[1].name].weight.grad is not None
    assert layer.lora_A[stream[0].name].weight.grad is None


# ------------------------------------------------------------------ end to end on digits
def test_digits_task_il_run(task_il_run):
    out, run_dir = task_il_run
    R = pd.read_csv(run_dir / "matrix.csv", index_col=0)
    print("olora digits task_il R:\n", R.to_string())
    names = ["digits_0_1", "digits_2_3", "digits_4_5"]
    assert list(R.columns) == names and R.shape == (4, 3)
    for j, name in enumerate(names):  # every task is learned (2 classes: chance 0.5)
        assert R.loc[f"after_{name}", name] >= 0.75
    assert (R.loc["after_digits_4_5"] >= 0.6).all()
    # frozen old adapters: adapter 0 as saved right after task 0 == adapter 0 at the end
    saved = load_file(run_dir / "adapters" / "digits_0_1" / "adapter_model.safetensors")
    final = {n: p for n, p in out.model.backbone.named_parameters() if ".digits_0_1." in n}
    assert len(saved) == len(final) > 0
    for key, value in saved.items():
        name = key.replace(".weight", ".digits_0_1.weight")
        match = [p for n, p in final.items() if n.endswith(name)]
        assert len(match) == 1 and torch.equal(match[0].detach(), value), key
    assert out.strategy.adapters == names
    assert sorted(out.model.encoder.vit.blocks[0].attn.qkv.active_adapters) == sorted(names)


def test_orthogonality_penalty_makes_the_new_subspace_orthogonal(task_il_run, tmp_path):
    out, _ = task_il_run
    free = run(digits_cfg("strategy.lambda1=0.0"), tmp_path)
    # the last adapter's A against the two older ones, summed over layers
    ortho_on, ortho_off = (float(o.strategy.orthogonality("digits_4_5")) for o in (out, free))
    print(f"olora sum|A_old A_new^T| of the last task: lambda1=0.5 {ortho_on:.4f}, "
          f"lambda1=0 {ortho_off:.4f}")
    assert ortho_on < 0.3 * ortho_off


def test_digits_class_il_runs_without_task_ids(tmp_path):
    out = run(digits_cfg("tasks.scenario=class_il", "tasks.n_tasks=2", "train.max_steps=200"),
              tmp_path)  # a shared 4-way head learns slower than a 2-way one
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    print("olora digits class_il R:\n", R.to_string())
    assert R.shape == (3, 2) and R.notna().all().all()
    # the task just learned is well above chance (4 classes active: 0.25 at random)
    assert R.loc["after_digits_0_1", "digits_0_1"] >= 0.8
    assert R.loc["after_digits_2_3", "digits_2_3"] >= 0.75  # 4 classes active: chance 0.25
    assert out.metrics["complete"] is True
    assert out.model.heads["digits_0_1"].shared is out.model.heads["digits_2_3"].shared


def test_resume_of_a_finished_run_restores_every_adapter(task_il_run):
    out, run_dir = task_il_run
    again = run(digits_cfg(), run_dir)  # replays before_task, strict load_state_dict
    assert again.model is not out.model
    a = {k: v for k, v in out.model.state_dict().items()}
    b = again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.strategy.adapters == out.strategy.adapters
    R = pd.read_csv(run_dir / "matrix.csv", index_col=0)
    for task in build(digits_cfg().tasks, "tasks"):
        acc = evaluate_task(again.model, again.strategy, task, 64)["accuracy"]
        assert acc == pytest.approx(R.loc["after_digits_4_5", task.name], abs=1e-6)


@pytest.mark.parametrize("override, key", [
    ("strategy.rank=0", "strategy.rank"), ("strategy.alpha=-1.0", "strategy.alpha"),
    ("strategy.lambda1=-0.5", "strategy.lambda1"), ("strategy.lambda2=-1.0", "strategy.lambda2"),
    ("strategy.dropout=1.0", "strategy.dropout")])
def test_bad_hyper_parameter_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(digits_cfg(override).strategy, "strategy")


def test_unknown_target_module_is_refused_at_setup():
    with pytest.raises(ConfigError, match=r"strategy\.target_modules.*q_proj"):
        built("strategy.target_modules=[qkv,q_proj]")
    assert isinstance(build(digits_cfg().strategy, "strategy"), OLoRA)


def test_orthogonality_of_convolution_adapters_uses_their_flattened_filters():
    """A conv LoRA's A, (r, C_in, k, k, k), is compared as the matrix (r, C_in k^3): its rows
    are filters over input patches (the Swin UNETR decoder's adapters)."""
    old = torch.zeros(2, 3, 3, 3, 3)
    old[0, 0, 1, 1, 1], old[1, 1, 0, 0, 0] = 1.0, 1.0
    new = torch.zeros(2, 3, 3, 3, 3)
    new[0, 2, 1, 1, 1], new[1, 0, 0, 0, 0] = 1.0, 2.0  # other positions: orthogonal
    assert orthogonality_loss([old], new).item() == 0.0
    new[1, 0, 1, 1, 1] = 0.5  # shares one weight with old filter 0
    assert orthogonality_loss([old], new).item() == 0.5
