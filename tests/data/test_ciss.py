"""CISS protocols on hand-made masks: step classes, image selection per setting, label remapping,
the seg_mnist stream, the growing sigmoid head, the BCE and the mIoU scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cl_bench.data.ciss import (SegStepDataset, ciss_stream, present_classes, protocol_steps,
                                remap_labels, step_images)
from cl_bench.errors import ConfigError
from cl_bench.kinds import IGNORE_INDEX, ciss_bce
from cl_bench.metrics import iou_from_confusion, mean_iou
from cl_bench.models.heads import MASKED_LOGIT, CISSHead


def test_protocol_steps_follow_the_literature_names():
    assert protocol_steps("6-4", 10) == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10]]
    assert protocol_steps("6-2", 10) == [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10]]
    assert protocol_steps("6-1", 10) == [[1, 2, 3, 4, 5, 6], [7], [8], [9], [10]]
    assert len(protocol_steps("15-1", 20)) == 6 and len(protocol_steps("10-1", 20)) == 11
    assert protocol_steps("2-1", 3, class_order=[3, 1, 2]) == [[3, 1], [2]]
    for bad in ("6", "6-3", "10-1", "0-1", "x-y"):
        with pytest.raises(ConfigError, match="tasks.protocol"):
            protocol_steps(bad, 10)
    with pytest.raises(ConfigError, match="tasks.class_order"):
        protocol_steps("2-1", 3, class_order=[1, 1, 2])


def _masks(*class_sets):
    """One 4x4 mask per set: each class fills one pixel, 255 in the last pixel."""
    out = torch.zeros(len(class_sets), 1, 4, 4, dtype=torch.long)
    for i, cls in enumerate(class_sets):
        for k, c in enumerate(sorted(cls)):
            out[i, 0, 0, k] = c
        out[i, 0, 3, 3] = IGNORE_INDEX
    return out


def test_step_images_overlapped_vs_disjoint():
    steps = [[1, 2], [3], [4]]
    present = present_classes(_masks({1}, {1, 3}, {3}, {3, 4}, {2, 4}, set()))
    assert present == [{1}, {1, 3}, {3}, {3, 4}, {2, 4}, set()]
    # step 0: overlapped takes every image with 1 or 2; disjoint drops those with 3 or 4
    assert step_images(present, steps, 0, "overlapped").tolist() == [0, 1, 4]
    assert step_images(present, steps, 0, "disjoint").tolist() == [0]
    # step 1 (class 3): disjoint drops image 3 (holds future class 4)
    assert step_images(present, steps, 1, "overlapped").tolist() == [1, 2, 3]
    assert step_images(present, steps, 1, "disjoint").tolist() == [1, 2]
    # last step: no future classes, both settings agree
    assert step_images(present, steps, 2, "disjoint").tolist() == [3, 4]
    with pytest.raises(ConfigError, match="tasks.setting"):
        step_images(present, steps, 0, "both")


def test_remap_keeps_current_classes_and_ignore_only():
    mask = torch.tensor([[0, 1, 2, 3], [4, 255, 2, 1]])
    assert remap_labels(mask, [2, 3]).tolist() == [[0, 0, 2, 3], [0, 255, 2, 0]]
    ds = SegStepDataset(torch.zeros(1, 1, 2, 4), mask[None, None], keep=[1])
    assert ds[0]["label"].tolist() == [[[0, 1, 0, 0], [0, 255, 0, 1]]]
    assert ds.with_classes(None)[0]["label"].tolist() == [mask.tolist()]


def test_ciss_stream_labels_per_step_and_shared_full_test_set():
    masks = _masks({1}, {1, 2}, {2, 3}, {3})
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 4, 4)
    tasks = ciss_stream(images, masks, images, masks, 3, "1-1", "overlapped", "toy")
    assert [t.name for t in tasks] == ["toy_s0", "toy_s1", "toy_s2"]
    assert [t.classes for t in tasks] == [[1], [2], [3]]
    assert all(t.stream_classes == [1, 2, 3] and t.num_classes == 4 for t in tasks)
    s1 = tasks[1].train  # images 1 and 2 hold class 2
    assert [float(s1[i]["image"][0, 0, 0]) for i in range(len(s1))] == [1.0, 2.0]
    assert s1[0]["label"][0, 0].tolist() == [0, 2, 0, 0]  # old class 1 -> background
    assert s1[1]["label"][0, 0].tolist() == [2, 0, 0, 0]  # future class 3 -> background
    assert s1[1]["label"][0, 3, 3] == IGNORE_INDEX
    assert tasks[0].test is tasks[2].test and tasks[0].test[2]["label"][0, 0].tolist()[:2] == [2, 3]
    disjoint = ciss_stream(images, masks, images, masks, 3, "1-1", "disjoint", "toy")
    assert len(disjoint[0].train) == 1 and len(disjoint[1].train) == 1  # image 2 holds class 3


def test_seg_mnist_stream_is_deterministic_and_labels_digits():
    from cl_bench.data.seg_mnist import make_seg_mnist

    kw = dict(protocol="6-2", setting="disjoint", n_train=60, n_test=20, size=32, scale_min=10,
              scale_max=16, seed=3)
    a, b = make_seg_mnist(**kw), make_seg_mnist(**kw)
    assert [t.classes for t in a] == [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10]]
    assert torch.equal(a[1].train[0]["label"], b[1].train[0]["label"])
    for t in a:
        seen = set(c for s in a[:a.index(t) + 1] for c in s.classes)
        for i in range(len(t.train)):
            labels = set(t.train[i]["label"].unique().tolist()) - {0}
            assert labels and labels <= set(t.classes)  # only the step's own classes
            full = set(t.train.masks[t.train.index[i]].unique().tolist()) - {0}
            assert full <= seen  # disjoint: no future class in the image
    test_labels = torch.stack([a[0].test[i]["label"] for i in range(20)])
    assert set(test_labels.unique().tolist()) - {0} <= set(range(1, 11))
    with pytest.raises(ConfigError, match="tasks.scale_min"):
        make_seg_mnist(size=32, scale_min=20, scale_max=40)


def test_ciss_head_masks_inactive_steps_and_predicts_with_starts_rule():
    head = CISSHead(2, [[1, 2], [3]], spatial_dims=2)
    with torch.no_grad():
        for conv in head.cls:
            conv.weight.zero_()
            conv.bias.zero_()
        head.cls[0].weight[0, 0] = 1.0  # class 1 reads channel 0
        head.cls[0].weight[1, 1] = 1.0  # class 2 reads channel 1
        head.cls[1].weight[0, 0] = 2.0  # class 3 reads channel 0, twice as strongly
    feats = torch.tensor([[[[3.0, 0.0, -5.0]], [[0.0, 1.0, -5.0]]]])  # (1, 2, 1, 3)
    out = head(lambda f: f, feats, [], None, task_index=0)
    assert out.shape == (1, 3, 1, 3) and (out[:, 2] == MASKED_LOGIT).all()
    # pixel 0: class 1 (sigmoid 3 > 0.5); pixel 1: class 2; pixel 2: nothing > 0.5 -> background
    assert head.predict(out).tolist() == [[[1, 2, 0]]]
    head.begin_task(1)
    out = head(lambda f: f, feats, [], None, task_index=0)
    assert head.predict(out).tolist() == [[[3, 2, 0]]]  # class 3 now active and stronger
    assert head.active_classes(0) == [1, 2, 3]


def test_ciss_bce_sums_classes_and_ignores_255():
    logits = torch.zeros(1, 2, 1, 3)
    label = torch.tensor([[[[1, 2, 255]]]])
    # two valid pixels, each: BCE(0, target) = log 2 for both channels -> 2 log 2 per pixel
    assert ciss_bce(logits, label, [1, 2]).item() == pytest.approx(2 * np.log(2))
    masked = torch.full((1, 2, 1, 3), MASKED_LOGIT)
    masked[:, 0] = 0.0
    # the masked channel (target 0 on the valid pixels) adds nothing
    assert ciss_bce(masked, torch.tensor([[[[1, 0, 255]]]]), [1, 2]).item() == pytest.approx(
        np.log(2))
    assert ciss_bce(logits, label, [1, 2], pos_weight=4.0).item() == pytest.approx(
        (4 * np.log(2) + np.log(2) + np.log(2) + 4 * np.log(2)) / 2)


def test_iou_from_confusion_and_mean_iou():
    cm = np.array([[5, 1, 0], [1, 3, 0], [0, 0, 0]])
    iou = iou_from_confusion(cm)
    assert iou[0] == pytest.approx(5 / 7) and iou[1] == pytest.approx(3 / 5) and np.isnan(iou[2])
    assert mean_iou(iou, [0, 1, 2]) == pytest.approx((5 / 7 + 3 / 5) / 2)
    assert np.isnan(mean_iou(iou, [2])) and np.isnan(mean_iou(iou, []))
    with pytest.raises(ValueError, match="square"):
        iou_from_confusion(np.zeros((2, 3)))


def test_a_stream_cut_by_max_tasks_keeps_only_its_steps_classes():
    """``+tasks.max_tasks=2`` on seg_mnist 6-1: the heads and the loss both cover classes 1..7
    (the labels once spanned all 10 classes of the whole stream: a shape error at the loss)."""
    from hydra import compose, initialize_config_dir

    from cl_bench.config import build_stream
    from cl_bench.models.losses import TaskLoss
    from tests.conftest import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["tasks=seg_mnist", "tasks.n_train=16", "tasks.n_test=4",
                                           "tasks.size=32", "tasks.scale_min=10",
                                           "tasks.scale_max=14", "+tasks.max_tasks=2"])
    stream = build_stream(cfg)
    assert len(stream) == 2
    assert [t.stream_classes for t in stream] == [list(range(1, 8))] * 2
    loss = TaskLoss(stream[1])
    label = torch.randint(0, 8, (2, 1, 32, 32))
    assert torch.isfinite(loss(torch.randn(2, 7, 32, 32), label))  # 7 channels: classes 1..7
