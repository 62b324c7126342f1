"""The task loss's class weights and the learning-rate warm-up (train.class_weights,
train.warmup_steps): applied by the runner to every strategy alike."""

from __future__ import annotations

import pytest
import torch

from cl_bench.data.base import ArrayDataset, Task
from cl_bench.training import LitTask
from cl_bench.kinds import median_frequency_weights
from cl_bench.models.losses import TaskLoss
from cl_bench.strategies.seq_ft import SeqFT


def _seg_task() -> Task:
    labels = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    labels[0, 0, :2, :2, :2] = 1          # 8 voxels of class 1
    labels[1, 0, 0, 0, :2] = 2            # 2 voxels of class 2
    labels[1, 0, 3, 3, 3] = 3             # 1 voxel of class 3
    images = torch.randn(2, 1, 4, 4, 4)
    return Task("seg", "segmentation", ArrayDataset(images, labels),
                ArrayDataset(images, labels), num_classes=4)


def test_median_frequency_weights():
    task = _seg_task()
    counts = torch.tensor([128 - 11, 8, 2, 1], dtype=torch.float64)
    freq = counts / 128
    want = (freq.median() / freq).float()  # median of 4 values: torch takes the lower one
    torch.testing.assert_close(median_frequency_weights(task), want)
    assert median_frequency_weights(task)[3] > median_frequency_weights(task)[1] > 0
    loss = TaskLoss(task, "median_frequency")
    torch.testing.assert_close(loss.dice_ce.cross_entropy.weight, want)
    assert TaskLoss(task).dice_ce.cross_entropy.weight is None  # the default: unweighted


def test_an_absent_class_gets_weight_one():
    task = _seg_task()
    task.num_classes = 5
    assert median_frequency_weights(task)[4] == 1.0


@pytest.mark.parametrize("warmup", [0, 4])
def test_warmup_scales_every_group_linearly(warmup):
    model = torch.nn.Module()
    model.heads = torch.nn.ModuleDict({"seg": torch.nn.Linear(2, 2)})
    model.backbone = torch.nn.Linear(2, 2)
    strategy = SeqFT(lr=1e-3, head_lr=3e-3)
    strategy.model = model
    lit = LitTask(model, strategy, _seg_task(), 0, warmup_steps=warmup)
    conf = lit.configure_optimizers()
    if not warmup:
        assert isinstance(conf, torch.optim.AdamW)
        return
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    # step s runs at min(1, (s + 1) / warmup) of each group's rate: head 3e-3, backbone 1e-3
    for s, lrs in enumerate(seen):
        f = min(1.0, (s + 1) / warmup)
        assert lrs == pytest.approx([3e-3 * f, 1e-3 * f])
