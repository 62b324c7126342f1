"""RegLoRA (SEFE, arXiv 2505.02486): masks, regulariser, merging, resume, digits runs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

import cl_bench.config  # noqa: F401  (registers the schema)
from cl_bench.config import build
from cl_bench.data.base import ArrayDataset
from cl_bench.errors import ConfigError
from cl_bench.evaluation import evaluate_task
from cl_bench.runner import run
from cl_bench.strategies.reglora import RegLoRA, top_fraction_mask

CONF = str(Path(__file__).resolve().parents[2] / "conf")
#: 1 thread: on a shared 2-core machine 2 threads oversubscribe and run ~100x slower
DIGITS = ["tasks=digits", "strategy=reglora", "train.max_steps=100", "train.batch_size=32",
          "train.progress_bar=false", "logger=none", "hardware.num_threads=1",
          # the paper's targets, every Linear layer (an override: the default is the backbone's
          # own lora_targets, the attention projections)
          "strategy.target_modules=[qkv,out_proj,linear1,linear2]"]
NAMES = ["digits_0_1", "digits_2_3", "digits_4_5"]


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


# data transforms for the ASD seam (addressed by dotted path through this module's name)
def first_ten(task, dataset):
    return ArrayDataset(dataset.images[:10], dataset.labels[:10])


CRASH = {"at": None}


def crash_at(task, dataset):
    """Identity, but raises once before the task named in ``CRASH["at"]`` (a killed job)."""
    if task.name == CRASH["at"]:
        CRASH["at"] = None
        raise RuntimeError(f"simulated kill before {task.name}")
    return dataset


@pytest.fixture(scope="module")
def task_il_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reglora_task_il")
    return run(digits_cfg(f"strategy.data_transform={__name__}.crash_at"), run_dir), run_dir


# ------------------------------------------------------------------ pure pieces
@pytest.mark.parametrize("shape, p", [((96, 32), 2.0), ((64, 32), 2.0), ((7, 13), 0.5),
                                      ((50, 2), 1.0), ((10, 10), 100.0), ((3, 30), 33.3)])
def test_mask_holds_exactly_ceil_p_percent_of_the_largest_entries(shape, p):
    delta = torch.randn(shape)
    mask = top_fraction_mask(delta, p)
    k = math.ceil(round(p * shape[0] * shape[1] / 100, 9))
    assert mask.dtype == torch.bool and mask.shape == delta.shape and int(mask.sum()) == k
    if k < delta.numel():
        assert delta.abs()[mask].min() >= delta.abs()[~mask].max()


def test_regularizer_is_zero_iff_the_update_vanishes_on_the_mask():
    model, stream, s = built("tasks.n_tasks=2")
    s.before_task(0, stream[0])
    assert s.regularizer().item() == 0.0 and s.training_loss({}, None, 0) is None  # no mask yet
    layers = s.lora_layers()
    qkv = layers["vit.blocks.0.attn.qkv"]
    name = stream[0].name
    torch.nn.init.normal_(qkv.lora_B[name].weight)
    s.after_task(0, stream[0])
    s.before_task(1, stream[1])
    assert s.regularizer().item() == 0.0  # a fresh LoRA: B = 0, so B A = 0 everywhere

    # hand-made masks: only column 0 of every matrix is protected
    s.masks = {k: torch.zeros_like(m) for k, m in s.masks.items()}
    for m in s.masks.values():
        m[:, 0] = True
    new = stream[1].name
    for layer in layers.values():
        torch.nn.init.normal_(layer.lora_B[new].weight)
        with torch.no_grad():
            layer.lora_A[new].weight[:, 0] = 0.0  # B A = 0 on column 0, non-zero elsewhere
    assert all((layer.lora_B[new].weight @ layer.lora_A[new].weight).abs().sum() > 0
               for layer in layers.values())
    assert s.regularizer().item() == 0.0
    with torch.no_grad():
        qkv.lora_A[new].weight[:, 0] = 1.0  # now one matrix changes a protected position
    delta = qkv.lora_B[new].weight @ qkv.lora_A[new].weight
    expected = delta[:, 0].abs().mean() / len(layers)  # mean over matrices, others are 0
    reg = s.regularizer()
    assert reg.item() > 0 and reg.item() == pytest.approx(expected.item(), rel=1e-5)
    assert s.training_loss({}, None, 1).item() == pytest.approx(2500.0 * reg.item(), rel=1e-5)
    reg.backward()
    assert qkv.lora_A[new].weight.grad is not None


def test_merge_keeps_the_function_and_updates_the_base_weight():
    model, stream, s = built("tasks.n_tasks=2")
    s.before_task(0, stream[0])
    name = stream[0].name
    for layer in s.lora_layers().values():
        torch.nn.init.normal_(layer.lora_B[name].weight, std=0.05)
    x = torch.stack([stream[0].test[i]["image"] for i in range(8)])
    model.eval()
    with torch.no_grad():
        before = model(x, name)
    qkv = s.lora_layers()["vit.blocks.0.attn.qkv"]
    w0 = qkv.get_base_layer().weight.detach().clone()
    ba = (qkv.lora_B[name].weight @ qkv.lora_A[name].weight).detach()
    s.after_task(0, stream[0])
    with torch.no_grad():
        after = model(x, name)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(qkv.get_base_layer().weight, w0 + s.alpha / s.rank * ba)
    assert qkv.lora_B[name].weight.abs().sum() == 0  # merged: the adapter adds nothing now
    n = ba.numel()
    assert s.task_mask_counts[name]["vit.blocks.0.attn.qkv"] == math.ceil(0.02 * n)
    assert torch.equal(s.masks["vit.blocks.0.attn.qkv"], top_fraction_mask(ba, 2.0))
    # the next task: a fresh adapter replaces the merged one, only it and the head train
    s.before_task(1, stream[1])
    assert list(model.backbone.peft_config) == [stream[1].name]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(f".{stream[1].name}." in n or n.startswith(f"heads.{stream[1].name}.")
               for n in trainable)
    assert sum("lora_" in n for n in trainable) == 2 * len(s.lora_layers())


def test_data_transform_hook_applies_to_the_original_training_set_once():
    model, stream, s = built("tasks.n_tasks=2", f"strategy.data_transform={__name__}.first_ten")
    n = len(stream[0].train)
    s.before_task(0, stream[0])
    assert len(stream[0].train) == 10 and n > 10
    s.before_task(0, stream[0])  # a replay (resume) transforms the original, not the result
    assert len(stream[0].train) == 10
    assert torch.equal(stream[0].train[3]["image"], s._untransformed[stream[0].name][3]["image"])


# ------------------------------------------------------------------ end to end on digits
def test_digits_task_il_run_masks_and_results(task_il_run):
    out, run_dir = task_il_run
    R = pd.read_csv(run_dir / "matrix.csv", index_col=0)
    print("reglora digits task_il R:\n", R.to_string())
    assert list(R.columns) == NAMES and R.shape == (4, 3)
    for name in NAMES:
        assert R.loc[f"after_{name}", name] >= 0.75  # 2 classes: chance 0.5
    assert (R.loc["after_digits_4_5"] >= 0.6).all()
    s = out.strategy
    layers = s.lora_layers()
    assert len(s.masks) == len(layers) == 8  # 2 blocks x (qkv, out_proj, linear1, linear2)
    for name in NAMES:  # each task's own mask: exactly ceil(2 % of the matrix)
        for key, count in s.task_mask_counts[name].items():
            assert count == math.ceil(0.02 * layers[key].get_base_layer().weight.numel()), key
    for key, mask in s.masks.items():  # the union over three tasks
        own = [s.task_mask_counts[n][key] for n in NAMES]
        assert max(own) <= int(mask.sum()) <= sum(own)
    print("reglora mask counts (per task / union):",
          {k: (s.task_mask_counts[NAMES[0]][k], int(m.sum())) for k, m in s.masks.items()})
    assert (run_dir / "adapters" / "digits_2_3" / "adapter_model.safetensors").is_file()


def test_regulariser_keeps_later_updates_off_the_protected_positions(task_il_run, tmp_path):
    """The saved (pre-merge) adapter of task 2, on task 1's mask: small with lambda = 2500."""
    out, run_dir = task_il_run
    run(digits_cfg("tasks.n_tasks=2", "strategy.reg_lambda=0.0", "train.max_steps=60"), tmp_path)

    def on_first_mask(d: Path, key: str) -> float:
        first = load_file(d / "adapters" / "digits_0_1" / "adapter_model.safetensors")
        second = load_file(d / "adapters" / "digits_2_3" / "adapter_model.safetensors")
        stem = [k for k in first if k.endswith(f"{key}.lora_A.weight")][0][:-len("lora_A.weight")]
        delta = lambda sd: sd[stem + "lora_B.weight"] @ sd[stem + "lora_A.weight"]  # noqa: E731
        mask = top_fraction_mask(delta(first), 2.0)
        d2 = delta(second).abs()
        return float(d2[mask].mean() / d2.mean())  # > 1: the mask positions move more than avg

    keys = list(out.strategy.masks)
    reg = [on_first_mask(run_dir, k) for k in keys]
    free = [on_first_mask(tmp_path, k) for k in keys]
    print(f"reglora |dW_2| on task 1's mask / mean |dW_2|: lambda=2500 "
          f"{sum(reg) / len(reg):.3f}, lambda=0 {sum(free) / len(free):.3f}")
    assert sum(reg) / len(reg) < 0.25 * sum(free) / len(free)


def test_digits_class_il_runs_without_task_ids(tmp_path):
    out = run(digits_cfg("tasks.scenario=class_il", "tasks.n_tasks=2", "train.max_steps=200"),
              tmp_path)  # a shared 4-way head learns slower than a 2-way one
    R = pd.read_csv(tmp_path / "matrix.csv", index_col=0)
    print("reglora digits class_il R:\n", R.to_string())
    assert R.shape == (3, 2) and R.notna().all().all()
    assert R.loc["after_digits_0_1", "digits_0_1"] >= 0.8
    assert R.loc["after_digits_2_3", "digits_2_3"] >= 0.75  # 4 classes active: chance 0.25
    assert out.metrics["complete"] is True


def test_resume_of_a_finished_run_restores_weights_and_masks(task_il_run):
    out, run_dir = task_il_run
    again = run(digits_cfg(f"strategy.data_transform={__name__}.crash_at"), run_dir)
    a, b = out.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.strategy.masks.keys() == out.strategy.masks.keys()
    assert all(torch.equal(again.strategy.masks[k], out.strategy.masks[k])
               for k in out.strategy.masks)
    R = pd.read_csv(run_dir / "matrix.csv", index_col=0)
    for task in build(digits_cfg().tasks, "tasks"):
        acc = evaluate_task(again.model, again.strategy, task, 64)["accuracy"]
        assert acc == pytest.approx(R.loc["after_digits_4_5", task.name], abs=1e-6)


def test_killed_between_tasks_then_resumed_matches_the_uninterrupted_run(task_il_run, tmp_path):
    out, ref_dir = task_il_run
    cfg = digits_cfg(f"strategy.data_transform={__name__}.crash_at")
    CRASH["at"] = "digits_4_5"
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(cfg, tmp_path)  # dies in before_task of task 3, after task 2's checkpoint
    assert pd.read_csv(tmp_path / "matrix.csv", index_col=0).shape == (3, 3)
    resumed = run(cfg, tmp_path)  # replays before_task(0..1), strict load, trains task 3
    assert (tmp_path / "matrix.csv").read_bytes() == (ref_dir / "matrix.csv").read_bytes()
    a, b = out.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(resumed.strategy.masks[k], out.strategy.masks[k])
               for k in out.strategy.masks)


@pytest.mark.parametrize("override, key", [
    ("strategy.top_p=0.0", "strategy.top_p"), ("strategy.top_p=100.5", "strategy.top_p"),
    ("strategy.rank=0", "strategy.rank"), ("strategy.reg_lambda=-1.0", "strategy.reg_lambda"),
    ("strategy.alpha=0.0", "strategy.alpha"), ("strategy.dropout=-0.1", "strategy.dropout"),
    ("strategy.data_transform=no_such_module.fn", "strategy.data_transform")])
def test_bad_hyper_parameter_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(digits_cfg(override).strategy, "strategy")


def test_unknown_target_module_is_refused_at_setup():
    with pytest.raises(ConfigError, match=r"strategy\.target_modules.*fc9"):
        built("strategy.target_modules=[qkv,fc9]")
    assert isinstance(build(digits_cfg().strategy, "strategy"), RegLoRA)


def test_a_convolution_update_is_masked_as_its_flattened_matrix():
    """peft's conv LoRA (A a 3x3x3 convolution to r channels, B a 1x1x1 one): the unscaled
    update B A is the (C_out, C_in k^3) matrix of the weight's flattening, and its mask holds
    ceil(p %) of those entries (the Swin UNETR decoder's targets)."""
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from cl_bench.strategies.lora import lora_delta

    torch.manual_seed(0)
    net = get_peft_model(nn.Sequential(nn.Conv3d(4, 6, 3, padding=1)),
                         LoraConfig(r=2, lora_alpha=4, target_modules=["0"]))
    layer = net.base_model.model[0]
    nn.init.normal_(layer.lora_B["default"].weight)
    delta = lora_delta(layer, "default")
    assert delta.shape == (6, 4 * 27)
    torch.testing.assert_close(2 * delta, layer.get_delta_weight("default").flatten(1))  # s = 2
    assert int(top_fraction_mask(delta, 2.0).sum()) == math.ceil(0.02 * 6 * 4 * 27)
