"""seq_ft, lwf and joint on a tiny class-incremental segmentation stream: the background shift,
sigmoid distillation and the fully labelled union of joint training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cl_bench.errors import ConfigError
from cl_bench.evaluation import evaluate_task
from cl_bench.report.load import load_runs
from cl_bench.runner import run
from cl_bench.strategies.lwf import distillation

from tests.strategies.test_star import CONF


def tiny_cfg(strategy: str, *extra: str):
    overrides = ["tasks=seg_mnist_6-4", f"strategy={strategy}", "tasks.n_train=120",
                 "tasks.n_test=40", "tasks.size=32", "tasks.scale_min=10", "tasks.scale_max=16",
                 "train.max_steps=10", "train.batch_size=8", "train.progress_bar=false",
                 "train.checkpoint_every_n_epochs=0", "logger=none", "hardware.num_threads=1",
                 *extra]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture(scope="module", params=["seq_ft", "lwf", "joint"])
def finished(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(request.param)
    return request.param, run_dir, run(tiny_cfg(request.param), run_dir)


def test_runs_write_steps_and_base_new_all(finished):
    name, run_dir, out = finished
    R = pd.read_csv(run_dir / "matrix.csv", index_col=0)
    assert list(R.columns) == ["seg_mnist_6-4_s0", "seg_mnist_6-4_s1"]
    assert ((R >= 0) & (R <= 1)).all().all()
    ciss = pd.read_csv(run_dir / "ciss.csv", index_col=0)
    assert list(ciss.columns) == ["miou_base", "miou_new", "miou_all"]
    assert 0 <= ciss.iloc[-1]["miou_new"] <= 1 and 0 <= ciss.iloc[-1]["miou_all"] <= 1
    head = out.model.heads["seg_mnist_6-4_s1"].shared
    assert head.active_classes(0) == list(range(1, 11))
    runs, _ = load_runs([run_dir])  # clbench-report's table carries base / new / all
    assert runs.loc[0, "miou_new (last step)"] == pytest.approx(ciss.iloc[-1]["miou_new"], abs=1e-6)


@pytest.mark.parametrize("finished", ["seq_ft"], indirect=True)
def test_steps_of_one_row_share_one_test_pass_with_the_same_scores(finished):
    _, _, out = finished
    model, strategy = out.model, out.strategy
    stream = strategy.stream
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    plain = [evaluate_task(model, strategy, t, 16, stream=stream) for t in stream]
    n_plain, calls[:] = len(calls), []
    cache: dict = {}
    cached = [evaluate_task(model, strategy, t, 16, stream=stream, cache=cache) for t in stream]
    hook.remove()
    np.testing.assert_equal(cached, plain)  # every step's miou, base/new/all and iou_<c>
    assert n_plain == 2 * 3 and len(calls) == 3  # 40 test canvases in batches of 16, once
    assert plain[0]["miou"] != plain[1]["miou"]  # the steps still differ in their own classes


@pytest.mark.parametrize("finished", ["joint"], indirect=True)
def test_joint_trains_on_the_union_labelled_for_every_seen_class(finished):
    _, _, out = finished
    joint, stream = out.strategy, out.strategy.stream
    union = joint.union  # built for the last step: every image of both steps
    expected = np.unique(np.concatenate([s.train.index for s in stream]))
    assert union.index.tolist() == expected.tolist()
    labels = torch.stack([union[i]["label"] for i in range(len(union))])
    full = torch.stack([union.masks[j] for j in union.index])
    assert torch.equal(labels, full)  # nothing relabelled as background: all 10 classes seen
    step0 = stream[0].train  # a step-0 image holding a step-1 class keeps it in the union
    j = next(j for j in step0.index if (step0.masks[j] > 6).any())
    assert (union[int(np.flatnonzero(union.index == j)[0])]["label"] > 6).any()


def test_sigmoid_distillation_is_zero_only_for_saturated_agreement():
    old = torch.tensor([[[[20.0]], [[-20.0]]]])  # (1, 2, 1, 1): sure of class 1, not class 2
    assert distillation(old, old, "class_incremental_segmentation").item() < 1e-6
    moved = torch.tensor([[[[-20.0]], [[20.0]]]])
    assert distillation(moved, old, "class_incremental_segmentation").item() == pytest.approx(
        40.0, rel=1e-3)


def test_per_task_module_strategies_refuse_ciss(tmp_path):
    with pytest.raises(ConfigError, match="keeps one module per task and needs the task id"):
        run(tiny_cfg("lora"), tmp_path / "lora")
    assert not any((tmp_path / "lora").rglob("*"))  # refused before the run dir is claimed
